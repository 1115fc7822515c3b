//! The environment SLURM gives a task, as a rank reads it.

use crate::hostlist;

/// What a task started by `srun` knows about its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmEnv {
    pub job_id: u64,
    pub proc_id: usize,
    pub ntasks: usize,
    pub local_id: usize,
    pub node_id: usize,
    pub nodes: Vec<String>,
    /// How often SLURM has requeued the job (0 on the first start).
    pub restart_count: u32,
}

impl SlurmEnv {
    /// `None` when the process was not started by SLURM.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Option<SlurmEnv> {
        let num = |k: &str| get(k).and_then(|v| v.trim().parse::<u64>().ok());
        let job_id = num("SLURM_JOB_ID").or_else(|| num("SLURM_JOBID"))?;
        let nodes = get("SLURM_JOB_NODELIST")
            .or_else(|| get("SLURM_NODELIST"))
            .and_then(|l| hostlist::expand(&l).ok())
            .unwrap_or_default();
        Some(SlurmEnv {
            job_id,
            proc_id: num("SLURM_PROCID").unwrap_or(0) as usize,
            ntasks: num("SLURM_NTASKS").unwrap_or(1) as usize,
            local_id: num("SLURM_LOCALID").unwrap_or(0) as usize,
            node_id: num("SLURM_NODEID").unwrap_or(0) as usize,
            nodes,
            restart_count: num("SLURM_RESTART_COUNT").unwrap_or(0) as u32,
        })
    }

    pub fn from_env() -> Option<SlurmEnv> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn reads_a_task_environment() {
        let vars: HashMap<&str, &str> = [
            ("SLURM_JOB_ID", "812"),
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NODEID", "2"),
            ("SLURM_JOB_NODELIST", "gpu[01-04]"),
            ("SLURM_RESTART_COUNT", "1"),
        ]
        .into_iter()
        .collect();
        let e = SlurmEnv::from_lookup(|k| vars.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(e.job_id, 812);
        assert_eq!(e.proc_id, 5);
        assert_eq!(e.nodes, ["gpu01", "gpu02", "gpu03", "gpu04"]);
        assert_eq!(e.restart_count, 1);
        assert!(SlurmEnv::from_lookup(|_| None).is_none());
    }
}
