//! The item-analysis pipeline: every item's reviews through the LLM (or the
//! keyword analyser when no endpoint is configured), several at a time, with
//! retries, strict parsing, and a disk cache so that a rerun makes no calls.

use super::analysis::{keyword_analysis, parse_answer, render_prompt, ItemAnalysis, DEFAULT_PROMPT};
use super::client::ChatClient;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
}

fn file_err(path: &Path, message: impl Into<String>) -> PipelineError {
    PipelineError::File { path: path.display().to_string(), message: message.into() }
}

/// An item and its reviews.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub id: String,
    pub title: String,
    pub category: Option<String>,
    pub reviews: Vec<String>,
}

/// Reads items from JSON lines, grouped by `item_id` (a string or a number)
/// in order of first appearance. A line holds an item with its `reviews`
/// (a list of strings) or one review as `text` (the Yelp review layout);
/// `title` (or `name`) and `category` (or `categories`) are optional.
pub fn read_items(path: &Path) -> Result<Vec<Item>, PipelineError> {
    let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e.to_string()))?;
    let mut items: Vec<Item> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let err = |m: String| file_err(path, format!("line {}: {m}", i + 1));
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| err(format!("not JSON: {e}")))?;
        let id = match v.get("item_id") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => return Err(err("no `item_id` (a string or a number)".into())),
        };
        let str_of = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let k = *at.entry(id.clone()).or_insert_with(|| {
            items.push(Item { id: id.clone(), title: String::new(), category: None, reviews: Vec::new() });
            items.len() - 1
        });
        let item = &mut items[k];
        if let Some(t) = str_of("title").or_else(|| str_of("name")) {
            item.title = t;
        }
        if let Some(c) = str_of("category").or_else(|| str_of("categories")) {
            item.category = Some(c);
        }
        match (v.get("reviews"), v.get("text")) {
            (Some(serde_json::Value::Array(rs)), _) => {
                for r in rs {
                    item.reviews.push(r.as_str().ok_or_else(|| err("`reviews` must hold strings".into()))?.to_string());
                }
            }
            (Some(_), _) => return Err(err("`reviews` must be a list of strings".into())),
            (None, Some(serde_json::Value::String(t))) => item.reviews.push(t.clone()),
            (None, Some(_)) => return Err(err("`text` must be a string".into())),
            (None, None) => {}
        }
    }
    if items.is_empty() {
        return Err(file_err(path, "no items"));
    }
    Ok(items)
}

/// How items are analysed.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The prompt template (`{title}`, `{reviews}`).
    #[serde(default = "prompt")]
    pub prompt: String,
    pub system: Option<String>,
    /// Reviews per item in the prompt (the first ones).
    #[serde(default = "max_reviews")]
    pub max_reviews: usize,
    #[serde(default = "max_chars")]
    pub max_chars_per_review: usize,
    /// Further attempts after a failed one (timeouts, server errors, answers
    /// that do not parse).
    #[serde(default = "retries")]
    pub retries: usize,
    /// Temperature of the further attempts (the first uses the endpoint's),
    /// so that a malformed answer is not asked for again verbatim.
    #[serde(default = "retry_temperature")]
    pub retry_temperature: f64,
    /// Requests in flight at once.
    #[serde(default = "concurrency")]
    pub concurrency: usize,
    /// Wait before retry k: backoff_ms × 2^k.
    #[serde(default = "backoff")]
    pub backoff_ms: u64,
    /// Keywords per side for the keyword analyser.
    #[serde(default = "keywords")]
    pub keywords: usize,
}

fn prompt() -> String {
    DEFAULT_PROMPT.into()
}
fn max_reviews() -> usize {
    20
}
fn max_chars() -> usize {
    500
}
fn retries() -> usize {
    2
}
fn retry_temperature() -> f64 {
    0.7
}
fn concurrency() -> usize {
    4
}
fn backoff() -> u64 {
    200
}
fn keywords() -> usize {
    8
}

impl Default for Settings {
    fn default() -> Self {
        Settings { prompt: prompt(), system: None, max_reviews: max_reviews(), max_chars_per_review: max_chars(), retries: retries(), retry_temperature: retry_temperature(), concurrency: concurrency(), backoff_ms: backoff(), keywords: keywords() }
    }
}

