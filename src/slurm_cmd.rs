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

/// The sbatch request for a job (the coordinator's SLURM launcher builds the
/// same one, plus its reporting variables).
pub fn request_for(spec: &JobSpec, spec_path: &Path, run_dir: &Path) -> Result<SbatchRequest> {
    let exe = std::env::current_exe().context("locating the kiln binary")?;
    let mut req = kiln_coordinator::launch::slurm::request(spec, &absolute(spec_path)?, &absolute(run_dir)?, &exe, vec![]);
    req.workdir = Some(std::env::current_dir()?.display().to_string());
    Ok(req)
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
