//! Multi-task, multi-domain recommender models for kiln.
//!
//! Owns the tabular loader for users' own logs and its presets ([`table`]),
//! the synthetic multi-domain, multi-task CTR generator with a known ground
//! truth ([`data`]), sample files in the preset layouts ([`samples`]), the one
//! view the trainer has of either ([`source`], [`batch`]), the models
//! (Shared-Bottom, MMoE, PLE, ESMM, AITM, STAR and M3oE, [`models`]; M3oE's
//! structure search is in the [`trainer`]), ranking metrics ([`metrics`]) and
//! the trainer that implements `kiln_worker::Algorithm` ([`trainer`]), and
//! AutoAssign+ for streams with new ids, with its stream generator and
//! reader ([`autoassign`]). Its [`ENTRIES`] are what the `kiln` registry lists.
//!
//! It must not launch processes, sync gradients or write checkpoints: the worker's
//! training loop does that for every algorithm.

pub mod autoassign;
pub mod batch;
pub mod config;
pub mod data;
pub mod layers;
pub mod llmsim;
pub mod metrics;
pub mod models;
pub mod source;
pub mod samples;
pub mod table;
pub mod trainer;

pub use config::RecsysConfig;
pub use trainer::ENTRIES;
