//! Multi-task, multi-domain recommender models for kiln.
//!
//! Owns the models (Shared-Bottom and MMoE, [`models`]), the synthetic
//! multi-domain, multi-task CTR generator with a known ground truth ([`data`]),
//! ranking metrics ([`metrics`]) and the trainer that implements
//! `kiln_worker::Algorithm` ([`trainer`]). Its [`ENTRIES`] are what the `kiln`
//! registry lists.
//!
//! It must not launch processes, sync gradients or write checkpoints: the worker's
//! training loop does that for every algorithm.

pub mod config;
pub mod data;
pub mod metrics;
pub mod models;
pub mod trainer;

pub use config::RecsysConfig;
pub use trainer::ENTRIES;
