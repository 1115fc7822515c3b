//! The training loop every rank runs: train / eval / checkpoint / metrics cadence,
//! gradient sync and accumulation, clipping, schedules, agreed stops and exact
//! resume.
//!
//! Every decision that changes which collectives run next (stop, error, resume
//! point) is agreed by all ranks first, so a problem on one rank becomes a clean
//! error on all of them instead of a hang.

use crate::algorithm::{Algorithm, StepContext};
use crate::bootstrap::Rank;
use crate::error::WorkerError;
use crate::fault;
use crate::heartbeat::Heartbeat;
use crate::metrics::MetricsWriter;
use crate::optim::{clip_grad_norm, Optimizer};
use crate::schedule::lr_at;
use crate::signals::StopFlag;
use crate::spec::{EarlyStopSpec, JobSpec};
use kiln_cluster::checkpoint::{local_run_dir, decode_tensors, encode_tensors_into, reclaim, CheckpointStore, PendingSave, SaveMeta, Shard};
use kiln_cluster::ddp::{broadcast_parameters, define_grad, define_sparse_grad, GradSync};
use kiln_cluster::{Communicator, ReduceOp};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;
use kiln_cluster::checkpoint::Bytes;
use tch::Tensor;

/// How a run is started.
pub struct RunConfig<'a> {
    pub spec: &'a JobSpec,
    /// Local directory for metrics and the summary (`runs/<name>` by default).
    pub run_dir: PathBuf,
    pub resume: ResumeMode,
    /// Mirror progress to stdout for `kiln run`'s bar.
    pub progress: bool,
}

/// What to do with checkpoints already in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeMode {
    /// Start at step 0; refuse if the run already has checkpoints (nothing is overwritten).
    Fresh,
    /// Continue from the newest verified commit; refuse if there is none.
    Resume,
    /// Continue if there is a commit, else start fresh: for launchers that restart
    /// jobs by themselves (SLURM requeue, the coordinator's restart policy).
    Auto,
}

/// How the loop ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// All steps done; final checkpoint committed.
    Completed { step: u64, eval: BTreeMap<String, f64> },
    /// A stop was requested; a checkpoint of `step` is committed and the run can resume.
    Preempted { step: u64 },
}

/// Agrees on a per-rank result: if any rank failed, all return an error (the
/// failing rank its own, the others a note naming the failure elsewhere).
fn agree<T>(comm: &dyn Communicator, local: Result<T, WorkerError>) -> Result<T, WorkerError> {
    let failed = comm.any(local.is_err())?;
    match local {
        Err(e) => Err(e),
        Ok(_) if failed => Err(WorkerError::Spec("another rank failed at the same point; see its error above".into())),
        Ok(v) => Ok(v),
    }
}

/// A 64-bit mix of the seed, step and rank for libtorch's RNG, so any randomness in
/// a step is a function of where the step is, not of what ran before it.
fn step_seed(seed: u64, step: u64, rank: usize) -> i64 {
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (rank as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 1) as i64
}

/// The shard holding [`Algorithm::state`], present only when it is non-empty.
const ALGORITHM_SHARD: &str = "algorithm.safetensors";

/// The shard of rank `r`'s own state.
fn rank_shard(r: usize) -> String {
    format!("rank-{r:05}.safetensors")
}

/// Where early stopping stands. It rides in every checkpoint's `state.json`,
/// so a resumed run stops where an uninterrupted one would (and a run that
/// has stopped stays stopped).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct EarlyStop {
    best: Option<f64>,
    best_step: u64,
    /// Evaluations in a row without improvement.
    stale: u64,
    /// The step training ended at, once it has.
    stopped_at: Option<u64>,
}

