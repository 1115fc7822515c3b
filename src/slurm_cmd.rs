//! `kiln slurm …`: SLURM without a coordinator — render the sbatch script a job
//! spec becomes, or submit it directly.

use crate::registry;
use anyhow::{Context, Result};
use clap::Subcommand;
use kiln_slurm::client::SlurmClient;
use kiln_slurm::sbatch::SbatchRequest;
use kiln_worker::JobSpec;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum SlurmCommand {
    /// Print the sbatch script that submitting this job would use.
    Render {
        spec: PathBuf,
        /// Where metrics, logs and the summary go (default: runs/<name>).
        #[arg(long)]
        run_dir: Option<PathBuf>,
    },
    /// Submit the job to SLURM directly (sbatch) and print its SLURM job id.
    Submit {
        spec: PathBuf,
        #[arg(long)]
        run_dir: Option<PathBuf>,
    },
}

fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir()?.join(p) })
}

/// The sbatch request for a job: one task per rank, `kiln worker --auto-resume`
/// in each, so a requeued job continues from its newest checkpoint.
pub fn request_for(spec: &JobSpec, spec_path: &Path, run_dir: &Path) -> Result<SbatchRequest> {
    let exe = std::env::current_exe().context("locating the kiln binary")?;
    let r = &spec.resources;
    let l = &spec.launch;
    let run_dir = absolute(run_dir)?;
    Ok(SbatchRequest {
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
        workdir: Some(std::env::current_dir()?.display().to_string()),
        env: vec![],
        command: vec![
            exe.display().to_string(),
            "worker".into(),
            absolute(spec_path)?.display().to_string(),
            "--run-dir".into(),
            run_dir.display().to_string(),
            "--auto-resume".into(),
        ],
    })
}

pub fn slurm(cmd: SlurmCommand) -> Result<i32> {
    match cmd {
        SlurmCommand::Render { spec, run_dir } => {
            let (job, _) = registry::load_spec(&spec)?;
            let run_dir = run_dir.unwrap_or_else(|| PathBuf::from("runs").join(&job.name));
            let script = request_for(&job, &spec, &run_dir)?.render().with_context(|| format!("{}: [resources] / [launch]", spec.display()))?;
            print!("{script}");
            Ok(0)
        }
        SlurmCommand::Submit { spec, run_dir } => {
            let (job, _) = registry::load_spec(&spec)?;
            if kiln_cluster::checkpoint::is_process_local(&job.checkpoint.store) {
                anyhow::bail!(
                    "{}: checkpoint.store = \"{}\" lives inside one process; a SLURM job needs a store every task and every requeue can reach (a shared directory or s3://)",
                    spec.display(),
                    job.checkpoint.store
                );
            }
            let run_dir = run_dir.unwrap_or_else(|| PathBuf::from("runs").join(&job.name));
            std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
            let script = request_for(&job, &spec, &run_dir)?.render().with_context(|| format!("{}: [resources] / [launch]", spec.display()))?;
            let id = SlurmClient::default().submit(&script)?;
            println!("{id}");
            Ok(0)
        }
    }
}