/// What a cache entry holds: the analysis, or why there is none.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Outcome {
    pub analysis: Option<ItemAnalysis>,
    pub error: Option<String>,
    /// Requests made for it.
    pub attempts: usize,
}

/// A folder of outcomes keyed by SHA-256 of (model, system, prompt): the
/// same question is never asked twice, and a changed prompt or model is a
/// new question.
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn open(dir: &Path) -> Result<Cache, PipelineError> {
        std::fs::create_dir_all(dir).map_err(|e| file_err(dir, format!("cannot create the cache folder: {e}")))?;
        Ok(Cache { dir: dir.to_path_buf() })
    }

    pub fn key(model: &str, system: Option<&str>, prompt: &str) -> String {
        let mut h = Sha256::new();
        for part in [model, "\0", system.unwrap_or(""), "\0", prompt] {
            h.update(part.as_bytes());
        }
        hex::encode(h.finalize())
    }

    pub fn get(&self, key: &str) -> Option<Outcome> {
        std::fs::read_to_string(self.dir.join(format!("{key}.json"))).ok().and_then(|t| serde_json::from_str(&t).ok())
    }

    /// Written to a temporary file and renamed: a crash leaves no half entry.
    pub fn put(&self, key: &str, o: &Outcome) -> Result<(), PipelineError> {
        let path = self.dir.join(format!("{key}.json"));
        let tmp = self.dir.join(format!(".{key}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, serde_json::to_string(o).unwrap_or_default()).map_err(|e| file_err(&tmp, e.to_string()))?;
        std::fs::rename(&tmp, &path).map_err(|e| file_err(&path, e.to_string()))
    }
}

/// One item's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysed {
    pub item: String,
    pub result: Result<ItemAnalysis, String>,
    /// "llm", "cache" or "keywords".
    pub source: &'static str,
}

#[derive(Debug, Default)]
pub struct Report {
    pub items: Vec<Analysed>,
    /// Requests made to the endpoint.
    pub calls: usize,
    pub cached: usize,
    pub failed: usize,
}

/// Analyses every item: through `client` when there is one (cached in
/// `cache`), else with the keyword analyser.
pub fn analyse(items: &[Item], client: Option<&ChatClient>, cache: Option<&Cache>, s: &Settings) -> Result<Report, PipelineError> {
    let Some(client) = client else {
        let items: Vec<Analysed> = items.iter().map(|it| Analysed { item: it.id.clone(), result: Ok(keyword_analysis(&it.reviews, it.category.as_deref(), s.keywords)), source: "keywords" }).collect();
        return Ok(Report { items, ..Report::default() });
    };
    let next = AtomicUsize::new(0);
    let calls = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Analysed>>> = Mutex::new(vec![None; items.len()]);
    let first_error: Mutex<Option<PipelineError>> = Mutex::new(None);
    let model = client.endpoint().model.clone();
    std::thread::scope(|scope| {
        for _ in 0..s.concurrency.max(1).min(items.len().max(1)) {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::SeqCst);
                let Some(item) = items.get(k) else { break };
                let reviews: Vec<String> = item.reviews.iter().take(s.max_reviews).cloned().collect();
                let prompt = render_prompt(&s.prompt, if item.title.is_empty() { &item.id } else { &item.title }, &reviews, s.max_chars_per_review);
                let key = Cache::key(&model, s.system.as_deref(), &prompt);
                let (outcome, source) = match cache.and_then(|c| c.get(&key)) {
                    Some(o) => (o, "cache"),
                    None => {
                        let o = ask(client, s, &prompt, &calls);
                        if let Some(c) = cache {
                            if let Err(e) = c.put(&key, &o) {
                                if let Ok(mut f) = first_error.lock() {
                                    f.get_or_insert(e);
                                }
                            }
                        }
                        (o, "llm")
                    }
                };
                let result = match (outcome.analysis, outcome.error) {
                    (Some(a), _) => Ok(a),
                    (None, e) => Err(e.unwrap_or_else(|| "no answer".into())),
                };
                if let Ok(mut r) = results.lock() {
                    r[k] = Some(Analysed { item: item.id.clone(), result, source });
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e);
    }
    let items: Vec<Analysed> = results.into_inner().unwrap_or_default().into_iter().flatten().collect();
    let cached = items.iter().filter(|a| a.source == "cache").count();
    let failed = items.iter().filter(|a| a.result.is_err()).count();
    Ok(Report { items, calls: calls.load(Ordering::SeqCst), cached, failed })
}

/// Asks until an answer parses, a non-retryable error, or the retries run out.
fn ask(client: &ChatClient, s: &Settings, prompt: &str, calls: &AtomicUsize) -> Outcome {
    let mut error = String::new();
    for attempt in 0..=s.retries {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(s.backoff_ms.saturating_mul(1 << (attempt - 1).min(16))));
        }
        calls.fetch_add(1, Ordering::SeqCst);
        let temperature = if attempt == 0 { client.endpoint().temperature } else { s.retry_temperature };
        match client.complete(s.system.as_deref(), prompt, temperature) {
            Ok(text) => match parse_answer(&text) {
                Ok(a) => return Outcome { analysis: Some(a), error: None, attempts: attempt + 1 },
                Err(e) => error = format!("attempt {}: {e}", attempt + 1),
            },
            Err(e) => {
                error = format!("attempt {}: {e}", attempt + 1);
                if !e.retryable() {
                    return Outcome { analysis: None, error: Some(error), attempts: attempt + 1 };
                }
            }
        }
    }
    Outcome { analysis: None, error: Some(error), attempts: s.retries + 1 }
}