impl EarlyStop {
    /// Takes the evaluation after `done` of `total` steps; true when training
    /// must end. An evaluation without the metric does not count (a staged
    /// algorithm may report it only in a later stage); the last one must have it.
    fn update(&mut self, spec: &EarlyStopSpec, eval: &BTreeMap<String, f64>, done: u64, total: u64) -> Result<bool, WorkerError> {
        let Some(&v) = eval.get(&spec.metric) else {
            if done < total {
                return Ok(false);
            }
            let known: Vec<&str> = eval.keys().map(String::as_str).collect();
            return Err(WorkerError::Spec(format!("train.early_stop.metric '{}' is not one of the evaluation's metrics ({})", spec.metric, known.join(", "))));
        };
        let better = match self.best {
            _ if !v.is_finite() => false,
            None => true,
            Some(b) if spec.mode == "min" => v < b - spec.min_delta,
            Some(b) => v > b + spec.min_delta,
        };
        if better {
            (self.best, self.best_step, self.stale) = (Some(v), done, 0);
        } else {
            self.stale += 1;
        }
        // Running out of patience at the last step is simply the end.
        if self.stale >= spec.patience && done < total {
            self.stopped_at = Some(done);
        }
        Ok(self.stopped_at.is_some())
    }
}

struct Checkpointer<'a> {
    store: CheckpointStore,
    early_stop: EarlyStop,
    spec: &'a JobSpec,
    world: usize,
    pending: Option<PendingSave>,
    last_saved: Option<u64>,
    /// Shard buffers of the last finished upload, reused by the next snapshot.
    spare: Vec<Vec<u8>>,
}

impl Checkpointer<'_> {
    /// Rank 0 snapshots to host memory and uploads (in the background when the spec
    /// says so). At most one upload is in flight: the previous one is finished, and
    /// old checkpoints pruned, first.
    fn save(&mut self, comm: &dyn Communicator, step: u64, params: &[(String, Tensor)], opt: &Optimizer, algo: &dyn Algorithm, wait: bool) -> Result<(), WorkerError> {
        if self.last_saved == Some(step) {
            return if wait { self.finish() } else { Ok(()) };
        }
        self.last_saved = Some(step);
        // Every rank's own state (replay buffers, …), gathered for rank 0.
        let own = algo.rank_state();
        let own = if own.is_empty() { Vec::new() } else { encode_tensors_into(&own, Vec::new())?.to_vec() };
        let per_rank = comm.all_gather_bytes(&own)?;
        if comm.rank() != 0 {
            return Ok(());
        }
        self.finish()?;
        let state = json!({ "step": step, "seed": self.spec.train.seed, "world_size": self.world, "samples_seen": step * self.spec.train.global_batch as u64, "early_stop": self.early_stop });
        let mut spare = std::mem::take(&mut self.spare).into_iter();
        let mut shards = vec![
            Shard { name: "model.safetensors".into(), data: encode_tensors_into(params, spare.next().unwrap_or_default())? },
            Shard {
                name: "optimizer.safetensors".into(),
                data: encode_tensors_into(&opt.state_tensors(), spare.next().unwrap_or_default())?,
            },
            Shard { name: "state.json".into(), data: state.to_string().into_bytes().into() },
        ];
        let algo_state = algo.state();
        if !algo_state.is_empty() {
            shards.push(Shard { name: ALGORITHM_SHARD.into(), data: encode_tensors_into(&algo_state, Vec::new())? });
        }
        for (r, bytes) in per_rank.into_iter().enumerate().filter(|(_, b)| !b.is_empty()) {
            shards.push(Shard { name: rank_shard(r), data: bytes.into() });
        }
        let meta = SaveMeta { step, world_size: self.world, spec_hash: self.spec.hash() };
        if self.spec.checkpoint.async_upload && !wait {
            self.pending = Some(self.store.save_async(meta, shards));
        } else {
            self.store.save(meta, shards)?;
            self.store.retain(self.spec.checkpoint.keep)?;
        }
        Ok(())
    }

    /// Waits for the upload in flight, then applies retention.
    fn finish(&mut self) -> Result<(), WorkerError> {
        if let Some(p) = self.pending.take() {
            self.spare = reclaim(p.wait()?);
            self.store.retain(self.spec.checkpoint.keep)?;
        }
        Ok(())
    }
}

