//! The coordinator's persistent state, in one SQLite file: jobs, attempts,
//! events and each job's latest metrics.
//!
//! Every change is one transaction, so killing the coordinator at any moment
//! leaves either the old or the new state. The schema is versioned with SQLite's
//! `user_version` and migrated forward on open. WAL mode and a busy timeout let
//! the API's request handlers write concurrently.

use crate::error::CoordinatorError;
use crate::lifecycle::{is_current, next, AttemptCause, Event, JobStatus};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub type JobId = i64;

/// Schema migrations, applied in order; entry N brings the schema to version N+1.
/// Never edit an entry that has shipped: add a new one.
const MIGRATIONS: &[&str] = &[
    // 1: jobs, attempts, events.
    "CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        spec TEXT NOT NULL,
        status TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        max_restarts INTEGER NOT NULL,
        restarts INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        submitted_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        idempotency_key TEXT UNIQUE
     );
     CREATE INDEX jobs_by_status ON jobs(status, priority DESC, id);
     CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        at_ms INTEGER NOT NULL,
        status TEXT NOT NULL,
        event TEXT NOT NULL
     );
     CREATE INDEX events_by_job ON events(job_id, id);",
    // 2: the latest metrics a job reported.
    "CREATE TABLE metrics (
        job_id INTEGER PRIMARY KEY REFERENCES jobs(id),
        at_ms INTEGER NOT NULL,
        step INTEGER NOT NULL,
        json TEXT NOT NULL
     );",
    // 3: what a job needs and how its workers authenticate; one row per attempt
    // with the launcher's handle (local supervisor pid or SLURM job id), so a
    // restarted coordinator can find its attempts again.
    "ALTER TABLE jobs ADD COLUMN worker_token TEXT NOT NULL DEFAULT '';
     ALTER TABLE jobs ADD COLUMN backend TEXT NOT NULL DEFAULT 'local';
     ALTER TABLE jobs ADD COLUMN ranks INTEGER NOT NULL DEFAULT 1;
     ALTER TABLE jobs ADD COLUMN gpus INTEGER NOT NULL DEFAULT 0;
     CREATE TABLE attempts (
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        attempt INTEGER NOT NULL,
        handle TEXT,
        log_path TEXT NOT NULL DEFAULT '',
        started_ms INTEGER NOT NULL,
        ended_ms INTEGER,
        cause TEXT,
        PRIMARY KEY (job_id, attempt)
     );",
];

/// A job to submit.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub name: String,
    /// The job spec, as submitted (TOML).
    pub spec: String,
    pub priority: i64,
    pub max_restarts: u32,
    /// A client-chosen key: resubmitting with the same key returns the same job
    /// instead of a duplicate (retries after a timeout are safe).
    pub idempotency_key: Option<String>,
    /// `local` or `slurm`.
    pub backend: String,
    /// Ranks and GPUs the job occupies (what the local scheduler counts).
    pub ranks: u32,
    pub gpus: u32,
    /// The secret its workers report with (only about this job).
    pub worker_token: String,
}

/// A stored job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: JobId,
    pub name: String,
    pub spec: String,
    pub status: JobStatus,
    pub priority: i64,
    pub max_restarts: u32,
    pub restarts: u32,
    pub attempts: u32,
    pub submitted_ms: i64,
    pub updated_ms: i64,
    pub backend: String,
    pub ranks: u32,
    pub gpus: u32,
}

/// One attempt of a job.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AttemptRecord {
    pub attempt: u32,
    /// Local: the supervisor's pid; SLURM: the job id. `None` until launched.
    pub handle: Option<String>,
    pub log_path: String,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    /// Why it ended (JSON of the cause), once it has.
    pub cause: Option<serde_json::Value>,
}

