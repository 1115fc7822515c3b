//! The HTTP API, `/v1/…` (JSON), plus `/healthz` and Prometheus `/metrics`.
//!
//! Every route but `/healthz` needs `Authorization: Bearer <token>`: an operator
//! token for everything, or a job's worker token for that job's heartbeats only.
//! Errors are JSON `{"error": "…"}` with a 4xx status that says whose mistake it
//! was; nothing is stored for a refused request. The reference is in
//! docs/src/api.md.

use crate::auth;
use crate::lifecycle::{Event, JobStatus};
use crate::service::{ApiError, Coordinator, Submission};
use crate::store::{AttemptRecord, JobRecord};
use crate::watch::Heartbeat;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

/// Largest log chunk one request returns.
pub const LOG_CHUNK: usize = 1 << 20;

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobView {
    pub id: i64,
    pub name: String,
    pub status: JobStatus,
    pub priority: i64,
    pub backend: String,
    pub ranks: u32,
    pub gpus: u32,
    pub attempts: u32,
    pub restarts: u32,
    pub max_restarts: u32,
    pub submitted_ms: i64,
    pub updated_ms: i64,
    /// The newest step reported by the running attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
    /// Per-attempt detail (single-job responses only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempt_list: Vec<AttemptView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AttemptView {
    pub attempt: u32,
    pub handle: Option<String>,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    pub cause: Option<serde_json::Value>,
}

impl From<AttemptRecord> for AttemptView {
    fn from(a: AttemptRecord) -> Self {
        AttemptView { attempt: a.attempt, handle: a.handle, started_ms: a.started_ms, ended_ms: a.ended_ms, cause: a.cause }
    }
}

fn view(j: JobRecord, step: Option<u64>) -> JobView {
    JobView {
        id: j.id,
        name: j.name,
        status: j.status,
        priority: j.priority,
        backend: j.backend,
        ranks: j.ranks,
        gpus: j.gpus,
        attempts: j.attempts,
        restarts: j.restarts,
        max_restarts: j.max_restarts,
        submitted_ms: j.submitted_ms,
        updated_ms: j.updated_ms,
        step,
        attempt_list: vec![],
    }
}

/// One event as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventView {
    pub at_ms: i64,
    pub status: JobStatus,
    #[serde(flatten)]
    pub event: Event,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(serde_json::json!({ "error": self.message }))).into_response()
    }
}

type Api<T> = Result<T, ApiError>;
type Shared = State<Arc<Coordinator>>;

/// The router, with the body limit and JSON errors for unknown routes.
pub fn router(c: Arc<Coordinator>) -> Router {
    let limit = c.cfg.max_body_bytes;
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/v1/jobs", post(submit).get(list))
        .route("/v1/jobs/{id}", get(job))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route("/v1/jobs/{id}/events", get(events))
        .route("/v1/jobs/{id}/metrics", get(job_metrics))
        .route("/v1/jobs/{id}/logs", get(logs))
        .route("/v1/jobs/{id}/heartbeat", post(heartbeat))
        .fallback(|| async { ApiError::new(404, "no such route; the API lives under /v1 (see docs/src/api.md)") })
        .method_not_allowed_fallback(|| async { ApiError::new(405, "this route does not take that method (see docs/src/api.md)") })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(c)
}

fn token(headers: &HeaderMap) -> Api<&str> {
    let h = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    auth::bearer(h).ok_or_else(|| {
        ApiError::new(401, "missing bearer token: send `Authorization: Bearer <token>` (the kiln CLI reads KILN_TOKEN or --token-file)")
    })
}

fn operator(c: &Coordinator, headers: &HeaderMap) -> Api<()> {
    if auth::any_matches(&c.cfg.tokens, token(headers)?) {
        Ok(())
    } else {
        Err(ApiError::new(401, "token not accepted by this coordinator"))
    }
}

