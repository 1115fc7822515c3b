//! `kiln worker`: one rank of a job.

use crate::registry;
use anyhow::{Context, Result};
use clap::Args;
use kiln_cluster::launch::EXIT_PREEMPTED;
use kiln_worker::bootstrap::bootstrap;
use kiln_worker::signals::StopFlag;
use kiln_worker::train_loop::{train, Outcome, ResumeMode, RunConfig};
use kiln_worker::BuildContext;
use std::path::PathBuf;

#[derive(Args)]
pub struct WorkerArgs {
    /// The job spec.
    pub spec: PathBuf,
    /// Local directory for metrics and the summary.
    #[arg(long)]
    pub run_dir: PathBuf,
    /// Continue from the newest committed checkpoint.
    #[arg(long, conflicts_with = "auto_resume")]
    pub resume: bool,
    /// Continue from the newest committed checkpoint if there is one, else start
    /// fresh (what a requeued SLURM job or a restarted attempt needs).
    #[arg(long)]
    pub auto_resume: bool,
    /// Mirror progress to stdout as `@kiln {json}` lines.
    #[arg(long)]
    pub progress: bool,
}

pub fn worker(args: WorkerArgs) -> Result<i32> {
    let stop = StopFlag::install().context("installing signal handlers")?;
    let (spec, entry) = registry::load_spec(&args.spec)?;
    let rank = bootstrap(&spec.train.device).context("starting the rank")?;
    let world = rank.comm.world_size();
    if world > 1 {
        // A rank that fails must not wait in MPI_Finalize for peers that are blocked
        // in the next collective: leave at once, and mpirun / srun
        // (--kill-on-bad-exit) end the other ranks.
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default_hook(info);
            std::process::exit(101);
        }));
    }
    let ctx = BuildContext {
        device: rank.device,
        seed: spec.train.seed,
        global_batch: spec.train.global_batch,
        rank: rank.topology.rank,
        world_size: rank.comm.world_size(),
        micro_steps: spec.train.micro_steps,
        steps: spec.train.steps,
    };
    let mut algo = (entry.build)(&spec.algorithm_config(), &ctx).context("building the algorithm")?;
    let resume = match (args.resume, args.auto_resume) {
        (true, _) => ResumeMode::Resume,
        (_, true) => ResumeMode::Auto,
        _ => ResumeMode::Fresh,
    };
    let cfg = RunConfig { spec: &spec, run_dir: args.run_dir.clone(), resume, progress: args.progress };
    match train(&rank, algo.as_mut(), &cfg, &stop) {
        Ok(Outcome::Completed { step, .. }) => {
            if rank.topology.rank == 0 {
                tracing::info!(step, "run complete");
            }
            Ok(0)
        }
        Ok(Outcome::Preempted { step }) => {
            if rank.topology.rank == 0 {
                if args.auto_resume {
                    eprintln!("stopped at step {step}; checkpoint committed. The next start of this job resumes from it.");
                } else {
                    eprintln!("stopped at step {step}; checkpoint committed. Resume with: kiln run {} --resume", args.spec.display());
                }
            }
            Ok(EXIT_PREEMPTED)
        }
        Err(e) => {
            let e = anyhow::Error::new(e).context(format!("rank {} failed", rank.topology.rank));
            if world > 1 {
                eprintln!("error: {e:#}");
                std::process::exit(1);
            }
            Err(e)
        }
    }
}
