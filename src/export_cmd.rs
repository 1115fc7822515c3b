//! `kiln export`: a committed checkpoint of a job, written in its algorithm's
//! own format (a Hugging Face model folder for the GHPO crate's trainers), so
//! other tools can load what kiln trained.

use crate::registry;
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use kiln_cluster::checkpoint::CheckpointStore;
use kiln_worker::train_loop::load_parameters;
use kiln_worker::BuildContext;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct ExportArgs {
    /// The job spec whose checkpoints to read.
    pub spec: PathBuf,
    /// The folder to create (must not exist yet).
    #[arg(long)]
    pub out: PathBuf,
    /// The committed step to export (default: the newest).
    #[arg(long)]
    pub step: Option<u64>,
}

/// A job's committed checkpoint: the spec, its algorithm entry, the step and
/// the shards (`step` None: the newest), and a one-rank CPU build context.
pub struct Commit {
    pub spec: kiln_worker::JobSpec,
    pub entry: &'static kiln_worker::AlgorithmEntry,
    pub step: u64,
    pub shards: std::collections::BTreeMap<String, kiln_cluster::checkpoint::Bytes>,
    pub ctx: BuildContext,
}

pub fn load_commit(spec_path: &Path, step: Option<u64>) -> Result<Commit> {
    let (spec, entry) = registry::load_spec(spec_path)?;
    let store = CheckpointStore::open(&spec.checkpoint.store, &spec.name)
        .with_context(|| format!("opening the checkpoint store {}", spec.checkpoint.store))?;
    let (step, shards) = match step {
        Some(step) => store.load_step(step).map(|(m, s)| (m.step, s)).with_context(|| format!("reading the commit of step {step}"))?,
        None => {
            let loaded = store.load_latest().context("reading the newest commit")?.ok_or_else(|| {
                anyhow!("run '{}' has no committed checkpoint in {}; train it first (kiln run {})", spec.name, spec.checkpoint.store, spec_path.display())
            })?;
            (loaded.manifest.step, loaded.shards)
        }
    };
    // One rank on the CPU: the model is rebuilt from the spec, then takes the
    // checkpoint's parameters.
    let ctx = BuildContext {
        device: tch::Device::Cpu,
        seed: spec.train.seed,
        global_batch: spec.train.global_batch,
        rank: 0,
        world_size: 1,
        micro_steps: spec.train.micro_steps,
        steps: spec.train.steps,
    };
    Ok(Commit { spec, entry, step, shards, ctx })
}

pub fn export(args: ExportArgs) -> Result<i32> {
    if args.out.exists() {
        bail!("{} already exists; choose a new folder for the export (nothing was written)", args.out.display());
    }
    let Commit { spec, entry, step, shards, ctx } = load_commit(&args.spec, args.step)?;
    let algo = (entry.build)(&spec.algorithm_config(), &ctx).context("building the algorithm")?;
    load_parameters(step, &shards, &algo.parameters()).context("loading the checkpoint's parameters")?;
    // Written next to the target and renamed into place: never half an export.
    let tmp = sibling(&args.out, ".partial")?;
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing the leftover {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    if let Err(e) = algo.export(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(anyhow!(e).context(format!("exporting step {step} of '{}'", spec.name)));
    }
    std::fs::rename(&tmp, &args.out).with_context(|| format!("moving the export to {}", args.out.display()))?;
    println!("exported step {step} of '{}' ({}) to {}", spec.name, entry.name, args.out.display());
    Ok(0)
}

fn sibling(path: &Path, suffix: &str) -> Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| anyhow!("--out {} has no folder name", path.display()))?;
    let mut s = name.to_os_string();
    s.push(suffix);
    Ok(path.with_file_name(s))
}