/// One recorded event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub at_ms: i64,
    /// The status the event led to.
    pub status: JobStatus,
    pub event: Event,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) the store at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Store, CoordinatorError> {
        let p = path.display().to_string();
        let db = |source| CoordinatorError::Db { path: p.clone(), source };
        let mut conn = Connection::open(path).map_err(db)?;
        conn.busy_timeout(Duration::from_secs(30)).map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(db)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(db)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(db)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(db)?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(CoordinatorError::SchemaTooNew { path: p, found: version, known });
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive).map_err(db)?;
        // Re-read inside the lock: another process may have migrated meanwhile.
        let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(db)?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql).map_err(db)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64).map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(Store { conn, path: path.to_path_buf() })
    }

    /// Maps a SQLite error to one that names the store file (owns its own copy of
    /// the path, so it can be held across a transaction).
    fn db(&self) -> impl Fn(rusqlite::Error) -> CoordinatorError {
        let path = self.path.display().to_string();
        move |source| CoordinatorError::Db { path: path.clone(), source }
    }

    /// The schema version in the file.
    pub fn schema_version(&self) -> Result<i64, CoordinatorError> {
        self.conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(self.db())
    }

    /// Stores a new queued job, or returns the job already stored under the same
    /// idempotency key.
    pub fn submit(&mut self, job: &NewJob) -> Result<JobId, CoordinatorError> {
        self.submit_once(job).map(|(id, _)| id)
    }

    /// Like [`Store::submit`], also saying whether the job is new (false: the
    /// idempotency key named an existing one).
    pub fn submit_once(&mut self, job: &NewJob) -> Result<(JobId, bool), CoordinatorError> {
        let db = self.db();
        let now = now_ms();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(&db)?;
        if let Some(key) = &job.idempotency_key {
            let existing: Option<JobId> = tx
                .query_row("SELECT id FROM jobs WHERE idempotency_key = ?1", [key], |r| r.get(0))
                .optional()
                .map_err(&db)?;
            if let Some(id) = existing {
                return Ok((id, false));
            }
        }
        tx.execute(
            "INSERT INTO jobs (name, spec, status, priority, max_restarts, submitted_ms, updated_ms, idempotency_key,
                               backend, ranks, gpus, worker_token)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                job.name,
                job.spec,
                JobStatus::Queued.as_str(),
                job.priority,
                job.max_restarts,
                now,
                job.idempotency_key,
                job.backend,
                job.ranks,
                job.gpus,
                job.worker_token
            ],
        )
        .map_err(&db)?;
        let id = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO events (job_id, at_ms, status, event) VALUES (?1, ?2, ?3, ?4)",
            params![id, now, JobStatus::Queued.as_str(), r#"{"event":"submitted"}"#],
        )
        .map_err(&db)?;
        tx.commit().map_err(&db)?;
        Ok((id, true))
    }

    fn row(&self, r: &rusqlite::Row) -> rusqlite::Result<(JobRecord, String)> {
        let status: String = r.get(3)?;
        Ok((
            JobRecord {
                id: r.get(0)?,
                name: r.get(1)?,
                spec: r.get(2)?,
                status: JobStatus::Queued,
                priority: r.get(4)?,
                max_restarts: r.get(5)?,
                restarts: r.get(6)?,
                attempts: r.get(7)?,
                submitted_ms: r.get(8)?,
                updated_ms: r.get(9)?,
                backend: r.get(10)?,
                ranks: r.get(11)?,
                gpus: r.get(12)?,
            },
            status,
        ))
    }

    fn finish(&self, (mut job, status): (JobRecord, String)) -> Result<JobRecord, CoordinatorError> {
        job.status = JobStatus::parse(&status).ok_or_else(|| CoordinatorError::Corrupt {
            path: self.path.display().to_string(),
            detail: format!("job {} has status '{status}'", job.id),
        })?;
        Ok(job)
    }

    const COLUMNS: &'static str =
        "id, name, spec, status, priority, max_restarts, restarts, attempts, submitted_ms, updated_ms, backend, ranks, gpus";

    pub fn get(&self, id: JobId) -> Result<JobRecord, CoordinatorError> {
        let sql = format!("SELECT {} FROM jobs WHERE id = ?1", Self::COLUMNS);
        let raw = self.conn.query_row(&sql, [id], |r| self.row(r)).optional().map_err(self.db())?;
        self.finish(raw.ok_or(CoordinatorError::NoSuchJob(id))?)
    }

    /// Jobs, optionally only those in `status`. Filtered lists come in scheduling
    /// order (higher priority first, then FIFO); the full list by id.
    pub fn list(&self, status: Option<JobStatus>) -> Result<Vec<JobRecord>, CoordinatorError> {
        let (sql, arg) = match status {
            Some(s) => (
                format!("SELECT {} FROM jobs WHERE status = ?1 ORDER BY priority DESC, id", Self::COLUMNS),
                Some(s.as_str()),
            ),
            None => (format!("SELECT {} FROM jobs ORDER BY id", Self::COLUMNS), None),
        };
        let mut stmt = self.conn.prepare(&sql).map_err(self.db())?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(arg), |r| self.row(r))
            .map_err(self.db())?;
        rows.map(|r| r.map_err(self.db()).and_then(|raw| self.finish(raw))).collect()
    }

    /// Applies an event under the lifecycle rules, atomically: status, restart and
    /// attempt counters, and the event log change together or not at all.
    pub fn apply(&mut self, id: JobId, event: &Event) -> Result<JobStatus, CoordinatorError> {
        self.apply_all(id, std::slice::from_ref(event), None)
    }

    /// Applies several events in one transaction, all or none, optionally
    /// recording the handle and log of the attempt the last one launches. A
    /// SLURM requeue is (attempt ended, next attempt launched on the same SLURM
    /// job): a crash between the two must not leave a queued job that a second
    /// sbatch would duplicate.
    pub fn apply_all(&mut self, id: JobId, events: &[Event], handle: Option<(&str, &str)>) -> Result<JobStatus, CoordinatorError> {
        let db = self.db();
        let path = self.path.display().to_string();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(&db)?;
        let mut last = None;
        for event in events {
            last = Some(apply_in(&tx, &path, id, event).map_err(|e| match e {
                ApplyError::Db(source) => CoordinatorError::Db { path: path.clone(), source },
                ApplyError::Other(e) => e,
            })?);
        }
        if let (Some((handle, log)), Some(Event::Launch { attempt })) = (handle, events.last()) {
            tx.execute(
                "UPDATE attempts SET handle = ?3, log_path = ?4 WHERE job_id = ?1 AND attempt = ?2",
                params![id, attempt, handle, log],
            )
            .map_err(&db)?;
        }
        tx.commit().map_err(&db)?;
        last.ok_or_else(|| CoordinatorError::Corrupt { path, detail: "no event to apply".into() })
    }

    /// Records where an attempt runs, once the launcher has started it.
    pub fn set_attempt_handle(&mut self, id: JobId, attempt: u32, handle: &str, log_path: &str) -> Result<(), CoordinatorError> {
        self.conn
            .execute(
                "UPDATE attempts SET handle = ?3, log_path = ?4 WHERE job_id = ?1 AND attempt = ?2",
                params![id, attempt, handle, log_path],
            )
            .map_err(self.db())?;
        Ok(())
    }

    /// A job's attempts, oldest first.
    pub fn attempts(&self, id: JobId) -> Result<Vec<AttemptRecord>, CoordinatorError> {
        let mut stmt = self
            .conn
            .prepare("SELECT attempt, handle, log_path, started_ms, ended_ms, cause FROM attempts WHERE job_id = ?1 ORDER BY attempt")
            .map_err(self.db())?;
        let rows = stmt
            .query_map([id], |r| {
                let cause: Option<String> = r.get(5)?;
                Ok(AttemptRecord {
                    attempt: r.get(0)?,
                    handle: r.get(1)?,
                    log_path: r.get(2)?,
                    started_ms: r.get(3)?,
                    ended_ms: r.get(4)?,
                    cause: cause.and_then(|c| serde_json::from_str(&c).ok()),
                })
            })
            .map_err(self.db())?;
        rows.map(|r| r.map_err(self.db())).collect()
    }

    /// The secret a job's workers report with.
    pub fn worker_token(&self, id: JobId) -> Result<String, CoordinatorError> {
        self.conn
            .query_row("SELECT worker_token FROM jobs WHERE id = ?1", [id], |r| r.get(0))
            .optional()
            .map_err(self.db())?
            .ok_or(CoordinatorError::NoSuchJob(id))
    }

    /// Restarts spent over all jobs.
    pub fn total_restarts(&self) -> Result<u64, CoordinatorError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COALESCE(SUM(restarts), 0) FROM jobs", [], |r| r.get(0))
            .map_err(self.db())?;
        Ok(n as u64)
    }

    /// Jobs per status (for the metrics endpoint).
    pub fn count_by_status(&self) -> Result<Vec<(JobStatus, u64)>, CoordinatorError> {
        let mut out = Vec::new();
        for s in JobStatus::ALL {
            let n: i64 = self
                .conn
                .query_row("SELECT COUNT(*) FROM jobs WHERE status = ?1", [s.as_str()], |r| r.get(0))
                .map_err(self.db())?;
            out.push((s, n as u64));
        }
        Ok(out)
    }

    /// A job's events, oldest first (the submission is not an [`Event`] and is left out).
    pub fn events(&self, id: JobId) -> Result<Vec<EventRecord>, CoordinatorError> {
        let mut stmt = self
            .conn
            .prepare("SELECT at_ms, status, event FROM events WHERE job_id = ?1 ORDER BY id")
            .map_err(self.db())?;
        let rows = stmt
            .query_map([id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))
            .map_err(self.db())?;
        let mut out = Vec::new();
        for row in rows {
            let (at_ms, status, json) = row.map_err(self.db())?;
            let Ok(event) = serde_json::from_str::<Event>(&json) else { continue };
            let status = JobStatus::parse(&status).ok_or_else(|| CoordinatorError::Corrupt {
                path: self.path.display().to_string(),
                detail: format!("event of job {id} has status '{status}'"),
            })?;
            out.push(EventRecord { at_ms, status, event });
        }
        Ok(out)
    }

    /// Records a job's latest metrics (one row per job, replaced).
    pub fn put_metrics(&mut self, id: JobId, step: u64, json: &str) -> Result<(), CoordinatorError> {
        self.conn
            .execute(
                "INSERT INTO metrics (job_id, at_ms, step, json) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(job_id) DO UPDATE SET at_ms = excluded.at_ms, step = excluded.step, json = excluded.json",
                params![id, now_ms(), step as i64, json],
            )
            .map_err(self.db())?;
        Ok(())
    }

    /// A job's latest metrics: (step, JSON), if any were reported.
    pub fn metrics(&self, id: JobId) -> Result<Option<(u64, String)>, CoordinatorError> {
        self.conn
            .query_row("SELECT step, json FROM metrics WHERE job_id = ?1", [id], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
            })
            .optional()
            .map_err(self.db())
    }
}

