//! `kiln coordinator` (the service) and its client commands: `submit`, `jobs`,
//! `status`, `logs`, `cancel`; plus the hidden `supervise` that wraps a local
//! attempt.

use crate::registry;
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use kiln_coordinator::client::Client;
use kiln_coordinator::plan::SpecCheck;
use kiln_coordinator::{Capacity, Config, Coordinator, JobStatus};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Args)]
pub struct CoordinatorArgs {
    /// Address to serve the API on.
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub listen: SocketAddr,
    /// The URL workers reach this coordinator at (default: http://<listen>).
    #[arg(long)]
    pub public_url: Option<String>,
    /// Where the job database, job specs and local logs live.
    #[arg(long, default_value = "kiln-state")]
    pub state_dir: PathBuf,
    /// File of API tokens, one per line (KILN_TOKEN is accepted too).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Checkpoints and logs of jobs: s3://bucket/prefix, file://… or a shared
    /// directory (default: <state-dir>/store).
    #[arg(long)]
    pub store: Option<String>,
    /// Rank slots the local backend may use at once (default: CPU cores).
    #[arg(long)]
    pub slots: Option<u32>,
    /// GPUs the local backend may use at once.
    #[arg(long, default_value_t = 0)]
    pub gpus: u32,
    /// Seconds without progress before an attempt counts as hung.
    #[arg(long, default_value_t = 600)]
    pub hang_timeout_s: u64,
    /// A rank computing this many times slower than the median is a straggler.
    #[arg(long, default_value_t = 2.0)]
    pub straggler_factor: f64,
    /// Seconds between worker heartbeats.
    #[arg(long, default_value_t = 5.0)]
    pub heartbeat_s: f64,
    /// Directory holding sbatch, squeue, scontrol and scancel (default: PATH).
    #[arg(long)]
    pub slurm_bin: Option<PathBuf>,
    /// Accept jobs but launch none.
    #[arg(long)]
    pub hold: bool,
    /// Seconds to wait before restarting a failed attempt, doubled per restart
    /// already spent (at most 60).
    #[arg(long, default_value_t = 1.0)]
    pub restart_backoff_s: f64,
}

pub fn coordinator(args: CoordinatorArgs) -> Result<i32> {
    let tokens = kiln_coordinator::auth::load_tokens(args.token_file.as_deref()).map_err(|e| anyhow!(e))?;
    std::fs::create_dir_all(&args.state_dir).with_context(|| format!("creating {}", args.state_dir.display()))?;
    let state_dir = args.state_dir.canonicalize().with_context(|| format!("resolving {}", args.state_dir.display()))?;
    let exe = std::env::current_exe().context("locating the kiln binary")?;
    let mut cfg = Config::new(args.listen, state_dir, tokens, exe);
    if let Some(u) = args.public_url {
        cfg.public_url = u;
    }
    if let Some(mut s) = args.store {
        if !s.contains("://") {
            // Workers resolve paths elsewhere (their own working directory, a
            // SLURM node): hand them an absolute one.
            s = std::path::absolute(&s).with_context(|| format!("--store {s}"))?.display().to_string();
        }
        kiln_cluster::checkpoint::open_store_url_check(&s).map_err(|e| anyhow!("--store {s}: {e}"))?;
        if kiln_cluster::checkpoint::is_process_local(&s) {
            bail!("--store {s}: a memory store dies with the coordinator; use a directory or s3://");
        }
        cfg.store = s;
    }
    if let Some(s) = args.slots {
        cfg.capacity.slots = s;
    }
    cfg.capacity = Capacity { gpus: args.gpus, ..cfg.capacity };
    let finite = args.heartbeat_s.is_finite() && args.straggler_factor.is_finite() && args.restart_backoff_s.is_finite();
    if !finite || args.heartbeat_s <= 0.0 || args.hang_timeout_s == 0 || args.straggler_factor <= 1.0 {
        bail!("--heartbeat-s and --hang-timeout-s must be positive numbers and --straggler-factor a number above 1");
    }
    cfg.hang_timeout = Duration::from_secs(args.hang_timeout_s);
    cfg.straggler_factor = args.straggler_factor;
    cfg.heartbeat_interval = Duration::from_secs_f64(args.heartbeat_s);
    cfg.slurm_bin = args.slurm_bin;
    cfg.hold = args.hold;
    if !(0.0..=60.0).contains(&args.restart_backoff_s) {
        bail!("--restart-backoff-s must be between 0 and 60");
    }
    cfg.restart_backoff = Duration::from_secs_f64(args.restart_backoff_s);

    let check: SpecCheck = Arc::new(|spec, text, origin| registry::check(spec, text, origin).map(|_| ()));
    let c = Coordinator::open(cfg, check).map_err(|e| anyhow!(e))?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    // Bind before touching any job: a coordinator that cannot serve must not
    // recover (and relaunch) anything.
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(c.cfg.listen))
        .with_context(|| format!("cannot listen on {} (in use? pick another with --listen)", c.cfg.listen))?;
    c.recover().context("recovering jobs from the store")?;
    let stop = Arc::new(AtomicBool::new(false));
    let supervisor = {
        let (c, stop) = (c.clone(), stop.clone());
        std::thread::Builder::new().name("kiln-supervisor".into()).spawn(move || c.supervise(stop))?
    };
    tracing::info!(
        listen = %c.cfg.listen,
        state = %c.cfg.state_dir.display(),
        store = %c.cfg.store,
        slots = c.cfg.capacity.slots,
        gpus = c.cfg.capacity.gpus,
        slurm = c.slurm_enabled(),
        "coordinator ready"
    );
    let served = rt.block_on(async {
        let shutdown = async {
            crate::stop_signal().await;
            tracing::info!("shutting down; running attempts continue and are picked up at the next start");
        };
        kiln_coordinator::serve(c.clone(), listener, shutdown).await.context("serving the API")
    });
    stop.store(true, Ordering::Relaxed);
    let _ = supervisor.join();
    served?;
    Ok(0)
}

