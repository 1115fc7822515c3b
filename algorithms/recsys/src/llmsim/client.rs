//! A client of an OpenAI-compatible chat-completions endpoint — the
//! interface vLLM, llama.cpp's server, Ollama and `kiln serve` expose:
//! `GET /v1/models`, `POST /v1/chat/completions`. One call is one attempt;
//! retries and caching are the pipeline's ([`crate::llmsim::pipeline`]).

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[endpoint]` settings.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// The server's base URL, e.g. `http://127.0.0.1:8000` (with or without `/v1`).
    pub url: String,
    /// The model name sent with each request.
    pub model: String,
    /// Name of an environment variable holding a bearer token, if the
    /// server wants one (the token itself never goes in a config file).
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub temperature: f64,
    #[serde(default = "max_tokens")]
    pub max_tokens: usize,
    /// Seconds one request may take, connection included.
    #[serde(default = "timeout")]
    pub timeout_s: f64,
}

fn max_tokens() -> usize {
    256
}

fn timeout() -> f64 {
    60.0
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url}: timed out after {seconds} s")]
    Timeout { url: String, seconds: f64 },
    #[error("{url}: HTTP {status}: {body}")]
    Status { url: String, status: u16, body: String },
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    #[error("{url}: the response is not a chat completion: {message}")]
    Malformed { url: String, message: String },
    #[error("{0}")]
    Config(String),
}

impl ClientError {
    /// Whether another attempt may go differently (timeouts, transport
    /// errors, 429 and 5xx, malformed bodies); a 4xx will not.
    pub fn retryable(&self) -> bool {
        match self {
            ClientError::Status { status, .. } => *status == 429 || *status >= 500,
            ClientError::Config(_) => false,
            _ => true,
        }
    }
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'a str,
    content: &'a str,
}

#[derive(Deserialize)]
struct Completion {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: Reply,
}

#[derive(Deserialize)]
struct Reply {
    content: Option<String>,
}

pub struct ChatClient {
    http: reqwest::blocking::Client,
    base: String,
    token: Option<String>,
    cfg: Endpoint,
}

impl ChatClient {
    pub fn new(cfg: Endpoint) -> Result<ChatClient, ClientError> {
        if !(cfg.timeout_s > 0.0 && cfg.timeout_s.is_finite()) {
            return Err(ClientError::Config(format!("timeout_s = {} must be > 0", cfg.timeout_s)));
        }
        let url = cfg.url.trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ClientError::Config(format!("url '{}' must start with http:// or https://", cfg.url)));
        }
        let base = if url.ends_with("/v1") { url.to_string() } else { format!("{url}/v1") };
        let token = match &cfg.api_key_env {
            Some(var) => Some(std::env::var(var).map_err(|_| ClientError::Config(format!("api_key_env names {var}, which is not set")))?),
            None => None,
        };
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs_f64(cfg.timeout_s)).build().map_err(|e| ClientError::Config(format!("HTTP client: {e}")))?;
        Ok(ChatClient { http, base, token, cfg })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.cfg
    }

    fn send(&self, req: reqwest::blocking::RequestBuilder, url: &str) -> Result<String, ClientError> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().map_err(|e| self.transport(url, e))?;
        let status = resp.status().as_u16();
        let body = resp.text().map_err(|e| self.transport(url, e))?;
        if !(200..300).contains(&status) {
            return Err(ClientError::Status { url: url.into(), status, body: body.chars().take(300).collect() });
        }
        Ok(body)
    }

    fn transport(&self, url: &str, e: reqwest::Error) -> ClientError {
        if e.is_timeout() {
            ClientError::Timeout { url: url.into(), seconds: self.cfg.timeout_s }
        } else {
            ClientError::Transport { url: url.into(), message: e.to_string() }
        }
    }

    /// The model names the server lists.
    pub fn models(&self) -> Result<Vec<String>, ClientError> {
        let url = format!("{}/models", self.base);
        let body = self.send(self.http.get(&url), &url)?;
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| ClientError::Malformed { url: url.clone(), message: e.to_string() })?;
        let data = v.get("data").and_then(|d| d.as_array()).ok_or_else(|| ClientError::Malformed { url: url.clone(), message: "no `data` list".into() })?;
        Ok(data.iter().filter_map(|m| m.get("id").and_then(|i| i.as_str()).map(str::to_string)).collect())
    }

    /// One chat completion: the assistant's text for a system and a user
    /// message, sampled at `temperature`.
    pub fn complete(&self, system: Option<&str>, user: &str, temperature: f64) -> Result<String, ClientError> {
        let url = format!("{}/chat/completions", self.base);
        let mut messages = Vec::new();
        if let Some(s) = system {
            messages.push(Message { role: "system", content: s });
        }
        messages.push(Message { role: "user", content: user });
        let body = serde_json::json!({ "model": self.cfg.model, "messages": messages, "temperature": temperature, "max_tokens": self.cfg.max_tokens });
        let text = self.send(self.http.post(&url).header("content-type", "application/json").body(body.to_string()), &url)?;
        let c: Completion = serde_json::from_str(&text).map_err(|e| ClientError::Malformed { url: url.clone(), message: format!("{e}; body starts {:?}", text.chars().take(120).collect::<String>()) })?;
        let first = c.choices.into_iter().next().ok_or_else(|| ClientError::Malformed { url: url.clone(), message: "no choices".into() })?;
        first.message.content.ok_or_else(|| ClientError::Malformed { url, message: "the message has no content".into() })
    }
}
