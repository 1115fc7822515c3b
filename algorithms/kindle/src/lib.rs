//! KINDLE and the BEELINE benchmark it is measured on: gene regulatory network
//! (GRN) inference from single-cell expression ordered by pseudotime (see
//! `../shared/reference/kindle.md` and docs/src/algorithms/kindle.md).
//!
//! What this crate owns so far: [`beeline`], the BEELINE file formats
//! (expression matrices streamed from CSV/TSV, pseudotime with several
//! trajectories, reference networks with or without signs, TF lists, ranked
//! edge lists) with checks that name what does not match; [`metrics`], the
//! evaluation exactly as BEELINE defines it (AUROC, AUPRC and its ratio, early
//! precision ratio; all pairs or TF-sourced pairs) and KINDLE's top-k protocol,
//! each named; [`baselines`], the reference predictors (random, prior-random,
//! absolute Pearson and Spearman correlation); [`prepare`], gene selection,
//! normalisation, pseudotime-ordered series and the windows the models read;
//! [`simulate`], a SERGIO-style
//! generator of expression with a known network (master regulators, Hill
//! regulation, chemical Langevin dynamics, differentiation trajectories,
//! technical noise) written as BEELINE folders; [`model`], the teacher and
//! student transformer with the masked MSE and the four distillation losses;
//! [`trainer`], `kindle.teacher` and `kindle.student` as kiln algorithms with
//! the attention readout. Knockouts and the reproduction come next (issue 5).
//!
//! Like every algorithm crate it must not launch processes, sync gradients or
//! write checkpoints.

pub mod baselines;
pub mod beeline;
pub mod metrics;
pub mod model;
pub mod prepare;
pub mod simulate;
pub mod trainer;

pub use trainer::ENTRIES;