/// Where the coordinator is and how to authenticate to it.
#[derive(Args, Clone)]
pub struct Remote {
    /// The coordinator's URL.
    #[arg(long, env = "KILN_COORDINATOR", default_value = "http://127.0.0.1:7878", global = true)]
    pub coordinator: String,
    /// A file whose first token line is used (else KILN_TOKEN).
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
}

impl Remote {
    fn client(&self) -> Result<Client> {
        let token = match &self.token_file {
            Some(f) => std::fs::read_to_string(f)
                .with_context(|| format!("cannot read token file {}", f.display()))?
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string)
                .ok_or_else(|| anyhow!("token file {} holds no token", f.display()))?,
            None => std::env::var("KILN_TOKEN")
                .map_err(|_| anyhow!("no API token: set KILN_TOKEN or pass --token-file (the coordinator's operator has it)"))?,
        };
        Ok(Client::new(&self.coordinator, token.trim())?)
    }
}

#[derive(Args)]
pub struct SubmitArgs {
    pub spec: PathBuf,
    /// Higher runs first (overrides [launch] priority).
    #[arg(long)]
    pub priority: Option<i64>,
    /// Restarts allowed for failed attempts (overrides [launch] max_restarts).
    #[arg(long)]
    pub max_restarts: Option<u32>,
    /// Resubmitting with the same key returns the same job (safe retries).
    #[arg(long)]
    pub key: Option<String>,
    /// Wait for the job to finish; exit 0 only if it succeeded.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub remote: Remote,
}

pub fn submit(args: SubmitArgs) -> Result<i32> {
    let text = std::fs::read_to_string(&args.spec).with_context(|| format!("cannot read job spec {}", args.spec.display()))?;
    let client = args.remote.client()?;
    let origin = args.spec.display().to_string();
    let (job, created) = client
        .submit(&text, args.priority, args.max_restarts, args.key.as_deref())
        .map_err(|e| anyhow!(e.to_string().replace("job.toml", &origin)))?;
    if created {
        eprintln!("submitted job {} ({}, {} rank(s), {})", job.id, job.name, job.ranks, job.backend);
    } else {
        eprintln!("job {} already exists for this key", job.id);
    }
    println!("{}", job.id);
    if !args.wait {
        return Ok(0);
    }
    let done = client.wait(job.id, Duration::from_secs(u64::MAX / 4))?;
    eprintln!("job {}: {}", done.id, done.status);
    Ok(if done.status == JobStatus::Succeeded { 0 } else { 1 })
}

#[derive(Args)]
pub struct JobsArgs {
    /// Only jobs in this state (queued, launching, running, succeeded, failed, cancelled).
    #[arg(long)]
    pub state: Option<String>,
    #[command(flatten)]
    pub remote: Remote,
}

