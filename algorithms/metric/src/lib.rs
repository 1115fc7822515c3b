//! Deep metric learning with learned Bregman divergences.
//!
//! Owns the `metric.dml` trainer: an embedding network whose similarity is a
//! Bregman divergence D_φ of a learned input-convex network φ
//! ([`divergence`]), or a fixed squared-Euclidean or cosine divergence as
//! the baselines; the contrastive, triplet and proxy losses written on any
//! of them ([`losses`]); retrieval metrics ([`retrieval`]); and labelled
//! feature data from local CSV, NPY or PNG-folder files ([`data`]).
//!
//! It must not launch processes, sync gradients or write checkpoints: the
//! worker's training loop does that for every algorithm.

pub mod data;
pub mod divergence;
pub mod losses;
pub mod retrieval;
pub mod trainer;

use kiln_worker::AlgorithmEntry;

/// The registry entries this crate provides.
pub const ENTRIES: &[AlgorithmEntry] = &[trainer::ENTRY];