fn job_id(raw: &str) -> Api<i64> {
    raw.parse::<i64>()
        .ok()
        .filter(|&i| i > 0)
        .ok_or_else(|| ApiError::new(400, format!("'{raw}' is not a job id (a positive number, as `kiln jobs` lists)")))
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Api<T> {
    q.map(|Query(t)| t).map_err(|r| ApiError::new(400, format!("bad query string: {}", r.body_text())))
}

fn body(b: Result<Bytes, BytesRejection>, limit: usize) -> Api<Bytes> {
    b.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(413, format!("request body larger than {limit} bytes; a job spec should be a few KiB"))
        } else {
            ApiError::new(400, format!("unreadable request body: {r}"))
        }
    })
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Api<T> + Send + 'static) -> Api<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::new(500, format!("internal error: {e}")))?
}

async fn submit(State(c): Shared, headers: HeaderMap, raw: Result<Bytes, BytesRejection>) -> Api<Response> {
    operator(&c, &headers)?;
    let raw = body(raw, c.cfg.max_body_bytes)?;
    let mut sub: Submission = serde_json::from_slice(&raw)
        .map_err(|e| ApiError::new(400, format!("request body is not a submission ({{\"spec\": \"<TOML>\", …}}): {e}")))?;
    if sub.idempotency_key.is_none() {
        sub.idempotency_key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string);
    }
    let (job, created) = blocking(move || c.submit(&sub)).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(view(job, None))).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
}

async fn list(State(c): Shared, headers: HeaderMap, q: Result<Query<ListQuery>, QueryRejection>) -> Api<Json<serde_json::Value>> {
    operator(&c, &headers)?;
    let q = query(q)?;
    let status = match q.state.as_deref() {
        None | Some("") | Some("all") => None,
        Some(s) => Some(JobStatus::parse(s).ok_or_else(|| {
            let all: Vec<&str> = JobStatus::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::new(400, format!("state '{s}' is not one of {}", all.join(", ")))
        })?),
    };
    let jobs = blocking(move || {
        let jobs = c.db().list(status)?;
        Ok(jobs.into_iter().map(|j| {
            let step = c.live_step(j.id);
            view(j, step)
        }).collect::<Vec<_>>())
    })
    .await?;
    Ok(Json(serde_json::json!({ "jobs": jobs })))
}

async fn job(State(c): Shared, headers: HeaderMap, Path(id): Path<String>) -> Api<Json<JobView>> {
    operator(&c, &headers)?;
    let id = job_id(&id)?;
    blocking(move || {
        let j = c.db().get(id)?;
        let attempts = c.db().attempts(id)?;
        let mut v = view(j, c.live_step(id));
        v.attempt_list = attempts.into_iter().map(AttemptView::from).collect();
        Ok(Json(v))
    })
    .await
}

async fn cancel(State(c): Shared, headers: HeaderMap, Path(id): Path<String>) -> Api<Json<JobView>> {
    operator(&c, &headers)?;
    let id = job_id(&id)?;
    blocking(move || Ok(Json(view(c.cancel(id)?, None)))).await
}

async fn events(State(c): Shared, headers: HeaderMap, Path(id): Path<String>) -> Api<Json<serde_json::Value>> {
    operator(&c, &headers)?;
    let id = job_id(&id)?;
    blocking(move || {
        c.db().get(id)?;
        let events: Vec<EventView> =
            c.db().events(id)?.into_iter().map(|e| EventView { at_ms: e.at_ms, status: e.status, event: e.event }).collect();
        Ok(Json(serde_json::json!({ "events": events })))
    })
    .await
}

async fn job_metrics(State(c): Shared, headers: HeaderMap, Path(id): Path<String>) -> Api<Json<serde_json::Value>> {
    operator(&c, &headers)?;
    let id = job_id(&id)?;
    blocking(move || {
        c.db().get(id)?;
        let m = c.db().metrics(id)?;
        Ok(Json(match m {
            Some((step, json)) => serde_json::json!({
                "step": step,
                "metrics": serde_json::from_str::<serde_json::Value>(&json).unwrap_or(serde_json::Value::Null),
            }),
            None => serde_json::json!({ "step": null, "metrics": null }),
        }))
    })
    .await
}

#[derive(Deserialize)]
struct LogQuery {
    attempt: Option<u32>,
    #[serde(default)]
    offset: u64,
}