/// Runs the job on this rank until it completes or is stopped.
pub fn train(rank: &Rank, algo: &mut dyn Algorithm, cfg: &RunConfig, stop: &StopFlag) -> Result<Outcome, WorkerError> {
    let spec = cfg.spec;
    let comm = rank.comm.as_ref();
    let (me, world) = (comm.rank(), comm.world_size());
    spec.check_world(world).map_err(WorkerError::Spec)?;
    let total = spec.train.steps;
    let micro_steps = spec.train.micro_steps;

    let mut metrics = agree(comm, MetricsWriter::open(&cfg.run_dir, me, cfg.progress))?;

    // The store must work before any training happens.
    let store = agree(comm, CheckpointStore::open(&spec.checkpoint.store, &spec.name).map_err(WorkerError::from))?;
    agree(comm, if me == 0 { store.check_writable().map_err(WorkerError::from) } else { Ok(()) })?;

    let named = algo.parameters();
    let mut params: Vec<Tensor> = named.iter().map(|(_, t)| t.shallow_clone()).collect();
    let sparse_names = algo.sparse_parameters();
    let sparse: Vec<usize> = named.iter().enumerate().filter(|(_, (n, _))| sparse_names.contains(n)).map(|(i, _)| i).collect();
    for (i, p) in params.iter().enumerate() {
        if sparse.contains(&i) {
            define_sparse_grad(p)?;
        } else {
            define_grad(p)?;
        }
    }
    broadcast_parameters(comm, &mut params)?;
    let sync = GradSync::with_sparse(&params, (spec.train.bucket_mb * 1024.0 * 1024.0) as usize, &sparse);
    let scales: BTreeMap<String, f64> = algo.lr_scales().into_iter().collect();
    let mut opt = Optimizer::new(spec.train.optimizer.clone(), params.iter().map(|t| t.shallow_clone()).collect())
        .with_scales(named.iter().map(|(n, _)| scales.get(n).copied().unwrap_or(1.0)).collect());

    // Resume point, agreed by all ranks.
    let (start, corrupt, early_stop) = resume_point(comm, &store, spec, cfg.resume, &named, &mut opt, algo)?;
    // Once every rank has read its resume point, corrupt newer commits are set aside
    // (kept as COMMIT.corrupt) so this run can commit those steps again.
    comm.barrier()?;
    if me == 0 {
        for step in corrupt {
            store.quarantine(step)?;
        }
    }
    // A run that stopped early ends where it stopped, whatever train.steps says.
    let total = if spec.train.early_stop.is_some() { early_stop.stopped_at.unwrap_or(total) } else { total };
    let mut ckpt = Checkpointer { store, early_stop, spec, world, pending: None, last_saved: Some(start).filter(|&s| s > 0), spare: Vec::new() };
    metrics.event(json!({ "event": "start", "steps": total, "start_step": start, "world": world, "backend": comm.backend() }));
    tracing::info!(start_step = start, total, world, "training");

    let mut window_loss = 0.0f64;
    let mut window_micro = 0usize;
    // The algorithm's own scalars (accuracy, hint shares, …): summed over the
    // window's micro-steps, averaged over micro-steps and ranks when logged.
    let mut window_scalars: BTreeMap<String, f64> = BTreeMap::new();
    let mut window_start = Instant::now();
    let mut window_steps = 0u64;
    let mut last_eval = BTreeMap::new();
    let mut grad_norm = f64::NAN;
    let mut heartbeat = Heartbeat::start(me, world, rank.clock.clone());

    let ctx_at = |step: u64, micro_step: usize| StepContext {
        step,
        micro_step,
        micro_steps,
        rank: me,
        world_size: world,
        device: rank.device,
        seed: spec.train.seed,
        comm,
    };

    let mut stopped_early: Option<u64> = None;
    for step in start..total {
        let step_start = Instant::now();
        if let Some(h) = heartbeat.as_mut() {
            h.step_started();
        }
        fault::during_step(me);
        opt.zero_grad();
        for micro in 0..micro_steps {
            tch::manual_seed(step_seed(spec.train.seed, step * micro_steps as u64 + micro as u64, me));
            let out = algo.train_step(&ctx_at(step, micro))?;
            window_loss += out.loss;
            window_micro += 1;
            for (k, v) in out.scalars {
                *window_scalars.entry(k).or_insert(0.0) += v;
            }
        }
        // Accumulated micro-batch gradients are sums of means: make them one mean.
        if micro_steps > 1 {
            let _g = tch::no_grad_guard();
            for p in &params {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(1.0 / micro_steps as f64);
                }
            }
        }
        sync.sync(comm, &params)?;
        if let Some(max) = spec.train.clip_grad_norm {
            grad_norm = clip_grad_norm(&params, max);
        }
        let lr = lr_at(&spec.train.schedule, spec.train.optimizer.lr(), step, total);
        opt.step(lr);
        let done = step + 1;
        window_steps += 1;
        if let Some(h) = heartbeat.as_mut() {
            h.step_done(done, step_start.elapsed().as_secs_f64());
        }

        if done % spec.train.log_every == 0 || done == total {
            // Every rank runs the same algorithm, so the keys agree; the sums ride
            // along in the same reduction as the loss.
            let mut sums = vec![window_loss, window_micro as f64];
            sums.extend(window_scalars.values().copied());
            let mut t = Tensor::from_slice(&sums);
            comm.all_reduce(&mut t, ReduceOp::Sum)?;
            let v = Vec::<f64>::try_from(&t)?;
            let secs = window_start.elapsed().as_secs_f64().max(1e-9);
            let mut s = BTreeMap::new();
            s.insert("loss".into(), v[0] / v[1].max(1.0));
            s.insert("lr".into(), lr);
            s.insert("samples_per_s".into(), (window_steps as f64 * algo.global_batch() as f64) / secs);
            s.insert("steps".into(), total as f64);
            if spec.train.clip_grad_norm.is_some() {
                s.insert("grad_norm".into(), grad_norm);
            }
            for (i, k) in window_scalars.keys().enumerate() {
                s.insert(k.clone(), v[2 + i] / v[1].max(1.0));
            }
            window_scalars.clear();
            if let Some(h) = heartbeat.as_ref().filter(|_| me == 0) {
                h.metrics(json!(s));
            }
            metrics.record("train", done, &s)?;
            window_loss = 0.0;
            window_micro = 0;
            window_steps = 0;
            window_start = Instant::now();
        }

        if (spec.train.eval_every > 0 && done % spec.train.eval_every == 0) || done == total {
            last_eval = evaluate(algo, &ctx_at(step, 0), &mut metrics, done)?;
            // Every rank sees the same evaluation, so they all stop together.
            if let Some(es) = &spec.train.early_stop {
                if ckpt.early_stop.update(es, &last_eval, done, total)? {
                    let e = &ckpt.early_stop;
                    tracing::info!(step = done, best_step = e.best_step, "early stop: {} has not improved for {} evaluations", es.metric, es.patience);
                    metrics.event(json!({ "event": "early_stop", "step": done, "metric": es.metric, "best": e.best, "best_step": e.best_step }));
                    stopped_early = Some(done);
                    break;
                }
            }
        }

        if spec.checkpoint.every > 0 && done % spec.checkpoint.every == 0 && done < total {
            ckpt.save(comm, done, &named, &opt, &*algo, false)?;
            metrics.event(json!({ "event": "checkpoint", "step": done }));
        }

        fault::after_step(me, done, stop);
        if comm.any(stop.raised())? && done < total {
            tracing::warn!(step = done, "stop requested: checkpointing and exiting");
            ckpt.save(comm, done, &named, &opt, &*algo, true)?;
            if me == 0 {
                publish_artifacts(&ckpt.store, cfg)?;
            }
            comm.barrier()?;
            metrics.event(json!({ "event": "stopped", "step": done }));
            return Ok(Outcome::Preempted { step: done });
        }
    }

    let total = stopped_early.unwrap_or(total);
    if last_eval.is_empty() {
        // Resumed at the very end (e.g. a requeue after the final commit): evaluate
        // once so the summary is complete.
        last_eval = evaluate(algo, &ctx_at(total.saturating_sub(1), 0), &mut metrics, total)?;
    }
    // Every rank's peak resident memory so far (training, evaluations, earlier
    // checkpoints; not the final one's encoding), for the summary.
    let peaks: Vec<Option<f64>> = comm.all_gather_bytes(&peak_rss_mb().unwrap_or(f64::NAN).to_le_bytes())?.iter().map(|b| b.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(f64::from_le_bytes).filter(|x| x.is_finite())).collect();
    ckpt.save(comm, total, &named, &opt, &*algo, true)?;
    comm.barrier()?;
    if me == 0 {
        write_summary(cfg, spec, world, &last_eval, metrics.elapsed_s(), &ckpt.early_stop, &peaks)?;
        publish_artifacts(&ckpt.store, cfg)?;
    }
    metrics.event(json!({ "event": "done", "step": total }));
    Ok(Outcome::Completed { step: total, eval: last_eval })
}

