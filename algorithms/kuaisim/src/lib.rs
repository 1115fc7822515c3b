//! KuaiSim for kiln: a user simulator trained on KuaiRand-layout logs.
//!
//! Owns the log processing ([`log`]: reader, k-core filter, sessions, splits,
//! histories, features), a generator of synthetic logs from a known user
//! model ([`synth`]), the immediate multi-behaviour user response model
//! ([`response`], built from the small Transformer pieces in [`layers`]), the
//! learned return-day model ([`retention`]), the batched environments of the
//! three levels ([`env`]), the agents trained against them ([`agents`]),
//! the LLM-powered user simulator of `kiln_recsys::llmsim` as an
//! environment ([`llm_env`]) with its DQN agent ([`dqn`]), what the
//! request-level agents play against in either simulator ([`request`]), and the trainer
//! that implements `kiln_worker::Algorithm` for it ([`trainer`]).
//! Its [`ENTRIES`] are what the `kiln` registry lists.
//!
//! It must not launch processes, sync gradients or write checkpoints: the
//! worker's training loop does that for every algorithm.

pub mod agents;
pub mod dqn;
pub mod env;
/// The Transformer pieces live in kiln-recsys (its SASRec uses them too).
pub use kiln_recsys::layers;
pub mod listcvae;
pub mod llm_env;
pub mod log;
pub mod request;
pub mod response;
pub mod retention;
pub mod synth;
pub mod trainer;

pub use trainer::ENTRIES;
pub use agents::ENTRIES as AGENTS;

/// The behaviours KuaiSim models, in its order (the log's column names).
pub const BEHAVIOURS: [&str; 7] = ["is_click", "long_view", "is_like", "is_comment", "is_forward", "is_follow", "is_hate"];
/// How many.
pub const NB: usize = 7;
