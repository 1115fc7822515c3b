//! The coordinator's settings: where it listens and keeps state, what this host
//! can run, and how patient the watchdog is.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// What the local backend may place on this host at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Rank slots (one rank uses one).
    pub slots: u32,
    pub gpus: u32,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// The URL workers use to reach this coordinator (defaults to `http://<listen>`).
    pub public_url: String,
    /// SQLite file, job directories (specs, local logs, run directories).
    pub state_dir: PathBuf,
    /// Where jobs' checkpoints and logs go: `s3://bucket/prefix`, `file://…` or a
    /// directory every node can see. Each job gets `<store>/jobs/<id>`.
    pub store: String,
    /// Tokens that may use the whole API.
    pub tokens: Vec<String>,
    pub capacity: Capacity,
    /// Default seconds without progress before an attempt is declared hung
    /// (a job's `[launch] hang_timeout_s` overrides it).
    pub hang_timeout: Duration,
    /// A rank whose compute time per step exceeds `straggler_factor` × the median
    /// of its peers is reported as a straggler.
    pub straggler_factor: f64,
    /// How often workers report.
    pub heartbeat_interval: Duration,
    /// How often the supervisor loop runs (SLURM is polled at most every 2 s).
    pub tick: Duration,
    /// The `kiln` binary that runs workers and supervises local attempts.
    pub kiln_exe: PathBuf,
    /// Where `sbatch`, `squeue`, … live (default: `PATH`).
    pub slurm_bin: Option<PathBuf>,
    /// Accept and store jobs but launch none (maintenance, load tests).
    pub hold: bool,
    /// Largest request body accepted (a job spec is a few KiB).
    pub max_body_bytes: usize,
    /// Wait before restarting a failed attempt: this, doubled per restart already
    /// spent, at most a minute (a job that fails at launch must not burn its
    /// restarts in a second).
    pub restart_backoff: Duration,
}

impl Config {
    /// Defaults for everything but the essentials.
    pub fn new(listen: SocketAddr, state_dir: PathBuf, tokens: Vec<String>, kiln_exe: PathBuf) -> Config {
        let store = format!("file://{}", state_dir.join("store").display());
        let slots = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
        Config {
            listen,
            public_url: format!("http://{listen}"),
            state_dir,
            store,
            tokens,
            capacity: Capacity { slots, gpus: 0 },
            hang_timeout: Duration::from_secs(600),
            straggler_factor: 2.0,
            heartbeat_interval: Duration::from_secs(5),
            tick: Duration::from_millis(500),
            kiln_exe,
            slurm_bin: None,
            hold: false,
            max_body_bytes: 256 * 1024,
            restart_backoff: Duration::from_secs(1),
        }
    }

    /// The wait before relaunching a job that has spent `restarts` restarts.
    pub fn backoff(&self, restarts: u32) -> Duration {
        let factor = 1u32 << restarts.saturating_sub(1).min(16);
        (self.restart_backoff * factor).min(Duration::from_secs(60))
    }

    /// A short, stable name of this coordinator (from its state directory), put in
    /// the names of its SLURM jobs so that cancelling by name never reaches
    /// another coordinator's jobs.
    pub fn instance(&self) -> String {
        // FNV-1a: stable across builds, unlike std's hasher.
        let mut h: u64 = 0xcbf29ce484222325;
        for b in self.state_dir.as_os_str().as_encoded_bytes() {
            h = (h ^ u64::from(*b)).wrapping_mul(0x100000001b3);
        }
        format!("{:08x}", h as u32)
    }

    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("kiln.db")
    }

    /// A job's directory: its effective spec, attempt logs, run directory.
    pub fn job_dir(&self, id: i64) -> PathBuf {
        self.state_dir.join("jobs").join(id.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_backoff_doubles_up_to_a_minute() {
        let mut c = Config::new("127.0.0.1:0".parse().unwrap(), PathBuf::from("/s"), vec![], PathBuf::from("kiln"));
        c.restart_backoff = Duration::from_secs(1);
        let waits: Vec<u64> = [1, 2, 3, 4, 7, 8, 30].iter().map(|&r| c.backoff(r).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 60, 60, 60]);
        c.restart_backoff = Duration::ZERO;
        assert_eq!(c.backoff(5), Duration::ZERO);
    }
}
