//! The SLURM backend: an attempt is a batch job (`sbatch --parsable`) whose
//! script runs `srun --mpi=pmix kiln worker` on every task; SLURM places it. A
//! job that SLURM requeues (preemption, or the script's own `scontrol requeue`
//! after a checkpointed stop) keeps its SLURM id; each time its restart count
//! goes up, the coordinator ends one attempt and starts counting the next.

use super::{Polled, ReportTo};
use crate::lifecycle::AttemptCause;
use kiln_slurm::client::SlurmClient;
use kiln_slurm::sbatch::SbatchRequest;
use kiln_slurm::state::JobState;
use kiln_slurm::SlurmError;
use kiln_worker::spec::JobSpec;
use std::path::Path;

/// The sbatch request for a job: one task per rank, `kiln worker --auto-resume`
/// in each, so a requeued job continues from its newest checkpoint.
pub fn request(spec: &JobSpec, spec_path: &Path, run_dir: &Path, kiln: &Path, env: Vec<(String, String)>) -> SbatchRequest {
    let r = &spec.resources;
    let l = &spec.launch;
    SbatchRequest {
        job_name: spec.name.clone(),
        nodes: r.nodes,
        ntasks_per_node: r.ranks_per_node,
        gpus_per_node: r.gpus_per_rank * r.ranks_per_node,
        cpus_per_task: r.cpus_per_rank,
        mem: l.mem.clone(),
        time: r.time_limit.clone(),
        partition: l.partition.clone(),
        account: l.account.clone(),
        qos: l.qos.clone(),
        output: Some(run_dir.join("slurm-%j.out").display().to_string()),
        error: None,
        signal_grace_s: Some(l.signal_grace_s),
        requeue: l.requeue,
        workdir: run_dir.parent().map(|p| p.display().to_string()),
        env,
        command: vec![
            kiln.display().to_string(),
            "worker".into(),
            spec_path.display().to_string(),
            "--run-dir".into(),
            run_dir.display().to_string(),
            "--auto-resume".into(),
        ],
    }
}

/// Submits an attempt; returns the SLURM job id and its output file.
pub fn start(
    client: &SlurmClient,
    spec: &JobSpec,
    spec_path: &Path,
    run_dir: &Path,
    kiln: &Path,
    report: &ReportTo,
    instance: &str,
) -> Result<(u64, String), SlurmError> {
    std::fs::create_dir_all(run_dir).map_err(|source| SlurmError::Spawn { command: format!("mkdir {}", run_dir.display()), source })?;
    let mut req = request(spec, spec_path, run_dir, kiln, report.env());
    // A name that identifies the job, so a submission whose id was never recorded
    // can still be found and cancelled (`cancel_named`).
    req.job_name = job_name(&spec.name, report.job, instance);
    let id = client.submit(&req.render()?)?;
    Ok((id, run_dir.join(format!("slurm-{id}.out")).display().to_string()))
}

/// The SLURM job name of job `job` of the coordinator `instance`
/// ([`crate::Config::instance`]).
pub fn job_name(run: &str, job: i64, instance: &str) -> String {
    format!("{run}.kiln{job}.{instance}")
}

/// Maps SLURM's view of job `id` to the attempt's. `restarts_seen` is how many
/// requeues of this SLURM job the coordinator has already turned into attempts.
pub fn poll(client: &SlurmClient, id: u64, restarts_seen: u32) -> Result<Polled, SlurmError> {
    let state = client.state(id)?;
    let info = client.show(id).unwrap_or_default();
    let restarts: u32 = info.get("Restarts").and_then(|r| r.parse().ok()).unwrap_or(0);
    if restarts > restarts_seen && !state.is_terminal() {
        return Ok(Polled::Requeued);
    }
    let exit_code = || -> i32 {
        // `ExitCode=1:0` is code:signal.
        info.get("ExitCode").and_then(|e| e.split(':').next()).and_then(|c| c.parse().ok()).unwrap_or(1)
    };
    Ok(match state {
        JobState::Pending | JobState::Configuring | JobState::Requeued | JobState::Suspended => Polled::Waiting,
        // States kiln does not name (STOPPED, SIGNALING, holds, …) are not final:
        // wait for one that is rather than give the attempt up while it may run.
        JobState::Other(_) => Polled::Waiting,
        JobState::Running | JobState::Completing => Polled::Running,
        JobState::Completed => Polled::Ended(AttemptCause::Exited { code: 0 }),
        JobState::Failed | JobState::OutOfMemory => Polled::Ended(super::cause_of_exit(exit_code())),
        JobState::Preempted => Polled::Ended(AttemptCause::Preempted),
        JobState::NodeFail => Polled::Ended(AttemptCause::NodeFailure {
            node: info.get("NodeList").cloned().unwrap_or_else(|| "?".into()),
        }),
        JobState::Timeout => Polled::Ended(AttemptCause::Slurm { state: "TIMEOUT".into() }),
        JobState::Cancelled => Polled::Ended(AttemptCause::Slurm { state: "CANCELLED".into() }),
        JobState::BootFail => Polled::Ended(AttemptCause::Slurm { state: "BOOT_FAIL".into() }),
        JobState::Deadline => Polled::Ended(AttemptCause::Slurm { state: "DEADLINE".into() }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_runs_one_worker_per_rank_with_the_reporting_variables() {
        let spec = JobSpec::parse(
            "name = \"r\"\n[resources]\nnodes = 2\nranks_per_node = 4\ngpus_per_rank = 1\ntime_limit = \"01:00:00\"\n[train]\nsteps = 1\nglobal_batch = 8\n[algorithm]\nname = \"x\"\n",
            "t",
        )
        .unwrap();
        let report = ReportTo { url: "http://c:7878".into(), job: 3, attempt: 1, token: "t0k".into(), heartbeat_s: 5.0, instance: "abcd1234".into() };
        let r = request(&spec, "/s/spec.toml".as_ref(), "/s/run".as_ref(), "/bin/kiln".as_ref(), report.env());
        assert_eq!((r.nodes, r.ntasks_per_node, r.gpus_per_node), (2, 4, 4));
        assert_eq!(r.command[..2], ["/bin/kiln".to_string(), "worker".to_string()]);
        assert!(r.command.contains(&"--auto-resume".to_string()));
        let script = r.render().unwrap();
        assert!(script.contains("export KILN_JOB_ID=3") && script.contains("KILN_COORDINATOR_ID=abcd1234"), "{script}");
        assert!(script.contains("--signal=B:USR1@120") && script.contains("--requeue"), "{script}");
    }
}