/// Evaluates without gradients and records the result after `done` steps.
fn evaluate(
    algo: &mut dyn Algorithm,
    ctx: &StepContext,
    metrics: &mut MetricsWriter,
    done: u64,
) -> Result<BTreeMap<String, f64>, WorkerError> {
    let _g = tch::no_grad_guard();
    let eval = algo.evaluate(ctx)?;
    metrics.record("eval", done, &eval)?;
    Ok(eval)
}

/// Rank 0's choice of where to start: `None` for step 0, or the newest verified
/// commit with its shards, plus the newer commits that failed verification.
fn choose_start(
    store: &CheckpointStore,
    spec: &JobSpec,
    mode: ResumeMode,
    world: usize,
) -> Result<(Option<(u64, BTreeMap<String, Bytes>)>, Vec<u64>), WorkerError> {
    let store_desc = format!("{}/{}", spec.checkpoint.store, spec.name);
    if mode == ResumeMode::Fresh {
        // Only the commit list is needed to refuse; nothing is downloaded.
        return match store.committed_steps()?.first() {
            Some(&step) => Err(WorkerError::RunExists { run: spec.name.clone(), store: store_desc, step }),
            None => Ok((None, vec![])),
        };
    }
    let Some(loaded) = store.load_latest()? else {
        return if mode == ResumeMode::Resume {
            Err(WorkerError::NothingToResume { run: spec.name.clone(), store: store_desc })
        } else {
            Ok((None, vec![]))
        };
    };
    let step = loaded.manifest.step;
    for (skipped, why) in &loaded.skipped {
        tracing::warn!(step = skipped, reason = %why, "skipped a corrupt checkpoint");
        eprintln!("warning: checkpoint step {skipped} is corrupt ({why}); resuming from step {step} instead");
    }
    if loaded.manifest.world_size != world {
        return Err(WorkerError::WorldMismatch { step, ckpt_world: loaded.manifest.world_size, world });
    }
    if loaded.manifest.spec_hash != spec.hash() {
        tracing::warn!(step, "the job spec changed since this checkpoint was written");
    }
    if step > spec.train.steps {
        return Err(WorkerError::BadCheckpoint { step, reason: format!("it is past train.steps ({})", spec.train.steps) });
    }
    let corrupt = loaded.skipped.iter().map(|(s, _)| *s).collect();
    Ok((Some((step, loaded.shards)), corrupt))
}

