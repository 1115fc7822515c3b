//! Where this process sits in a job: rank, local rank, world size, device.
//!
//! Read from the launcher's environment (Open MPI's `OMPI_COMM_WORLD_*`, SLURM's
//! `SLURM_*`, or torchrun-style `RANK`/`WORLD_SIZE`), so a rank knows its place
//! before any collective is set up.

use std::env;

/// A rank's place in the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub local_world_size: usize,
    /// Which launcher the values came from ("mpirun", "slurm", "env" or "single").
    pub source: &'static str,
}

impl Topology {
    /// A single process job.
    pub fn single() -> Self {
        Topology { rank: 0, world_size: 1, local_rank: 0, local_world_size: 1, source: "single" }
    }

    /// Reads the launcher's environment; a process started by hand is a single-rank job.
    pub fn from_env() -> Self {
        Self::from_lookup(|k| env::var(k).ok())
    }

    /// As [`Topology::from_env`], over any variable lookup (testable without touching the
    /// process environment).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let num = |k: &str| get(k).and_then(|v| v.trim().parse::<usize>().ok());
        let sets: [(&'static str, [&str; 4]); 3] = [
            (
                "mpirun",
                [
                    "OMPI_COMM_WORLD_RANK",
                    "OMPI_COMM_WORLD_SIZE",
                    "OMPI_COMM_WORLD_LOCAL_RANK",
                    "OMPI_COMM_WORLD_LOCAL_SIZE",
                ],
            ),
            ("slurm", ["SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE"]),
            ("env", ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"]),
        ];
        for (source, [r, w, lr, lw]) in sets {
            if let (Some(rank), Some(world)) = (num(r), num(w)) {
                if world >= 1 && rank < world {
                    let local_rank = num(lr).unwrap_or(0);
                    let local_world_size = num(lw).unwrap_or(1).max(local_rank + 1);
                    return Topology { rank, world_size: world, local_rank, local_world_size, source };
                }
            }
        }
        Topology::single()
    }

    /// Whether this rank was started by an MPI launcher and must initialise MPI.
    pub fn launched_by_mpi(&self) -> bool {
        self.source == "mpirun" || (self.source == "slurm" && self.world_size > 1)
    }

    /// Torch intra-op threads for this rank: the cores of the host shared out among the
    /// ranks on it, so co-located ranks do not oversubscribe the CPU.
    pub fn intra_op_threads(&self, host_cores: usize) -> usize {
        (host_cores / self.local_world_size.max(1)).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn reads_open_mpi_variables() {
        let t = Topology::from_lookup(lookup(&[
            ("OMPI_COMM_WORLD_RANK", "2"),
            ("OMPI_COMM_WORLD_SIZE", "3"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "2"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "3"),
        ]));
        assert_eq!(t.rank, 2);
        assert_eq!(t.world_size, 3);
        assert_eq!(t.local_world_size, 3);
        assert!(t.launched_by_mpi());
        assert_eq!(t.intra_op_threads(2), 1);
    }

    #[test]
    fn ignores_inconsistent_values_and_falls_back_to_single() {
        let t = Topology::from_lookup(lookup(&[("RANK", "4"), ("WORLD_SIZE", "2")]));
        assert_eq!(t, Topology::single());
        assert_eq!(Topology::from_lookup(lookup(&[])), Topology::single());
    }

    #[test]
    fn threads_never_drop_below_one() {
        let t = Topology { local_world_size: 8, ..Topology::single() };
        assert_eq!(t.intra_op_threads(2), 1);
        assert_eq!(Topology::single().intra_op_threads(16), 16);
    }
}
