//! The job lifecycle: queued → launching → running → succeeded | failed |
//! cancelled, with attempts.
//!
//! A job runs as one or more attempts. An attempt that ends with a failure sends
//! the job back to the queue while restarts remain (it resumes from its newest
//! committed checkpoint); a preempted attempt is requeued without spending a
//! restart, because nothing went wrong. [`next`] is the whole rule set, as a pure
//! function, so the store, the API and the tests all apply the same rules.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Launching,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Queued,
        JobStatus::Launching,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Launching => "launching",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|j| j.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
pub enum AttemptCause {
    /// All ranks exited; code 0 is success.
    Exited { code: i32 },
    /// A rank was killed by a signal.
    Signal { signal: i32 },
    /// No progress within the hang timeout; the ranks not in the pending collective.
    Hang { stuck_ranks: Vec<usize> },
    NodeFailure { node: String },
    /// Stopped on request with a committed checkpoint (exit 75, SLURM preemption).
    Preempted,
    /// The coordinator restarted and found the attempt's processes gone.
    Lost,
    /// The launcher could not start it (sbatch refused, mpirun missing, …).
    LaunchFailed { message: String },
    /// SLURM ended it in a state with no better match (time limit, boot failure…).
    Slurm { state: String },
    /// The job was cancelled while this attempt ran (recorded on the attempt only;
    /// the job's `cancel` event is what ends the job).
    Cancelled,
}

/// Something that happened to a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A launcher took the job (gang placement done); starts attempt N.
    Launch { attempt: u32 },
    /// The attempt's ranks are up.
    Started { attempt: u32 },
    /// The attempt ended.
    AttemptEnded { attempt: u32, cause: AttemptCause },
    /// The user cancelled.
    Cancel,
    /// A rank computes much slower than its peers (a notice; the status stays).
    Straggler { attempt: u32, rank: usize, compute_s: f64, median_s: f64 },
}

/// The outcome of an event: the new status, and whether a restart was spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub status: JobStatus,
    pub restart_spent: bool,
}

/// Applies `event` to a job in `status` that has used `restarts` of `max_restarts`.
/// `None` when the event does not apply (a late report about a finished job, a
/// second cancel), which callers turn into an error or ignore.
pub fn next(status: JobStatus, event: &Event, restarts: u32, max_restarts: u32) -> Option<Transition> {
    use JobStatus::*;
    let to = |status| Some(Transition { status, restart_spent: false });
    match (status, event) {
        (s, _) if s.is_terminal() => None,
        (_, Event::Cancel) => to(Cancelled),
        (Queued, Event::Launch { .. }) => to(Launching),
        (Launching, Event::Started { .. }) => to(Running),
        (Running, Event::Straggler { .. }) => to(Running),
        (Launching | Running, Event::AttemptEnded { cause, .. }) => match cause {
            AttemptCause::Exited { code: 0 } => to(Succeeded),
            AttemptCause::Preempted => to(Queued),
            _ if restarts < max_restarts => Some(Transition { status: Queued, restart_spent: true }),
            _ => to(Failed),
        },
        _ => None,
    }
}

/// Whether `event` is about the job's current attempt (`attempts` launched so
/// far): a launch must start the next one, and reports must be about the latest.
/// A late report from an attempt that was already written off (say, found lost
/// after a coordinator restart) must not end the attempt running now.
pub fn is_current(event: &Event, attempts: u32) -> bool {
    match event {
        Event::Launch { attempt } => *attempt == attempts + 1,
        Event::Started { attempt } | Event::AttemptEnded { attempt, .. } | Event::Straggler { attempt, .. } => {
            *attempt == attempts
        }
        Event::Cancel => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobStatus::*;

    fn ended(cause: AttemptCause) -> Event {
        Event::AttemptEnded { attempt: 1, cause }
    }

    #[test]
    fn the_happy_path() {
        let t = next(Queued, &Event::Launch { attempt: 1 }, 0, 2).unwrap();
        assert_eq!(t.status, Launching);
        assert_eq!(next(Launching, &Event::Started { attempt: 1 }, 0, 2).unwrap().status, Running);
        assert_eq!(next(Running, &ended(AttemptCause::Exited { code: 0 }), 0, 2).unwrap().status, Succeeded);
    }

    #[test]
    fn failures_restart_until_the_budget_is_spent() {
        for cause in [
            AttemptCause::Exited { code: 1 },
            AttemptCause::Signal { signal: 9 },
            AttemptCause::Hang { stuck_ranks: vec![1] },
            AttemptCause::NodeFailure { node: "n1".into() },
            AttemptCause::Lost,
        ] {
            let t = next(Running, &ended(cause.clone()), 1, 2).unwrap();
            assert_eq!(t, Transition { status: Queued, restart_spent: true }, "{cause:?}");
            assert_eq!(next(Running, &ended(cause), 2, 2).unwrap().status, Failed);
        }
        // A launch that never came up counts too.
        assert_eq!(next(Launching, &ended(AttemptCause::Exited { code: 127 }), 0, 0).unwrap().status, Failed);
    }

    #[test]
    fn preemption_requeues_without_spending_a_restart() {
        let t = next(Running, &ended(AttemptCause::Preempted), 5, 5).unwrap();
        assert_eq!(t, Transition { status: Queued, restart_spent: false });
    }

    #[test]
    fn cancel_wins_until_the_end_and_terminal_states_are_final() {
        for s in [Queued, Launching, Running] {
            assert_eq!(next(s, &Event::Cancel, 0, 0).unwrap().status, Cancelled);
        }
        for s in [Succeeded, Failed, Cancelled] {
            assert!(next(s, &Event::Cancel, 0, 0).is_none());
            assert!(next(s, &Event::Launch { attempt: 2 }, 0, 0).is_none());
        }
        assert!(next(Queued, &Event::Started { attempt: 1 }, 0, 0).is_none());
        assert!(next(Running, &Event::Launch { attempt: 1 }, 0, 0).is_none());
    }

    #[test]
    fn only_the_current_attempt_counts() {
        assert!(is_current(&Event::Launch { attempt: 1 }, 0));
        assert!(!is_current(&Event::Launch { attempt: 3 }, 1));
        assert!(is_current(&Event::Started { attempt: 2 }, 2));
        assert!(!is_current(&ended(AttemptCause::Exited { code: 0 }), 2));
        assert!(is_current(&Event::Cancel, 7));
    }

    #[test]
    fn statuses_round_trip_as_text() {
        for s in JobStatus::ALL {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobStatus::parse("bogus"), None);
    }
}
