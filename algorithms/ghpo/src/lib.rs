//! GHPO and its GRPO baselines: reinforcement learning of causal language models
//! with verifiable rewards, and GHPO's adaptive hints for problems the policy
//! cannot solve yet (see `../shared/reference/ghpo.md` and docs/src/algorithms/ghpo.md).
//!
//! What this crate owns so far: [`reward`], the rewards a completion earns — a
//! math answer verifier (extraction, normalisation, exact rational comparison)
//! and the think/answer format reward — and [`model`], the Qwen2 architecture
//! with Hugging Face names, loading and saving model folders — and
//! [`generate`], batched sampling with a KV cache — and [`tokenizer`]
//! (`tokenizer.json` files, training a byte-level BPE, prompt templates and
//! GHPO's hints) — and [`grpo`], the objective (group advantages, completion
//! log-probabilities, the clipped loss with KL and its aggregation modes, the
//! difficulty test) — [`ghpo`], the adaptive hint schedule of one step — and
//! [`data`] (JSONL problem sets, a leveled arithmetic generator).
//! [`trainer`] holds the kiln algorithms: `ghpo.sft` (supervised warm-up from
//! scratch), `ghpo.grpo` and `ghpo.ghpo`.
//!
//! Like every algorithm crate it must not launch processes, sync gradients or
//! write checkpoints: it implements `kiln_worker::Algorithm` and the training
//! loop does the rest.

pub mod data;
pub mod generate;
pub mod ghpo;
pub mod grpo;
pub mod model;
pub mod reward;
pub mod tokenizer;
pub mod trainer;

pub use trainer::ENTRIES;