/// Loads a checkpoint's model, optimizer and algorithm-state shards into this
/// rank's tensors and algorithm.
fn restore(
    rank: usize,
    step: u64,
    shards: &BTreeMap<String, Bytes>,
    named: &[(String, Tensor)],
    opt: &mut Optimizer,
    algo: &mut dyn Algorithm,
) -> Result<EarlyStop, WorkerError> {
    let bad = |reason: String| WorkerError::BadCheckpoint { step, reason };
    load_parameters(step, shards, named)?;
    let optim = shards.get("optimizer.safetensors").ok_or_else(|| bad("no optimizer shard".into()))?;
    opt.load_state(&decode_tensors(optim)?).map_err(bad)?;
    let state = match shards.get(ALGORITHM_SHARD) {
        Some(bytes) => decode_tensors(bytes)?,
        None => Vec::new(),
    };
    algo.load_state(state)?;
    let own = match shards.get(&rank_shard(rank)) {
        Some(bytes) => decode_tensors(bytes)?,
        None => Vec::new(),
    };
    algo.load_rank_state(own)?;
    // Commits written before early stopping existed have no such entry.
    let early = shards
        .get("state.json")
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .and_then(|v| serde_json::from_value::<EarlyStop>(v.get("early_stop")?.clone()).ok())
        .unwrap_or_default();
    tracing::info!(step, "resumed");
    Ok(early)
}