async fn logs(
    State(c): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<LogQuery>, QueryRejection>,
) -> Api<Response> {
    operator(&c, &headers)?;
    let q = query(q)?;
    let id = job_id(&id)?;
    let (attempt, bytes, status, attempts) = blocking(move || {
        let (attempt, bytes) = c.log(id, q.attempt, q.offset, LOG_CHUNK)?;
        let j = c.db().get(id)?;
        Ok((attempt, bytes, j.status, j.attempts))
    })
    .await?;
    let next = q.offset + bytes.len() as u64;
    let mut resp = (StatusCode::OK, bytes).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    for (k, v) in [
        ("kiln-attempt", attempt.to_string()),
        ("kiln-attempts", attempts.to_string()),
        ("kiln-next-offset", next.to_string()),
        ("kiln-job-status", status.as_str().to_string()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
    Ok(resp)
}

async fn heartbeat(State(c): Shared, headers: HeaderMap, Path(id): Path<String>, raw: Result<Bytes, BytesRejection>) -> Api<StatusCode> {
    let given = token(&headers)?.to_string();
    let id = job_id(&id)?;
    // The token first: a caller who may not report on this job learns nothing
    // about it (not even whether it exists), and its body is never parsed.
    let cc = c.clone();
    blocking(move || {
        if auth::any_matches(&cc.cfg.tokens, &given) {
            return Ok(());
        }
        match cc.db().worker_token(id) {
            Ok(own) if auth::same(&own, &given) => Ok(()),
            _ => Err(ApiError::new(403, format!("this token may not report on job {id}"))),
        }
    })
    .await?;
    let raw = body(raw, c.cfg.max_body_bytes)?;
    let hb: Heartbeat = serde_json::from_slice(&raw).map_err(|e| ApiError::new(400, format!("heartbeat body: {e}")))?;
    blocking(move || {
        c.heartbeat(id, &hb)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

async fn metrics(State(c): Shared, headers: HeaderMap) -> Api<Response> {
    operator(&c, &headers)?;
    let text = blocking(move || {
        let counts = c.db().count_by_status()?;
        let queued = c.db().list(Some(JobStatus::Queued))?;
        let restarts = c.db().total_restarts()?;
        let stats = c.stats();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let mut t = String::new();
        let _ = writeln!(t, "# HELP kiln_jobs Jobs by state.\n# TYPE kiln_jobs gauge");
        for (s, n) in counts {
            let _ = writeln!(t, "kiln_jobs{{state=\"{s}\"}} {n}");
        }
        let oldest = queued.iter().map(|j| (now - j.submitted_ms).max(0) as f64 / 1000.0).fold(0.0, f64::max);
        let _ = writeln!(t, "# HELP kiln_queue_wait_seconds Time from submission to first launch.\n# TYPE kiln_queue_wait_seconds summary");
        let _ = writeln!(t, "kiln_queue_wait_seconds_sum {}\nkiln_queue_wait_seconds_count {}", stats.queue_wait_s_sum, stats.launched);
        let _ = writeln!(t, "# HELP kiln_oldest_queued_seconds How long the oldest queued job has waited.\n# TYPE kiln_oldest_queued_seconds gauge\nkiln_oldest_queued_seconds {oldest}");
        let _ = writeln!(t, "# HELP kiln_job_restarts_total Restarts spent on failed attempts.\n# TYPE kiln_job_restarts_total counter\nkiln_job_restarts_total {restarts}");
        let _ = writeln!(t, "# HELP kiln_hangs_total Attempts killed as hung.\n# TYPE kiln_hangs_total counter\nkiln_hangs_total {}", stats.hangs);
        let _ = writeln!(t, "# HELP kiln_stragglers_total Ranks flagged as stragglers.\n# TYPE kiln_stragglers_total counter\nkiln_stragglers_total {}", stats.stragglers);
        let _ = writeln!(t, "# HELP kiln_heartbeat_age_seconds Seconds since a running job's last heartbeat.\n# TYPE kiln_heartbeat_age_seconds gauge");
        let ages: BTreeMap<i64, f64> = c.heartbeat_ages().into_iter().collect();
        for (job, age) in ages {
            let _ = writeln!(t, "kiln_heartbeat_age_seconds{{job=\"{job}\"}} {age:.3}");
        }
        Ok(t)
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}
