//! `kiln serve`: a model the GHPO crate loads (a Hugging Face Qwen2 folder,
//! e.g. from `kiln export`) behind the OpenAI-compatible HTTP API that
//! vLLM, llama.cpp's server and Ollama expose — `GET /v1/models` and
//! `POST /v1/chat/completions` — so pipelines that call an LLM (the user
//! simulator's item analysis) run locally with no other server.
//!
//! tch models are not `Sync`: one thread owns the model and answers
//! requests in arrival order; the HTTP side only parses, queues and waits.

use anyhow::{anyhow, Context, Result};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Args;
use kiln_ghpo::generate::{generate, Finish, SamplingParams};
use kiln_ghpo::tokenizer::{PromptFormat, Template};
use kiln_ghpo::trainer::policy::Policy;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Args)]
pub struct ServeArgs {
    /// A Hugging Face folder: config.json, the weights and tokenizer.json.
    #[arg(long)]
    pub model: PathBuf,
    /// The model name clients ask for (default: the folder's name).
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// The most new tokens one request may ask for.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
}

/// A generation the model thread is asked for.
struct Job {
    prompt: String,
    params: SamplingParams,
    stop: Vec<String>,
    reply: tokio::sync::oneshot::Sender<Result<Generated, String>>,
}

struct Generated {
    text: String,
    prompt_tokens: usize,
    completion_tokens: usize,
    finish: &'static str,
}

struct Server {
    name: String,
    max_tokens: usize,
    jobs: Mutex<mpsc::Sender<Job>>,
}

type ApiError = (StatusCode, Json<Value>);

fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> ApiError {
    (status, Json(json!({ "error": { "message": message.into(), "type": kind } })))
}

pub fn serve(args: ServeArgs) -> Result<i32> {
    let prompt = PromptFormat { template: Template::ChatMl, system: None };
    let policy = Policy::from_dir(&args.model, tch::Kind::Float, tch::Device::cuda_if_available(), prompt).map_err(|e| anyhow!(e)).with_context(|| format!("loading the model from {}", args.model.display()))?;
    let name = args.name.clone().unwrap_or_else(|| args.model.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "model".into()));
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new().name("kiln-serve-model".into()).spawn(move || model_thread(policy, rx))?;
    let server = Arc::new(Server { name: name.clone(), max_tokens: args.max_tokens, jobs: Mutex::new(tx) });
    let app = Router::new().route("/v1/models", get(models)).route("/v1/chat/completions", post(chat)).with_state(server);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    let listener = rt.block_on(tokio::net::TcpListener::bind(args.listen)).with_context(|| format!("cannot listen on {} (in use? pick another with --listen)", args.listen))?;
    let local = listener.local_addr()?;
    // One line on stdout that scripts (and tests) wait for.
    println!("serving {name} at http://{local}/v1");
    tracing::info!(model = %args.model.display(), %name, listen = %local, "serving");
    rt.block_on(async { axum::serve(listener, app).with_graceful_shutdown(crate::stop_signal()).await })
    .context("serving")?;
    Ok(0)
}

fn model_thread(policy: Policy, rx: mpsc::Receiver<Job>) {
    for job in rx {
        let out = (|| {
            let ids = policy.encode(&job.prompt)?;
            let context = policy.model.cfg.max_position_embeddings as usize;
            if ids.len() + job.params.max_new_tokens > context {
                return Err(format!("the prompt's {} tokens plus max_tokens = {} exceed the model's context of {context}", ids.len(), job.params.max_new_tokens));
            }
            let params = SamplingParams { eos_ids: policy.eos.clone(), ..job.params };
            let c = generate(&policy.model, std::slice::from_ref(&ids), policy.pad, &params).pop().ok_or("no completion")?;
            let ends_with_eos = matches!(c.finish, Finish::Eos);
            let tokens = if ends_with_eos { &c.tokens[..c.tokens.len().saturating_sub(1)] } else { &c.tokens[..] };
            let mut text = policy.tokenizer.decode(tokens, true).map_err(|e| e.to_string())?;
            let mut finish = if matches!(c.finish, Finish::Length) { "length" } else { "stop" };
            if let Some(cut) = job.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                text.truncate(cut);
                finish = "stop";
            }
            Ok(Generated { text, prompt_tokens: ids.len(), completion_tokens: c.tokens.len(), finish })
        })();
        let _ = job.reply.send(out);
    }
}