/// Writes the analyses as JSON lines (`item_id`, `source` and the five
/// fields) and the failures beside them (`<out>.failures.jsonl`: `item_id`,
/// `error`), each through a temporary file.
pub fn write(report: &Report, out: &Path) -> Result<PathBuf, PipelineError> {
    let (mut ok, mut bad) = (String::new(), String::new());
    for a in &report.items {
        match &a.result {
            Ok(x) => {
                let mut v = serde_json::to_value(x).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("item_id".into(), a.item.clone().into());
                    o.insert("source".into(), a.source.into());
                }
                ok += &format!("{v}\n");
            }
            Err(e) => bad += &format!("{}\n", serde_json::json!({ "item_id": a.item, "error": e })),
        }
    }
    let failures = PathBuf::from(format!("{}.failures.jsonl", out.display()));
    for (path, text) in [(out.to_path_buf(), ok), (failures.clone(), bad)] {
        let tmp = PathBuf::from(format!("{}.tmp", path.display()));
        std::fs::write(&tmp, text).map_err(|e| file_err(&tmp, e.to_string()))?;
        std::fs::rename(&tmp, &path).map_err(|e| file_err(&path, e.to_string()))?;
    }
    Ok(failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_group_reviews_and_bad_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("reviews.jsonl");
        std::fs::write(&p, "{\"item_id\": 7, \"name\": \"Luigi's\", \"text\": \"Great pizza.\"}\n{\"item_id\": \"b\", \"reviews\": [\"ok\", \"bad\"], \"category\": \"bar\"}\n{\"item_id\": 7, \"text\": \"Slow.\"}\n").unwrap();
        let items = read_items(&p).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!((items[0].id.as_str(), items[0].title.as_str(), items[0].reviews.len()), ("7", "Luigi's", 2));
        assert_eq!(items[1].category.as_deref(), Some("bar"));
        std::fs::write(&p, "{\"item_id\": 1}\n{\"text\": \"x\"}\n").unwrap();
        let e = read_items(&p).unwrap_err().to_string();
        assert!(e.contains("reviews.jsonl") && e.contains("line 2") && e.contains("item_id"), "{e}");
        // Without an endpoint: the keyword analyser.
        let r = analyse(&read_items(&dir.path().join("none")).unwrap_or_else(|_| items.clone()), None, None, &Settings::default()).unwrap();
        assert!(r.items.iter().all(|a| a.source == "keywords" && a.result.is_ok()) && r.calls == 0);
        let c = Cache::open(&dir.path().join("cache")).unwrap();
        let k = Cache::key("m", None, "p");
        assert_ne!(k, Cache::key("m2", None, "p"));
        let o = Outcome { analysis: None, error: Some("x".into()), attempts: 3 };
        c.put(&k, &o).unwrap();
        assert_eq!(c.get(&k), Some(o));
    }
}
