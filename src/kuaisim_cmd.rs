//! `kiln kuaisim`: helpers around the KuaiSim simulator (kiln-kuaisim).

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use kiln_kuaisim::synth::{self, Shape};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum KuaisimCommand {
    /// Write synthetic logs in the KuaiRand-Pure layout (log, user and video
    /// features) from a known user model, to try the simulator without the real data.
    Synth(SynthArgs),
}

#[derive(Args)]
pub struct SynthArgs {
    /// The folder to write log_standard_pure.csv, user_features_pure.csv and video_features_basic_pure.csv into.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 300)]
    pub users: u64,
    #[arg(long, default_value_t = 150)]
    pub items: u64,
    #[arg(long, default_value_t = 40)]
    pub days: u64,
    /// Most impressions per session.
    #[arg(long, default_value_t = 20)]
    pub session_max: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The next-day return chance is return-base + return-effect × the session's click rate.
    #[arg(long, default_value_t = 0.35)]
    pub return_base: f64,
    #[arg(long, default_value_t = 0.5)]
    pub return_effect: f64,
}

pub fn kuaisim(c: KuaisimCommand) -> Result<i32> {
    match c {
        KuaisimCommand::Synth(a) => {
            anyhow::ensure!(a.users > 0 && a.items > 0 && a.days > 0 && a.session_max > 0, "--users, --items, --days and --session-max must be at least 1");
            std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
            anyhow::ensure!(a.return_base.is_finite() && a.return_effect.is_finite(), "--return-base and --return-effect must be numbers");
            let shape = Shape { users: a.users, items: a.items, days: a.days, session_max: a.session_max, seed: a.seed, return_base: a.return_base, return_effect: a.return_effect };
            let (log, _) = synth::write(&a.out, shape).with_context(|| format!("writing into {}", a.out.display()))?;
            println!("{}", log.display());
            Ok(0)
        }
    }
}
