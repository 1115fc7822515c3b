//! The coordinator itself: accepts jobs, launches them when they fit, watches
//! their attempts and restarts failed ones, and recovers all of that from the
//! store after a crash.
//!
//! Two actors share it: the HTTP handlers ([`crate::api`]) and one supervisor
//! thread that runs [`Coordinator::tick`] on a fixed cadence. Every decision is
//! written to the store before it is acted on where possible (launch is recorded,
//! then the process started, then its handle recorded), so a crash at any point
//! leaves a state [`Coordinator::recover`] can finish.

use crate::config::Config;
use crate::launch::local::{self, AttemptFiles};
use crate::launch::{self, Polled, ReportTo};
use crate::lifecycle::{AttemptCause, Event, JobStatus};
use crate::plan::{self, Refusal, SpecCheck};
use crate::schedule::{self, Usage};
use crate::store::{AttemptRecord, JobId, JobRecord, NewJob, Store};
use crate::watch::{AttemptWatch, Heartbeat};
use crate::CoordinatorError;
use kiln_slurm::client::SlurmClient;
use kiln_worker::spec::{Backend, JobSpec};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// An error for an API caller: an HTTP status and a message that says what to do.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }
}

impl From<CoordinatorError> for ApiError {
    fn from(e: CoordinatorError) -> ApiError {
        match e {
            CoordinatorError::NoSuchJob(id) => ApiError::new(404, format!("job {id} does not exist")),
            CoordinatorError::InvalidTransition { job, status, .. } => {
                ApiError::new(409, format!("job {job} is {status}; that does not apply any more"))
            }
            other => ApiError::new(500, other.to_string()),
        }
    }
}

/// A submission.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Submission {
    /// The job spec (TOML text).
    pub spec: String,
    /// Overrides `[launch] priority`.
    #[serde(default)]
    pub priority: Option<i64>,
    /// Overrides `[launch] max_restarts`.
    #[serde(default)]
    pub max_restarts: Option<u32>,
    /// Resubmitting with the same key returns the same job.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

enum Where {
    Local { pid: i32, files: AttemptFiles, child: Option<Child> },
    Slurm { id: u64, restarts_seen: u32, last_poll: Option<Instant>, failed_polls: u32 },
}

/// Consecutive failed polls of a SLURM job after which it counts as lost (SLURM
/// forgot it: purged after MinJobAge with no accounting to ask).
const SLURM_POLL_FAILURES: u32 = 30;

/// An attempt the supervisor is watching.
struct Live {
    attempt: u32,
    place: Where,
    hang_timeout: Duration,
    /// GPUs given to a local attempt (CUDA_VISIBLE_DEVICES).
    gpus: Vec<u32>,
}

/// Counters for `/metrics` that the store does not hold.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub launched: u64,
    pub queue_wait_s_sum: f64,
    pub hangs: u64,
    pub stragglers: u64,
}

pub struct Coordinator {
    pub cfg: Config,
    db: Mutex<Store>,
    check: SpecCheck,
    slurm: Option<SlurmClient>,
    live: Mutex<HashMap<JobId, Live>>,
    watch: Mutex<HashMap<JobId, AttemptWatch>>,
    stats: Mutex<Stats>,
    /// Jobs waiting out their restart backoff.
    not_before: Mutex<HashMap<JobId, Instant>>,
    /// Held for the coordinator's life: one coordinator per state directory.
    _lock: std::fs::File,
}

