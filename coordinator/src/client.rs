//! A typed client of the coordinator's API, for the `kiln` CLI and the tests.
//! Blocking: the CLI does one thing at a time.

use crate::api::{EventView, JobView};
use crate::lifecycle::JobStatus;
use serde::Deserialize;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    /// The coordinator answered with an error.
    #[error("{message} (HTTP {status})")]
    Api { status: u16, message: String },
    #[error("cannot reach the coordinator at {url}: {source} (is `kiln coordinator` running? set KILN_COORDINATOR or --coordinator)")]
    Unreachable { url: String, #[source] source: reqwest::Error },
    #[error("unexpected answer from {url}: {detail}")]
    Protocol { url: String, detail: String },
}

pub struct Client {
    base: String,
    token: String,
    http: reqwest::blocking::Client,
}

/// A chunk of an attempt's log.
#[derive(Debug, Clone)]
pub struct LogChunk {
    pub attempt: u32,
    pub attempts: u32,
    pub bytes: Vec<u8>,
    pub next_offset: u64,
    pub job_status: Option<JobStatus>,
}

impl Client {
    pub fn new(base: &str, token: &str) -> Result<Client, ClientError> {
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|source| ClientError::Unreachable { url: base.to_string(), source })?;
        Ok(Client { base: base.trim_end_matches('/').to_string(), token: token.to_string(), http })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn send(&self, req: reqwest::blocking::RequestBuilder, url: &str) -> Result<reqwest::blocking::Response, ClientError> {
        let resp = req.bearer_auth(&self.token).send().map_err(|source| ClientError::Unreachable { url: url.to_string(), source })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or(text);
        Err(ClientError::Api { status: status.as_u16(), message })
    }

    fn json<T: for<'de> Deserialize<'de>>(&self, resp: reqwest::blocking::Response, url: &str) -> Result<T, ClientError> {
        let text = resp.text().map_err(|source| ClientError::Unreachable { url: url.to_string(), source })?;
        serde_json::from_str(&text).map_err(|e| ClientError::Protocol { url: url.to_string(), detail: format!("{e}: {text}") })
    }

    /// Submits a spec. Returns the job and whether it is new (false: the
    /// idempotency key named an existing one).
    pub fn submit(&self, spec: &str, priority: Option<i64>, max_restarts: Option<u32>, key: Option<&str>) -> Result<(JobView, bool), ClientError> {
        let url = self.url("/v1/jobs");
        let body = serde_json::json!({ "spec": spec, "priority": priority, "max_restarts": max_restarts, "idempotency_key": key });
        let resp = self.send(self.http.post(&url).header("content-type", "application/json").body(body.to_string()), &url)?;
        let created = resp.status().as_u16() == 201;
        Ok((self.json(resp, &url)?, created))
    }

    pub fn jobs(&self, state: Option<JobStatus>) -> Result<Vec<JobView>, ClientError> {
        let url = match state {
            Some(s) => self.url(&format!("/v1/jobs?state={s}")),
            None => self.url("/v1/jobs"),
        };
        #[derive(Deserialize)]
        struct Jobs {
            jobs: Vec<JobView>,
        }
        let resp = self.send(self.http.get(&url), &url)?;
        Ok(self.json::<Jobs>(resp, &url)?.jobs)
    }

    pub fn job(&self, id: i64) -> Result<JobView, ClientError> {
        let url = self.url(&format!("/v1/jobs/{id}"));
        let resp = self.send(self.http.get(&url), &url)?;
        self.json(resp, &url)
    }

    pub fn cancel(&self, id: i64) -> Result<JobView, ClientError> {
        let url = self.url(&format!("/v1/jobs/{id}/cancel"));
        let resp = self.send(self.http.post(&url), &url)?;
        self.json(resp, &url)
    }

    pub fn events(&self, id: i64) -> Result<Vec<EventView>, ClientError> {
        let url = self.url(&format!("/v1/jobs/{id}/events"));
        #[derive(Deserialize)]
        struct Events {
            events: Vec<EventView>,
        }
        let resp = self.send(self.http.get(&url), &url)?;
        Ok(self.json::<Events>(resp, &url)?.events)
    }

    /// The latest metrics rank 0 reported: (step, metrics), if any.
    pub fn metrics(&self, id: i64) -> Result<Option<(u64, serde_json::Value)>, ClientError> {
        let url = self.url(&format!("/v1/jobs/{id}/metrics"));
        let resp = self.send(self.http.get(&url), &url)?;
        let v: serde_json::Value = self.json(resp, &url)?;
        Ok(v.get("step").and_then(|s| s.as_u64()).map(|s| (s, v["metrics"].clone())))
    }

    /// Log bytes of `attempt` (default: the newest) from `offset`.
    pub fn logs(&self, id: i64, attempt: Option<u32>, offset: u64) -> Result<LogChunk, ClientError> {
        let mut url = self.url(&format!("/v1/jobs/{id}/logs?offset={offset}"));
        if let Some(a) = attempt {
            url.push_str(&format!("&attempt={a}"));
        }
        let resp = self.send(self.http.get(&url), &url)?;
        let h = resp.headers().clone();
        let num = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        let chunk = LogChunk {
            attempt: num("kiln-attempt").unwrap_or(0) as u32,
            attempts: num("kiln-attempts").unwrap_or(0) as u32,
            next_offset: num("kiln-next-offset").unwrap_or(offset),
            job_status: h.get("kiln-job-status").and_then(|v| v.to_str().ok()).and_then(JobStatus::parse),
            bytes: Vec::new(),
        };
        let bytes = resp.bytes().map_err(|source| ClientError::Unreachable { url: url.clone(), source })?;
        Ok(LogChunk { bytes: bytes.to_vec(), ..chunk })
    }

    /// Raw GET of a path (for `/metrics` and `/healthz`).
    pub fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let url = self.url(path);
        let resp = self.send(self.http.get(&url), &url)?;
        resp.text().map_err(|source| ClientError::Unreachable { url, source })
    }

    /// Polls until the job reaches a terminal state or `timeout` passes.
    pub fn wait(&self, id: i64, timeout: Duration) -> Result<JobView, ClientError> {
        let t0 = std::time::Instant::now();
        loop {
            let j = self.job(id)?;
            if j.status.is_terminal() || t0.elapsed() > timeout {
                return Ok(j);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}