enum ApplyError {
    Db(rusqlite::Error),
    Other(CoordinatorError),
}

impl From<rusqlite::Error> for ApplyError {
    fn from(e: rusqlite::Error) -> Self {
        ApplyError::Db(e)
    }
}

/// One event under the lifecycle rules, inside the caller's transaction: status,
/// restart and attempt counters, the attempt row and the event log.
fn apply_in(tx: &rusqlite::Transaction, path: &str, id: JobId, event: &Event) -> Result<JobStatus, ApplyError> {
    let (status, restarts, max_restarts, attempts): (String, u32, u32, u32) = tx
        .query_row("SELECT status, restarts, max_restarts, attempts FROM jobs WHERE id = ?1", [id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?
        .ok_or(ApplyError::Other(CoordinatorError::NoSuchJob(id)))?;
    let status = JobStatus::parse(&status).ok_or_else(|| {
        ApplyError::Other(CoordinatorError::Corrupt { path: path.to_string(), detail: format!("job {id} has status '{status}'") })
    })?;
    let t = Some(())
        .filter(|_| is_current(event, attempts))
        .and_then(|_| next(status, event, restarts, max_restarts))
        .ok_or_else(|| ApplyError::Other(CoordinatorError::InvalidTransition { job: id, status, event: event.clone() }))?;
    let attempts = match event {
        Event::Launch { attempt } => (*attempt).max(attempts),
        _ => attempts,
    };
    let now = now_ms();
    tx.execute(
        "UPDATE jobs SET status = ?2, restarts = restarts + ?3, attempts = ?4, updated_ms = ?5 WHERE id = ?1",
        params![id, t.status.as_str(), t.restart_spent as u32, attempts, now],
    )?;
    let ended = |cause: &AttemptCause| serde_json::to_string(cause).unwrap_or_default();
    match event {
        Event::Launch { attempt } => {
            tx.execute("INSERT OR REPLACE INTO attempts (job_id, attempt, started_ms) VALUES (?1, ?2, ?3)", params![id, attempt, now])?;
        }
        Event::AttemptEnded { attempt, cause } => {
            tx.execute(
                "UPDATE attempts SET ended_ms = ?3, cause = ?4 WHERE job_id = ?1 AND attempt = ?2",
                params![id, attempt, now, ended(cause)],
            )?;
        }
        Event::Cancel => {
            tx.execute(
                "UPDATE attempts SET ended_ms = ?2, cause = ?3 WHERE job_id = ?1 AND ended_ms IS NULL",
                params![id, now, ended(&AttemptCause::Cancelled)],
            )?;
        }
        _ => {}
    }
    let json = serde_json::to_string(event).unwrap_or_default();
    tx.execute(
        "INSERT INTO events (job_id, at_ms, status, event) VALUES (?1, ?2, ?3, ?4)",
        params![id, now, t.status.as_str(), json],
    )?;
    Ok(t.status)
}
