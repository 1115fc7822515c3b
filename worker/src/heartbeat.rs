//! Progress reports to a coordinator: every rank posts its step, how long its
//! last step computed, and how many collectives it has entered; rank 0 adds loss
//! and throughput. A thread of its own sends them, so a rank blocked in a
//! collective (or stuck before one) keeps reporting, which is how the coordinator
//! tells a hang from a slow step and names the rank that is missing.
//!
//! Active only when the coordinator's launcher set `KILN_COORDINATOR`,
//! `KILN_JOB_ID`, `KILN_ATTEMPT` and `KILN_WORKER_TOKEN`; a run without them
//! (`kiln run`) reports nothing. Failed posts are logged and dropped: a
//! coordinator that is down must never stop training.

use kiln_cluster::comm::CollectiveClock;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Shared {
    step: AtomicU64,
    /// Seconds of the last step spent outside collectives, as f64 bits.
    compute_s: AtomicU64,
    /// Rank 0's latest train metrics.
    metrics: Mutex<Option<serde_json::Value>>,
    done: AtomicBool,
}

/// Where and as what to report.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub job: i64,
    pub attempt: u32,
    pub token: String,
    pub interval: Duration,
}

impl Target {
    /// The target the launcher put in the environment, if any.
    pub fn from_env() -> Option<Target> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let interval = var("KILN_HEARTBEAT_S").and_then(|s| s.parse::<f64>().ok()).filter(|s| *s > 0.0).unwrap_or(5.0);
        Some(Target {
            url: var("KILN_COORDINATOR")?.trim_end_matches('/').to_string(),
            job: var("KILN_JOB_ID")?.parse().ok()?,
            attempt: attempt_from_env()?,
            token: var("KILN_WORKER_TOKEN")?,
            interval: Duration::from_secs_f64(interval),
        })
    }
}

/// The attempt this process belongs to, as the coordinator counts them: the
/// launcher's `KILN_ATTEMPT`, plus the requeues of a SLURM job (which keeps the
/// environment it was submitted with).
pub fn attempt_from_env() -> Option<u32> {
    let base = std::env::var("KILN_ATTEMPT").ok()?.parse::<u32>().ok()?;
    let requeues = std::env::var("SLURM_RESTART_COUNT").ok().and_then(|r| r.parse::<u32>().ok()).unwrap_or(0);
    Some(base + requeues)
}

/// The reporting thread of one rank; stops when dropped.
pub struct Heartbeat {
    shared: Arc<Shared>,
    clock: Arc<CollectiveClock>,
    busy_at_step_start: f64,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeat {
    /// Starts reporting for `rank` when the environment names a coordinator.
    pub fn start(rank: usize, world: usize, clock: Arc<CollectiveClock>) -> Option<Heartbeat> {
        let target = Target::from_env()?;
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let c = clock.clone();
        let thread = std::thread::Builder::new()
            .name("kiln-heartbeat".into())
            .spawn(move || report_loop(target, rank, world, s, c))
            .ok()?;
        Some(Heartbeat { shared, clock, busy_at_step_start: 0.0, thread: Some(thread) })
    }

    /// Call when a step begins.
    pub fn step_started(&mut self) {
        self.busy_at_step_start = self.clock.busy_secs();
    }

    /// Call when optimizer step `done` finished after `wall_s` seconds.
    pub fn step_done(&mut self, done: u64, wall_s: f64) {
        let waiting = self.clock.busy_secs() - self.busy_at_step_start;
        let compute = (wall_s - waiting).max(0.0);
        self.shared.compute_s.store(compute.to_bits(), Ordering::Relaxed);
        self.shared.step.store(done, Ordering::Relaxed);
    }

    /// Rank 0's logged train metrics, passed on with the next report.
    pub fn metrics(&self, m: serde_json::Value) {
        if let Ok(mut slot) = self.shared.metrics.lock() {
            *slot = Some(m);
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.shared.done.store(true, Ordering::Relaxed);
        // The thread naps in 100 ms slices and posts with short timeouts.
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn report_loop(t: Target, rank: usize, world: usize, shared: Arc<Shared>, clock: Arc<CollectiveClock>) {
    let client = match reqwest::blocking::Client::builder().connect_timeout(Duration::from_secs(2)).timeout(Duration::from_secs(5)).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "heartbeats disabled: cannot build an HTTP client");
            return;
        }
    };
    let url = format!("{}/v1/jobs/{}/heartbeat", t.url, t.job);
    let mut warned = false;
    loop {
        // Read `done` before posting: the post after it is set carries the final step.
        let last = shared.done.load(Ordering::Relaxed);
        let metrics = shared.metrics.lock().ok().and_then(|mut m| m.take());
        let body = json!({
            "attempt": t.attempt,
            "rank": rank,
            "world": world,
            "step": shared.step.load(Ordering::Relaxed),
            "collectives": clock.entered(),
            "compute_s": f64::from_bits(shared.compute_s.load(Ordering::Relaxed)),
            "metrics": metrics,
        });
        let sent = client.post(&url).bearer_auth(&t.token).header("content-type", "application/json").body(body.to_string()).send();
        match sent {
            Ok(r) if r.status().is_success() => warned = false,
            Ok(r) if !warned => {
                tracing::warn!(status = %r.status(), url, "coordinator refused a heartbeat");
                warned = true;
            }
            Err(e) if !warned => {
                tracing::warn!(error = %e, url, "coordinator unreachable; training continues");
                warned = true;
            }
            _ => {}
        }
        if last {
            return;
        }
        // Sleep in small slices so a finished rank exits promptly.
        let mut left = t.interval;
        while !left.is_zero() && !shared.done.load(Ordering::Relaxed) {
            let nap = left.min(Duration::from_millis(100));
            std::thread::sleep(nap);
            left -= nap;
        }
    }
}