/// Takes `<state>/lock` exclusively, or says which other coordinator has it. Two
/// coordinators on one state directory would each recover and relaunch the
/// other's attempts.
fn lock_state_dir(dir: &std::path::Path) -> Result<std::fs::File, String> {
    use std::os::fd::AsRawFd;
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // SAFETY: flock on a descriptor we own; the lock goes with the file.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        return Err(format!(
            "another coordinator is using {} ({}); stop it first, or give this one its own --state-dir",
            dir.display(),
            holder.trim()
        ));
    }
    use std::io::{Seek, Write};
    let mut f = &file;
    let _ = f.set_len(0).and_then(|_| f.seek(std::io::SeekFrom::Start(0))).and_then(|_| write!(f, "pid {}", std::process::id()));
    Ok(file)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves data we still want to serve.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Coordinator {
    /// Opens the state directory and store, and finds out whether SLURM is here.
    pub fn open(cfg: Config, check: SpecCheck) -> Result<Arc<Coordinator>, String> {
        std::fs::create_dir_all(cfg.state_dir.join("jobs"))
            .map_err(|e| format!("cannot create the state directory {}: {e}", cfg.state_dir.display()))?;
        let lock_file = lock_state_dir(&cfg.state_dir)?;
        let store = Store::open(&cfg.db_path()).map_err(|e| e.to_string())?;
        let client = SlurmClient { bin_dir: cfg.slurm_bin.clone() };
        let sbatch = cfg.slurm_bin.as_ref().map(|d| d.join("sbatch")).unwrap_or_else(|| PathBuf::from("sbatch"));
        let slurm = std::process::Command::new(sbatch)
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| client);
        Ok(Arc::new(Coordinator {
            cfg,
            db: Mutex::new(store),
            check,
            slurm,
            live: Mutex::new(HashMap::new()),
            watch: Mutex::new(HashMap::new()),
            stats: Mutex::new(Stats::default()),
            not_before: Mutex::new(HashMap::new()),
            _lock: lock_file,
        }))
    }

    pub fn slurm_enabled(&self) -> bool {
        self.slurm.is_some()
    }

    pub fn db(&self) -> MutexGuard<'_, Store> {
        lock(&self.db)
    }

    pub fn stats(&self) -> Stats {
        lock(&self.stats).clone()
    }

    /// Seconds since each watched job's last heartbeat.
    pub fn heartbeat_ages(&self) -> Vec<(JobId, f64)> {
        let now = Instant::now();
        lock(&self.watch).iter().filter_map(|(id, w)| w.heartbeat_age(now).map(|a| (*id, a))).collect()
    }

    /// The step a running job has reached, from its heartbeats.
    pub fn live_step(&self, id: JobId) -> Option<u64> {
        lock(&self.watch).get(&id).map(|w| w.step())
    }

    fn apply(&self, id: JobId, event: &Event) -> Option<JobStatus> {
        match self.db().apply(id, event) {
            Ok(s) => {
                tracing::info!(job = id, ?event, status = %s, "job event");
                Some(s)
            }
            Err(e) => {
                tracing::warn!(job = id, ?event, error = %e, "event not applied");
                None
            }
        }
    }

    // ---- API operations ----

    pub fn submit(&self, sub: &Submission) -> Result<(JobRecord, bool), ApiError> {
        if let Some(k) = &sub.idempotency_key {
            if k.is_empty() || k.len() > 200 {
                return Err(ApiError::new(400, "idempotency_key must have 1 to 200 characters"));
            }
        }
        let p = plan::plan(&sub.spec, &self.cfg, self.slurm_enabled(), &self.check).map_err(|r| match r {
            Refusal::Invalid(m) => ApiError::new(400, m),
            Refusal::Impossible(m) => ApiError::new(422, m),
        })?;
        let token = crate::auth::new_token().map_err(|e| ApiError::new(500, format!("cannot draw a worker token: {e}")))?;
        let job = NewJob {
            name: p.spec.name.clone(),
            spec: sub.spec.clone(),
            priority: sub.priority.unwrap_or(p.spec.launch.priority),
            max_restarts: sub.max_restarts.unwrap_or(p.spec.launch.max_restarts),
            idempotency_key: sub.idempotency_key.clone(),
            backend: match p.backend {
                Backend::Local => "local".into(),
                Backend::Slurm => "slurm".into(),
            },
            ranks: p.ranks,
            gpus: p.gpus,
            worker_token: token,
        };
        let mut db = self.db();
        let (id, created) = db.submit_once(&job)?;
        Ok((db.get(id)?, created))
    }

    /// Cancels a job and stops its attempt at once (the newest committed
    /// checkpoint stays in the store).
    pub fn cancel(&self, id: JobId) -> Result<JobRecord, ApiError> {
        let status = self.db().apply(id, &Event::Cancel)?;
        tracing::info!(job = id, status = %status, "cancelled");
        let taken = lock(&self.live).remove(&id);
        if let Some(live) = taken {
            self.stop(id, live);
        }
        lock(&self.watch).remove(&id);
        Ok(self.db().get(id)?)
    }

    /// A worker's report (the API has checked that the caller may report on `id`:
    /// an operator token, or the job's own worker token).
    pub fn heartbeat(&self, id: JobId, hb: &Heartbeat) -> Result<(), ApiError> {
        let job = self.db().get(id)?;
        if !matches!(job.status, JobStatus::Launching | JobStatus::Running) {
            return Err(ApiError::new(409, format!("job {id} is {}; heartbeat ignored", job.status)));
        }
        if hb.attempt != job.attempts {
            return Err(ApiError::new(409, format!("job {id} is on attempt {}, not {}", job.attempts, hb.attempt)));
        }
        if hb.rank >= hb.world || hb.world != job.ranks as usize {
            return Err(ApiError::new(400, format!("rank {} of {} does not match job {id} ({} ranks)", hb.rank, hb.world, job.ranks)));
        }
        {
            let mut watch = lock(&self.watch);
            let w = watch.entry(id).or_insert_with(|| AttemptWatch::new(hb.attempt));
            if w.attempt != hb.attempt {
                *w = AttemptWatch::new(hb.attempt);
            }
            w.report(hb, Instant::now());
        }
        if job.status == JobStatus::Launching {
            self.apply(id, &Event::Started { attempt: hb.attempt });
        }
        if let (0, Some(m)) = (hb.rank, &hb.metrics) {
            self.db().put_metrics(id, hb.step, &m.to_string())?;
        }
        Ok(())
    }

    /// Bytes of an attempt's log from `offset` (at most `max`): the local file
    /// while it exists, else the copy in the job's store. Returns the attempt read.
    pub fn log(&self, id: JobId, attempt: Option<u32>, offset: u64, max: usize) -> Result<(u32, Vec<u8>), ApiError> {
        let job = self.db().get(id)?;
        let attempts = self.db().attempts(id)?;
        let want = attempt.unwrap_or(job.attempts);
        if want == 0 {
            return Ok((0, vec![]));
        }
        let rec: &AttemptRecord = attempts
            .iter()
            .find(|a| a.attempt == want)
            .ok_or_else(|| ApiError::new(404, format!("job {id} has no attempt {want} (it has {})", job.attempts)))?;
        if offset > i64::MAX as u64 {
            return Err(ApiError::new(400, format!("offset {offset} is beyond any log")));
        }
        if let Ok(mut f) = std::fs::File::open(&rec.log_path) {
            // Read only the requested window: logs of long runs are large, and
            // `kiln logs -f` asks for the tail over and over.
            use std::io::{Read, Seek, SeekFrom};
            let mut out = Vec::new();
            f.seek(SeekFrom::Start(offset))
                .and_then(|_| f.take(max as u64).read_to_end(&mut out))
                .map_err(|e| ApiError::new(500, format!("reading {}: {e}", rec.log_path)))?;
            return Ok((want, out));
        }
        let bytes = self.stored_log(&job, want).unwrap_or_default();
        let start = (offset as usize).min(bytes.len());
        let end = (start + max).min(bytes.len());
        Ok((want, bytes[start..end].to_vec()))
    }

    fn job_store(&self, job: &JobRecord) -> Option<kiln_cluster::checkpoint::CheckpointStore> {
        let spec = JobSpec::parse(&job.spec, "job.toml").ok()?;
        kiln_cluster::checkpoint::CheckpointStore::open(&plan::job_store(&spec, &self.cfg, job.id), &job.name).ok()
    }

    fn stored_log(&self, job: &JobRecord, attempt: u32) -> Option<Vec<u8>> {
        self.job_store(job)?.get_object(&format!("logs/attempt-{attempt}.log")).ok().map(|b| b.to_vec())
    }

    fn upload_log(&self, id: JobId, attempt: u32) {
        let Ok(job) = self.db().get(id) else { return };
        let Some(path) = self.db().attempts(id).ok().and_then(|a| a.into_iter().find(|a| a.attempt == attempt)).map(|a| a.log_path)
        else {
            return;
        };
        let Ok(bytes) = std::fs::read(&path) else { return };
        match self.job_store(&job).map(|s| s.put_object(&format!("logs/attempt-{attempt}.log"), bytes.into())) {
            Some(Ok(())) => {}
            Some(Err(e)) => tracing::warn!(job = id, attempt, error = %e, "could not copy the attempt log to the store"),
            None => tracing::warn!(job = id, attempt, "could not open the job's store to copy its log"),
        }
    }

    // ---- the supervisor ----

    /// Runs [`Coordinator::tick`] until `stop` is raised.
    pub fn supervise(self: Arc<Self>, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            self.tick();
            std::thread::sleep(self.cfg.tick);
        }
    }

    /// Picks up after a restart: attempts whose launcher handle is known are
    /// watched again; those started but never recorded are killed and, like
    /// local attempts whose processes vanished, count as lost (the restart
    /// policy applies).
    pub fn recover(&self) -> Result<(), CoordinatorError> {
        let mut jobs = self.db().list(Some(JobStatus::Launching))?;
        jobs.extend(self.db().list(Some(JobStatus::Running))?);
        for job in jobs {
            let attempts = self.db().attempts(job.id)?;
            let Some(last) = attempts.iter().find(|a| a.attempt == job.attempts).cloned() else {
                self.apply(job.id, &Event::AttemptEnded { attempt: job.attempts, cause: AttemptCause::Lost });
                continue;
            };
            let files = AttemptFiles::new(&self.cfg.job_dir(job.id), last.attempt);
            let place = match (job.backend.as_str(), last.handle.as_deref()) {
                ("local", Some(h)) => h.parse().ok().map(|pid| Where::Local { pid, files: files.clone(), child: None }),
                ("slurm", Some(h)) => h.parse().ok().map(|id: u64| Where::Slurm {
                    id,
                    restarts_seen: attempts.iter().filter(|a| a.handle.as_deref() == Some(h)).count() as u32 - 1,
                    last_poll: None,
                    failed_polls: 0,
                }),
                _ => None,
            };
            match place {
                Some(place) => {
                    tracing::info!(job = job.id, attempt = last.attempt, "re-attached to a running attempt");
                    let hang_timeout = self.hang_timeout_of(&job);
                    let gpus = match &place {
                        Where::Local { pid, .. } => local::assigned_gpus(*pid),
                        Where::Slurm { .. } => vec![],
                    };
                    lock(&self.live).insert(job.id, Live { attempt: last.attempt, place, hang_timeout, gpus });
                }
                None => {
                    // Started but never recorded: stop whatever may run before
                    // counting the attempt lost, or the restart would duplicate it.
                    match (job.backend.as_str(), &self.slurm) {
                        ("local", _) => local::kill_unrecorded(&files, &self.cfg.instance(), job.id, last.attempt),
                        (_, Some(c)) => {
                            let name = launch::slurm::job_name(&job.name, job.id, &self.cfg.instance());
                            if let Err(e) = c.cancel_named(&name) {
                                tracing::warn!(job = job.id, name, error = %e, "could not cancel an unrecorded SLURM submission");
                            }
                        }
                        _ => {}
                    }
                    self.apply(job.id, &Event::AttemptEnded { attempt: last.attempt, cause: AttemptCause::Lost });
                }
            }
        }
        // Cancelled while the coordinator was down between recording and stopping
        // (a cancel is recorded first, acted on second). Only recent ones can
        // still have anything running.
        let cancelled = self.db().list(Some(JobStatus::Cancelled))?;
        let recent = now_ms() - 7 * 24 * 3600 * 1000;
        for job in cancelled.into_iter().filter(|j| j.attempts > 0 && j.updated_ms > recent) {
            match (job.backend.as_str(), &self.slurm) {
                ("local", _) => {
                    let files = AttemptFiles::new(&self.cfg.job_dir(job.id), job.attempts);
                    local::kill_unrecorded(&files, &self.cfg.instance(), job.id, job.attempts);
                }
                (_, Some(c)) => {
                    let _ = c.cancel_named(&launch::slurm::job_name(&job.name, job.id, &self.cfg.instance()));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn hang_timeout_of(&self, job: &JobRecord) -> Duration {
        JobSpec::parse(&job.spec, "job.toml")
            .ok()
            .map(|s| s.launch.hang_timeout_s)
            .filter(|&s| s > 0)
            .map(Duration::from_secs)
            .unwrap_or(self.cfg.hang_timeout)
    }

    /// One round: watch live attempts, then start what fits. A panic in a round
    /// is logged and the next round runs: the supervisor must not die silently
    /// while the API keeps answering.
    pub fn tick(&self) {
        let round = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.round()));
        if round.is_err() {
            tracing::error!("supervisor round panicked; continuing with the next one");
        }
    }

    fn round(&self) {
        let ids: Vec<JobId> = lock(&self.live).keys().copied().collect();
        for id in ids {
            self.check_attempt(id);
        }
        // Heartbeats that raced an attempt's end may have left entries behind.
        let live: Vec<JobId> = lock(&self.live).keys().copied().collect();
        lock(&self.watch).retain(|id, _| live.contains(id));
        if !self.cfg.hold {
            if let Err(e) = self.schedule() {
                tracing::error!(error = %e, "scheduling failed");
            }
        }
    }

    /// Polls a SLURM job at most every 2 s; `None` between polls.
    fn poll_slurm(&self, id: JobId, sid: u64, restarts_seen: u32, last_poll: &mut Option<Instant>, failed_polls: &mut u32) -> Option<Polled> {
        if last_poll.is_some_and(|t| t.elapsed() < Duration::from_secs(2)) {
            return None;
        }
        *last_poll = Some(Instant::now());
        let Some(client) = self.slurm.as_ref() else {
            return Some(Polled::Ended(AttemptCause::LaunchFailed { message: "SLURM is not available to this coordinator".into() }));
        };
        match launch::slurm::poll(client, sid, restarts_seen) {
            Ok(p) => {
                *failed_polls = 0;
                Some(p)
            }
            Err(e) => {
                // Count only failures while the controller answers (the job is
                // unknown to it); an unreachable controller is an outage.
                let controller_up = client.queue(sid).is_ok();
                if controller_up {
                    *failed_polls += 1;
                }
                if *failed_polls >= SLURM_POLL_FAILURES {
                    tracing::error!(job = id, slurm_job = sid, error = %e, "SLURM no longer knows the job; counting the attempt lost");
                    let _ = client.cancel(sid, None);
                    Some(Polled::Ended(AttemptCause::Lost))
                } else {
                    tracing::warn!(job = id, slurm_job = sid, error = %e, controller_up, "cannot poll SLURM; will retry");
                    None
                }
            }
        }
    }

    fn check_attempt(&self, id: JobId) {
        let taken = lock(&self.live).remove(&id);
        let Some(mut live) = taken else { return };
        let got = self.db().get(id);
        let status = match got {
            Ok(j) => j.status,
            Err(e) => {
                tracing::error!(job = id, error = %e, "cannot read job");
                lock(&self.live).insert(id, live);
                return;
            }
        };
        if status.is_terminal() {
            // Cancelled through the API while we were polling.
            self.stop(id, live);
            return;
        }
        // `None`: no news this round (a SLURM job between polls).
        let polled = match &mut live.place {
            Where::Local { pid, files, child } => {
                if let Some(c) = child.as_mut() {
                    let _ = c.try_wait(); // reap our own child so it does not linger as a zombie
                }
                Some(local::poll(*pid, files))
            }
            Where::Slurm { id: sid, restarts_seen, last_poll, failed_polls } => {
                let (sid, seen) = (*sid, *restarts_seen);
                self.poll_slurm(id, sid, seen, last_poll, failed_polls)
            }
        };
        match polled {
            None => {}
            Some(Polled::Waiting) => {
                // Pending or suspended: no heartbeats are due, so nothing can hang.
                lock(&self.watch).remove(&id);
                lock(&self.live).insert(id, live);
                return;
            }
            Some(Polled::Running) => {
                if status == JobStatus::Launching {
                    self.apply(id, &Event::Started { attempt: live.attempt });
                }
            }
            Some(Polled::Requeued) => {
                self.requeued(id, live);
                return;
            }
            Some(Polled::Ended(cause)) => {
                if cause == AttemptCause::Lost {
                    // The supervisor vanished; its ranks may not have.
                    self.kill(id, &mut live);
                }
                if let Where::Local { child: Some(c), .. } = &mut live.place {
                    let _ = c.wait(); // it has written its exit file and is exiting
                }
                self.end_attempt(id, live.attempt, cause);
                return;
            }
        }
        // Watchdog (only while the attempt runs).
        if status != JobStatus::Running {
            lock(&self.live).insert(id, live);
            return;
        }
        let now = Instant::now();
        let (hang, stragglers) = {
            let mut watch = lock(&self.watch);
            match watch.get_mut(&id).filter(|w| w.attempt == live.attempt) {
                Some(w) => (w.hang(now, live.hang_timeout), w.new_stragglers(self.cfg.straggler_factor)),
                None => (None, vec![]),
            }
        };
        for s in stragglers {
            lock(&self.stats).stragglers += 1;
            tracing::warn!(job = id, rank = s.rank, compute_s = s.compute_s, median_s = s.median_s, "straggler");
            self.apply(id, &Event::Straggler { attempt: live.attempt, rank: s.rank, compute_s: s.compute_s, median_s: s.median_s });
        }
        if let Some(stuck) = hang {
            tracing::error!(job = id, attempt = live.attempt, ?stuck, "attempt hung; killing it");
            if !self.kill(id, &mut live) {
                // Not confirmed stopped: writing it off now could run two copies.
                lock(&self.live).insert(id, live);
                return;
            }
            lock(&self.stats).hangs += 1;
            self.end_attempt(id, live.attempt, AttemptCause::Hang { stuck_ranks: stuck });
            return;
        }
        lock(&self.live).insert(id, live);
    }

    /// SLURM put the job back in its queue: the attempt ended (preempted) and the
    /// same SLURM job carries the next one — recorded in one transaction.
    fn requeued(&self, id: JobId, mut live: Live) {
        let Where::Slurm { id: sid, restarts_seen, .. } = &mut live.place else { return };
        let (sid, next) = (*sid, live.attempt + 1);
        let events = [Event::AttemptEnded { attempt: live.attempt, cause: AttemptCause::Preempted }, Event::Launch { attempt: next }];
        let (handle, log) = (sid.to_string(), self.slurm_log(id, sid));
        let recorded = self.db().apply_all(id, &events, Some((&handle, &log)));
        match recorded {
            Ok(_) => {
                tracing::info!(job = id, slurm_job = sid, attempt = next, "SLURM requeued the job: next attempt");
                *restarts_seen += 1;
                lock(&self.watch).remove(&id);
                self.upload_log(id, live.attempt);
                live.attempt = next;
                lock(&self.live).insert(id, live);
            }
            Err(e) => {
                let got = self.db().get(id);
                match got {
                    // Cancelled meanwhile: the requeued SLURM job must not run on.
                    Ok(j) if j.status.is_terminal() => self.stop(id, live),
                    _ => {
                        tracing::warn!(job = id, error = %e, "requeue not recorded; will retry");
                        lock(&self.live).insert(id, live);
                    }
                }
            }
        }
    }

    fn slurm_log(&self, id: JobId, sid: u64) -> String {
        self.cfg.job_dir(id).join("run").join(format!("slurm-{sid}.out")).display().to_string()
    }

    fn end_attempt(&self, id: JobId, attempt: u32, cause: AttemptCause) {
        lock(&self.watch).remove(&id);
        // The log is complete once the attempt has ended: copy it to the store
        // before the end is recorded, so whoever sees the job finished finds it.
        self.upload_log(id, attempt);
        let preempted = cause == AttemptCause::Preempted;
        if self.apply(id, &Event::AttemptEnded { attempt, cause }) == Some(JobStatus::Queued) && !preempted {
            let restarts = self.db().get(id).map(|j| j.restarts).unwrap_or(1);
            let wait = self.cfg.backoff(restarts);
            tracing::info!(job = id, restarts, wait_s = wait.as_secs_f64(), "restarting after a pause");
            lock(&self.not_before).insert(id, Instant::now() + wait);
        }
    }

    /// Stops an attempt's processes; false when that could not be confirmed
    /// (scancel failed).
    fn kill(&self, id: JobId, live: &mut Live) -> bool {
        match &mut live.place {
            Where::Local { pid, child, files } => {
                // Only a pid that is still our supervisor is signalled (a re-attached
                // one is reaped by init and its pid may be reused); the ranks are
                // found by their job and attempt either way.
                if child.is_some() || local::is_our_supervisor(*pid, files) {
                    local::kill(*pid);
                }
                local::kill_attempt(&self.cfg.instance(), id, live.attempt);
                if let Some(c) = child.as_mut() {
                    let _ = c.wait();
                }
                true
            }
            Where::Slurm { id, .. } => match &self.slurm {
                Some(c) => match c.cancel(*id, None) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(slurm_job = *id, error = %e, "scancel failed; will retry");
                        false
                    }
                },
                None => false,
            },
        }
    }

    fn stop(&self, id: JobId, mut live: Live) {
        let attempt = live.attempt;
        self.kill(id, &mut live);
        self.upload_log(id, attempt);
    }

    fn schedule(&self) -> Result<(), CoordinatorError> {
        let queue = self.db().list(Some(JobStatus::Queued))?;
        if queue.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let queue: Vec<JobRecord> = {
            let mut nb = lock(&self.not_before);
            nb.retain(|_, t| *t > now);
            queue.into_iter().filter(|j| !nb.contains_key(&j.id)).collect()
        };
        let mut busy = self.db().list(Some(JobStatus::Launching))?;
        busy.extend(self.db().list(Some(JobStatus::Running))?);
        for id in schedule::pick(self.cfg.capacity, Usage::of(&busy), &queue) {
            if let Some(job) = queue.iter().find(|j| j.id == id) {
                self.launch(job);
            }
        }
        Ok(())
    }

    fn launch(&self, job: &JobRecord) {
        let id = job.id;
        let attempt = job.attempts + 1;
        if self.apply(id, &Event::Launch { attempt }).is_none() {
            return;
        }
        if attempt == 1 {
            let mut s = lock(&self.stats);
            s.launched += 1;
            s.queue_wait_s_sum += (now_ms() - job.submitted_ms).max(0) as f64 / 1000.0;
        }
        let gpus = self.free_gpus(job);
        match self.start(job, attempt, &gpus) {
            Ok(place) => {
                let hang_timeout = self.hang_timeout_of(job);
                lock(&self.live).insert(id, Live { attempt, place, hang_timeout, gpus });
            }
            Err(message) => {
                tracing::error!(job = id, attempt, %message, "launch failed");
                self.end_attempt(id, attempt, AttemptCause::LaunchFailed { message });
            }
        }
    }

    /// The lowest-numbered GPUs no live local attempt holds, as many as `job`
    /// needs (the scheduler has checked that enough are free).
    fn free_gpus(&self, job: &JobRecord) -> Vec<u32> {
        if job.backend != "local" || job.gpus == 0 {
            return vec![];
        }
        let live = lock(&self.live);
        let taken: Vec<u32> = live.values().flat_map(|l| l.gpus.iter().copied()).collect();
        (0..self.cfg.capacity.gpus).filter(|g| !taken.contains(g)).take(job.gpus as usize).collect()
    }

    fn start(&self, job: &JobRecord, attempt: u32, gpus: &[u32]) -> Result<Where, String> {
        let id = job.id;
        let spec = JobSpec::parse(&job.spec, "job.toml")?;
        let dir = self.cfg.job_dir(id);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let spec_path = dir.join("spec.toml");
        let text = plan::effective_spec(&job.spec, &spec, &self.cfg, id)?;
        write_atomically(&spec_path, &text)?;
        let run_dir = dir.join("run");
        let token = self.db().worker_token(id).map_err(|e| e.to_string())?;
        let report = ReportTo {
            url: self.cfg.public_url.clone(),
            job: id,
            attempt,
            token,
            heartbeat_s: self.cfg.heartbeat_interval.as_secs_f64(),
            instance: self.cfg.instance(),
        };
        match job.backend.as_str() {
            "local" => {
                let files = AttemptFiles::new(&dir, attempt);
                let child = local::start(&self.cfg.kiln_exe, &spec_path, &run_dir, job.ranks as usize, &files, &report, gpus)
                    .map_err(|e| format!("starting {}: {e}", self.cfg.kiln_exe.display()))?;
                let pid = child.id() as i32;
                let recorded = self.db().set_attempt_handle(id, attempt, &pid.to_string(), &files.log().display().to_string());
                if let Err(e) = recorded {
                    // Unrecorded, it would run on beside the relaunch: stop it first.
                    let mut child = child;
                    local::kill(pid);
                    local::kill_attempt(&self.cfg.instance(), id, attempt);
                    let _ = child.wait();
                    return Err(format!("recording the attempt: {e}"));
                }
                self.apply(id, &Event::Started { attempt });
                Ok(Where::Local { pid, files, child: Some(child) })
            }
            _ => {
                let client = self.slurm.as_ref().ok_or("SLURM is not available to this coordinator")?;
                let (sid, log) = launch::slurm::start(client, &spec, &spec_path, &run_dir, &self.cfg.kiln_exe, &report, &self.cfg.instance())
                    .map_err(|e| e.to_string())?;
                let recorded = self.db().set_attempt_handle(id, attempt, &sid.to_string(), &log);
                if let Err(e) = recorded {
                    let _ = client.cancel(sid, None);
                    return Err(format!("recording the attempt: {e}"));
                }
                Ok(Where::Slurm { id: sid, restarts_seen: 0, last_poll: None, failed_polls: 0 })
            }
        }
    }
}

fn write_atomically(path: &std::path::Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}