/// Copies a checkpoint's model shard into `named`, by name and shape.
pub fn load_parameters(step: u64, shards: &BTreeMap<String, Bytes>, named: &[(String, Tensor)]) -> Result<(), WorkerError> {
    let bad = |reason: String| WorkerError::BadCheckpoint { step, reason };
    let model = shards.get("model.safetensors").ok_or_else(|| bad("no model shard".into()))?;
    let saved: BTreeMap<String, Tensor> = decode_tensors(model)?.into_iter().collect();
    let _g = tch::no_grad_guard();
    for (name, p) in named {
        let t = saved.get(name).ok_or_else(|| bad(format!("parameter '{name}' is missing (different model?)")))?;
        if t.size() != p.size() {
            return Err(bad(format!("parameter '{name}' has shape {:?}, the model has {:?}", t.size(), p.size())));
        }
        let mut p = p.shallow_clone();
        p.f_copy_(&t.to_kind(p.kind()).to_device(p.device()))?;
    }
    Ok(())
}

/// Where every rank starts: rank 0 chooses, broadcasts the step, and each rank
/// loads exactly that commit (rank 0 from what it already read). Returns the step
/// and the corrupt commits rank 0 skipped.
fn resume_point(
    comm: &dyn Communicator,
    store: &CheckpointStore,
    spec: &JobSpec,
    mode: ResumeMode,
    named: &[(String, Tensor)],
    opt: &mut Optimizer,
    algo: &mut dyn Algorithm,
) -> Result<(u64, Vec<u64>, EarlyStop), WorkerError> {
    let me = comm.rank();
    let choice = if me == 0 { choose_start(store, spec, mode, comm.world_size()) } else { Ok((None, vec![])) };
    let (chosen, corrupt) = agree(comm, choice)?;
    let mut t = Tensor::from_slice(&[chosen.as_ref().map(|(s, _)| *s as i64).unwrap_or(-1)]);
    comm.broadcast(&mut t, 0)?;
    let step = t.int64_value(&[0]);
    if step < 0 {
        return Ok((0, corrupt, EarlyStop::default()));
    }
    let step = step as u64;
    let local = match chosen {
        Some((_, shards)) => restore(me, step, &shards, named, opt, algo),
        None => store.load_step(step).map_err(WorkerError::from).and_then(|(_, shards)| restore(me, step, &shards, named, opt, algo)),
    };
    let early = agree(comm, local)?;
    Ok((step, corrupt, early))
}

/// Copies the run's metrics and summary next to its checkpoints when the store is
/// somewhere else (S3, another directory), so any node can see how a run went.
fn publish_artifacts(store: &CheckpointStore, cfg: &RunConfig) -> Result<(), WorkerError> {
    let here = cfg.run_dir.canonicalize().ok();
    let there = local_run_dir(&cfg.spec.checkpoint.store, &cfg.spec.name).and_then(|d| d.canonicalize().ok());
    if here.is_some() && here == there {
        return Ok(());
    }
    for name in ["metrics.jsonl", "summary.json"] {
        if let Ok(bytes) = std::fs::read(cfg.run_dir.join(name)) {
            store.put_object(name, bytes.into())?;
        }
    }
    Ok(())
}

/// This process's peak resident set (VmHWM) in MiB, where the OS reports it (Linux).
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn write_summary(cfg: &RunConfig, spec: &JobSpec, world: usize, eval: &BTreeMap<String, f64>, wall_s: f64, early: &EarlyStop, peak_rss_mb: &[Option<f64>]) -> Result<(), WorkerError> {
    let mut summary = json!({
        "name": spec.name,
        "algorithm": spec.algorithm_name(),
        "world_size": world,
        "steps": spec.train.steps,
        "global_batch": spec.train.global_batch,
        "wall_s": wall_s,
        "final_eval": eval,
        "peak_rss_mb": peak_rss_mb,
    });
    if let Some(es) = &spec.train.early_stop {
        summary["early_stop"] = json!({ "metric": es.metric, "best": early.best, "best_step": early.best_step, "stopped_at": early.stopped_at });
    }
    let path = cfg.run_dir.join("summary.json");
    let body = serde_json::to_string_pretty(&summary).unwrap_or_default();
    std::fs::write(&path, body).map_err(|source| WorkerError::Io { path: path.display().to_string(), source })
}