pub fn jobs(args: JobsArgs) -> Result<i32> {
    let state = match args.state.as_deref() {
        None => None,
        Some(s) => Some(JobStatus::parse(s).ok_or_else(|| anyhow!("--state {s}: not a job state (queued, launching, running, succeeded, failed, cancelled)"))?),
    };
    let jobs = args.remote.client()?.jobs(state)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{:>6}  {:<24} {:<10} {:<7} {:>5} {:>8} {:>8}", "ID", "NAME", "STATE", "BACKEND", "RANKS", "ATTEMPTS", "STEP")?;
    for j in jobs {
        writeln!(
            out,
            "{:>6}  {:<24} {:<10} {:<7} {:>5} {:>8} {:>8}",
            j.id,
            j.name,
            j.status.as_str(),
            j.backend,
            j.ranks,
            j.attempts,
            j.step.map(|s| s.to_string()).unwrap_or_else(|| "-".into())
        )?;
    }
    Ok(0)
}

#[derive(Args)]
pub struct IdArgs {
    pub id: i64,
    #[command(flatten)]
    pub remote: Remote,
}

pub fn status(args: IdArgs) -> Result<i32> {
    let client = args.remote.client()?;
    let j = client.job(args.id)?;
    println!("job {} ({})", j.id, j.name);
    println!("  state     {}", j.status);
    println!("  backend   {} ({} rank(s), {} GPU(s))", j.backend, j.ranks, j.gpus);
    println!("  priority  {}", j.priority);
    println!("  restarts  {} of {}", j.restarts, j.max_restarts);
    if let Some((step, m)) = client.metrics(args.id)? {
        println!("  step      {step}  {m}");
    }
    for a in &j.attempt_list {
        let cause = a.cause.as_ref().map(|c| c.to_string()).unwrap_or_else(|| "running".into());
        println!("  attempt {} [{}]: {cause}", a.attempt, a.handle.as_deref().unwrap_or("-"));
    }
    println!("events:");
    for e in client.events(args.id)? {
        let ev = serde_json::to_string(&e.event).unwrap_or_default();
        println!("  {} -> {:<10} {ev}", e.at_ms, e.status.as_str());
    }
    Ok(0)
}

#[derive(Args)]
pub struct LogsArgs {
    pub id: i64,
    /// Keep printing as the job writes, across attempts, until it ends.
    #[arg(short, long)]
    pub follow: bool,
    /// Which attempt (default: the newest).
    #[arg(long)]
    pub attempt: Option<u32>,
    #[command(flatten)]
    pub remote: Remote,
}

pub fn logs(args: LogsArgs) -> Result<i32> {
    let client = args.remote.client()?;
    let mut attempt = args.attempt;
    let mut offset = 0u64;
    let mut out = std::io::stdout().lock();
    loop {
        let chunk = client.logs(args.id, attempt, offset)?;
        out.write_all(&chunk.bytes)?;
        out.flush()?;
        offset = chunk.next_offset;
        // Pin the attempt being read: offsets belong to one attempt's log.
        if attempt.is_none() && chunk.attempt > 0 {
            attempt = Some(chunk.attempt);
        }
        if !chunk.bytes.is_empty() {
            continue;
        }
        if !args.follow {
            return Ok(0);
        }
        // A newer attempt started: follow the next one from its beginning.
        if args.attempt.is_none() && chunk.attempts > chunk.attempt {
            let next = chunk.attempt + 1;
            attempt = Some(next);
            offset = 0;
            writeln!(out, "---- attempt {next} ----")?;
            continue;
        }
        if chunk.job_status.is_some_and(|s| s.is_terminal()) {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub fn cancel(args: IdArgs) -> Result<i32> {
    let j = args.remote.client()?.cancel(args.id)?;
    println!("job {}: {}", j.id, j.status);
    Ok(0)
}

#[derive(Args)]
pub struct SuperviseArgs {
    #[arg(long)]
    pub exit_file: PathBuf,
    #[arg(long)]
    pub pid_file: PathBuf,
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub fn supervise(args: SuperviseArgs) -> Result<i32> {
    Ok(kiln_coordinator::launch::local::supervise(&args.exit_file, &args.pid_file, &args.command))
}
