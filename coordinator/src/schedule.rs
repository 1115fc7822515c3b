//! Which queued jobs start now.
//!
//! Local jobs are gang-scheduled against this host's capacity: a job starts only
//! when all of its ranks (and GPUs) fit at once. The queue is ordered by priority,
//! then submission; a local job that does not fit yet holds back the local jobs
//! behind it (no backfilling), so a large job cannot be starved by a stream of
//! small ones. SLURM jobs are handed to SLURM at once: it does the placing.

use crate::config::Capacity;
use crate::store::{JobId, JobRecord};

/// Resources held by the local jobs that are launching or running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub slots: u32,
    pub gpus: u32,
}

impl Usage {
    pub fn of<'a>(jobs: impl IntoIterator<Item = &'a JobRecord>) -> Usage {
        jobs.into_iter().filter(|j| j.backend == "local").fold(Usage::default(), |u, j| Usage {
            slots: u.slots + j.ranks,
            gpus: u.gpus + j.gpus,
        })
    }
}

/// Whether a local job could ever run here (checked at submission).
pub fn fits_at_all(capacity: Capacity, ranks: u32, gpus: u32) -> bool {
    ranks <= capacity.slots && gpus <= capacity.gpus
}

/// The jobs to launch now, in order. `queue` must be in scheduling order
/// (priority descending, then id), as [`crate::store::Store::list`] returns it.
pub fn pick(capacity: Capacity, mut used: Usage, queue: &[JobRecord]) -> Vec<JobId> {
    let mut out = Vec::new();
    let mut local_blocked = false;
    for j in queue {
        if j.backend != "local" {
            out.push(j.id);
            continue;
        }
        if local_blocked {
            continue;
        }
        if used.slots + j.ranks <= capacity.slots && used.gpus + j.gpus <= capacity.gpus {
            used.slots += j.ranks;
            used.gpus += j.gpus;
            out.push(j.id);
        } else {
            local_blocked = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::JobStatus;

    fn job(id: JobId, backend: &str, ranks: u32, gpus: u32) -> JobRecord {
        JobRecord {
            id,
            name: format!("j{id}"),
            spec: String::new(),
            status: JobStatus::Queued,
            priority: 0,
            max_restarts: 0,
            restarts: 0,
            attempts: 0,
            submitted_ms: 0,
            updated_ms: 0,
            backend: backend.into(),
            ranks,
            gpus,
        }
    }

    const CAP: Capacity = Capacity { slots: 4, gpus: 2 };

    #[test]
    fn a_job_starts_only_when_all_its_ranks_fit() {
        let q = [job(1, "local", 3, 0), job(2, "local", 2, 0)];
        assert_eq!(pick(CAP, Usage::default(), &q), vec![1]);
        assert_eq!(pick(CAP, Usage { slots: 2, gpus: 0 }, &q[1..]), vec![2]);
        assert_eq!(pick(CAP, Usage { slots: 3, gpus: 0 }, &q[1..]), Vec::<JobId>::new());
    }

    #[test]
    fn the_head_of_the_queue_is_not_overtaken_by_smaller_local_jobs() {
        let q = [job(1, "local", 4, 0), job(2, "local", 1, 0), job(3, "slurm", 64, 8)];
        // Job 1 needs the whole host; job 2 would fit but must wait behind it.
        // SLURM jobs are not held back by local capacity.
        assert_eq!(pick(CAP, Usage { slots: 1, gpus: 0 }, &q), vec![3]);
    }

    #[test]
    fn gpus_are_counted_like_slots() {
        let q = [job(1, "local", 1, 2), job(2, "local", 1, 1)];
        assert_eq!(pick(CAP, Usage::default(), &q), vec![1]);
        assert!(!fits_at_all(CAP, 5, 0));
        assert!(!fits_at_all(CAP, 1, 3));
        assert!(fits_at_all(CAP, 4, 2));
    }

    #[test]
    fn usage_counts_local_jobs_only() {
        let u = Usage::of(&[job(1, "local", 2, 1), job(2, "slurm", 8, 8)]);
        assert_eq!(u, Usage { slots: 2, gpus: 1 });
    }
}
