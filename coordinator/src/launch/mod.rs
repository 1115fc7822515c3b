//! Launchers: how an attempt is started, watched and stopped on each backend.
//!
//! An attempt is known by a handle stored with it — the pid of a local
//! supervisor process, or a SLURM job id — so a coordinator restarted after a
//! crash can find it again from the store alone.

pub mod local;
pub mod slurm;

use crate::lifecycle::AttemptCause;

/// The variables that let an attempt's ranks report to the coordinator.
#[derive(Debug, Clone)]
pub struct ReportTo {
    pub url: String,
    pub job: i64,
    pub attempt: u32,
    pub token: String,
    pub heartbeat_s: f64,
    /// The coordinator's instance name ([`crate::Config::instance`]): with the job
    /// and attempt it identifies the attempt's processes on a shared host.
    pub instance: String,
}

impl ReportTo {
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("KILN_COORDINATOR".into(), self.url.clone()),
            ("KILN_JOB_ID".into(), self.job.to_string()),
            ("KILN_ATTEMPT".into(), self.attempt.to_string()),
            ("KILN_WORKER_TOKEN".into(), self.token.clone()),
            ("KILN_HEARTBEAT_S".into(), format!("{}", self.heartbeat_s)),
            ("KILN_COORDINATOR_ID".into(), self.instance.clone()),
        ]
    }
}

/// What a poll found.
#[derive(Debug, Clone, PartialEq)]
pub enum Polled {
    /// Waiting for resources (SLURM pending).
    Waiting,
    Running,
    /// SLURM put the job back in its queue (`Restarts` went up): the attempt ended
    /// and the same SLURM job carries the next one.
    Requeued,
    Ended(AttemptCause),
}

/// The cause for an exit status: 75 means stopped with a checkpoint.
pub fn cause_of_exit(code: i32) -> AttemptCause {
    if code == kiln_cluster::launch::EXIT_PREEMPTED {
        AttemptCause::Preempted
    } else {
        AttemptCause::Exited { code }
    }
}