async fn models(State(s): State<Arc<Server>>) -> Json<Value> {
    Json(json!({ "object": "list", "data": [{ "id": s.name, "object": "model", "created": 0, "owned_by": "kiln" }] }))
}

/// The ChatML prompt for a message list, ending where the assistant's turn starts.
fn chat_prompt(messages: &[Value]) -> Result<String, String> {
    if messages.is_empty() {
        return Err("`messages` is empty".into());
    }
    let mut s = String::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).ok_or(format!("messages[{i}] has no `role`"))?;
        if !matches!(role, "system" | "user" | "assistant") {
            return Err(format!("messages[{i}].role is '{role}'; expected system, user or assistant"));
        }
        let content = m.get("content").and_then(Value::as_str).ok_or(format!("messages[{i}].content must be a string"))?;
        s.push_str(&format!("<|im_start|>{role}\n{content}<|im_end|>\n"));
    }
    s.push_str("<|im_start|>assistant\n");
    Ok(s)
}

async fn chat(State(s): State<Arc<Server>>, body: axum::body::Bytes) -> Result<Json<Value>, ApiError> {
    let bad = |m: String| error(StatusCode::BAD_REQUEST, "invalid_request_error", m);
    let req: Value = serde_json::from_slice(&body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    let model = req.get("model").and_then(Value::as_str).ok_or_else(|| bad("`model` is missing".into()))?;
    if model != s.name {
        return Err(error(StatusCode::NOT_FOUND, "model_not_found", format!("no model '{model}'; this server has '{}'", s.name)));
    }
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err(bad("`stream` is not supported; ask without it".into()));
    }
    let prompt = chat_prompt(req.get("messages").and_then(Value::as_array).ok_or_else(|| bad("`messages` must be a list".into()))?).map_err(bad)?;
    let max_tokens = match req.get("max_tokens").or(req.get("max_completion_tokens")) {
        None | Some(Value::Null) => s.max_tokens.min(256),
        Some(v) => v.as_u64().filter(|&n| n >= 1 && n as usize <= s.max_tokens).ok_or_else(|| bad(format!("`max_tokens` must be an integer in 1..={}", s.max_tokens)))? as usize,
    };
    let temperature = match req.get("temperature") {
        None | Some(Value::Null) => 1.0,
        Some(v) => v.as_f64().filter(|t| (0.0..=2.0).contains(t)).ok_or_else(|| bad("`temperature` must be a number in [0, 2]".into()))?,
    };
    let top_p = match req.get("top_p") {
        None | Some(Value::Null) => 1.0,
        Some(v) => v.as_f64().filter(|p| *p > 0.0 && *p <= 1.0).ok_or_else(|| bad("`top_p` must be a number in (0, 1]".into()))?,
    };
    let seed = req.get("seed").and_then(Value::as_u64).unwrap_or(0);
    let stop: Vec<String> = match req.get("stop") {
        None | Some(Value::Null) => vec![],
        Some(Value::String(x)) => vec![x.clone()],
        Some(Value::Array(a)) => a.iter().map(|x| x.as_str().map(str::to_string)).collect::<Option<_>>().ok_or_else(|| bad("`stop` must be a string or a list of strings".into()))?,
        Some(_) => return Err(bad("`stop` must be a string or a list of strings".into())),
    };
    let (reply, wait) = tokio::sync::oneshot::channel();
    let params = SamplingParams { temperature, top_p, max_new_tokens: max_tokens, seed, ..Default::default() };
    let sent = s.jobs.lock().map_err(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the model thread is gone"))?.send(Job { prompt, params, stop, reply });
    sent.map_err(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the model thread is gone"))?;
    let g = wait.await.map_err(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the model thread dropped the request"))?.map_err(bad)?;
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    Ok(Json(json!({
        "id": format!("chatcmpl-{created}-{}", g.completion_tokens),
        "object": "chat.completion",
        "created": created,
        "model": s.name,
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": g.text }, "finish_reason": g.finish }],
        "usage": { "prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens, "total_tokens": g.prompt_tokens + g.completion_tokens },
    })))
}
