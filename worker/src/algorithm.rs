//! The [`Algorithm`] trait: what an algorithm crate implements so the training
//! loop can drive it.
//!
//! The loop owns the optimizer, gradient sync, clipping, checkpoints and metrics;
//! an algorithm owns its model, data and evaluation. Its parameters must be listed
//! in the same order on every rank, and its batches must be a pure function of
//! (seed, step, micro-step, rank, world) so that a resumed run and an N-rank run
//! see exactly the data an uninterrupted 1-rank run would.

use crate::error::WorkerError;
use kiln_cluster::Communicator;
use std::collections::BTreeMap;
use tch::{Device, Tensor};

/// Where one call happens.
pub struct StepContext<'a> {
    /// Optimizer step being computed (0-based).
    pub step: u64,
    /// Micro-batch within the step (gradient accumulation), 0-based.
    pub micro_step: usize,
    pub micro_steps: usize,
    pub rank: usize,
    pub world_size: usize,
    pub device: Device,
    pub seed: u64,
    /// For algorithms whose evaluation gathers results across ranks.
    pub comm: &'a dyn Communicator,
}

impl StepContext<'_> {
    /// This rank's samples in one micro-step of a step of `global_batch`.
    pub fn per_rank(&self, global_batch: usize) -> usize {
        global_batch / (self.world_size * self.micro_steps)
    }

    /// Where this rank's micro-batch starts among its step's `global_batch`
    /// samples: micro-step-major, then rank, so every rank and micro-step
    /// takes its own slice and the slices cover the step.
    pub fn rank_offset(&self, global_batch: usize) -> u64 {
        ((self.micro_step * self.world_size + self.rank) * self.per_rank(global_batch)) as u64
    }

    /// Where this rank's micro-batch starts in a stream that gives each step
    /// `global_batch` samples in order (step k's from k × `global_batch`):
    /// the same sample positions at any world size and after any resume.
    pub fn first_sample(&self, global_batch: usize) -> u64 {
        self.step * global_batch as u64 + self.rank_offset(global_batch)
    }
}

/// What a training micro-step reports.
#[derive(Debug, Clone, Default)]
pub struct StepOutput {
    /// The loss that was back-propagated (mean over this rank's micro-batch).
    pub loss: f64,
    /// Samples this rank processed.
    pub samples: usize,
    /// Other scalars to log (averaged over ranks by the loop).
    pub scalars: BTreeMap<String, f64>,
}

/// A VarStore's variables sorted by name: the rank-independent order
/// [`Algorithm::parameters`] asks for.
pub fn sorted_variables(vs: &tch::nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

pub trait Algorithm {
    /// Registry name, e.g. "recsys.mmoe".
    fn name(&self) -> &str;

    /// Trainable parameters, by name, in a rank-independent order.
    fn parameters(&self) -> Vec<(String, Tensor)>;

    /// Names (among [`Algorithm::parameters`]) of the tables whose gradients
    /// are row-sparse — embeddings looked up with sparse gradients. The loop
    /// keeps their gradients sparse, syncs only the rows a step touched, and
    /// the optimizer updates only those rows (lazily, see
    /// [`crate::optim::Optimizer::step`]).
    fn sparse_parameters(&self) -> Vec<String> {
        Vec::new()
    }

    /// Computes this rank's loss for one micro-batch and calls `backward` on it
    /// (gradients accumulate; the loop zeroes them between steps).
    fn train_step(&mut self, ctx: &StepContext) -> Result<StepOutput, WorkerError>;

    /// Evaluates on held-out data. All ranks call it together and must return the
    /// same numbers (gather across ranks through `ctx.comm` if the work is sharded).
    fn evaluate(&mut self, ctx: &StepContext) -> Result<BTreeMap<String, f64>, WorkerError>;

    /// Global samples per optimizer step, for throughput.
    fn global_batch(&self) -> usize;

    /// State beyond the parameters that a resumed run needs to continue the
    /// exact trajectory (e.g. the policy a batch of rollouts was sampled from,
    /// reused over several updates). It must be the same on every rank: rank 0
    /// saves it with each checkpoint, and every rank gets it back from
    /// [`Algorithm::load_state`] before training resumes.
    fn state(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    /// Takes back what [`Algorithm::state`] returned when the resumed
    /// checkpoint was written (empty if it returned nothing).
    fn load_state(&mut self, state: Vec<(String, Tensor)>) -> Result<(), WorkerError> {
        if state.is_empty() {
            Ok(())
        } else {
            Err(WorkerError::algo(self.name(), "the checkpoint holds algorithm state this algorithm does not read"))
        }
    }

    /// State that differs between ranks and a resumed run needs (e.g. a
    /// rank's replay buffer and environment). Every rank's is saved with each
    /// checkpoint (gathered to rank 0, a shard per rank) and handed back to
    /// the same rank by [`Algorithm::load_rank_state`] (empty when the
    /// checkpoint has none for it, e.g. after a change of world size).
    fn rank_state(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    fn load_rank_state(&mut self, state: Vec<(String, Tensor)>) -> Result<(), WorkerError> {
        if state.is_empty() {
            Ok(())
        } else {
            Err(WorkerError::algo(self.name(), "the checkpoint holds per-rank state this algorithm does not read"))
        }
    }

    /// Learning-rate multipliers by parameter name (others: 1), for parts
    /// trained at their own rate (an actor 10× slower than its critic).
    fn lr_scales(&self) -> Vec<(String, f64)> {
        Vec::new()
    }

    /// Writes the trained model in its ecosystem's own format to `dir` (for
    /// `kiln export`), e.g. a Hugging Face model folder.
    fn export(&self, dir: &std::path::Path) -> Result<(), WorkerError> {
        let _ = dir;
        Err(WorkerError::algo(self.name(), "this algorithm has no export format"))
    }
}
