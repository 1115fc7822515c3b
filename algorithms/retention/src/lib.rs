//! Retention-aware recommenders on the KuaiSim simulator.
//!
//! Owns the agents that optimise users' return, trained against the
//! cross-session environments of `kiln-kuaisim` and compared with its
//! cross-session baselines (CEM, TD3, RLUR) under the same protocol:
//! GFN4Retention ([`gfn`]), whose probabilistic flows match the retention
//! reward with the immediate feedback folded in, and DT4IER ([`dt4ier`]), a
//! decision transformer that generates lists conditioned on immediate and
//! retention returns-to-go, trained on trajectories generated from the
//! simulator.
//!
//! It must not define environments or the simulator (those are
//! `kiln-kuaisim`'s), launch processes, sync gradients or write checkpoints:
//! the worker's training loop does that for every algorithm.

pub mod dt4ier;
pub mod gfn;

use kiln_worker::AlgorithmEntry;

/// The registry entries this crate provides.
pub const ENTRIES: &[AlgorithmEntry] = &[
    AlgorithmEntry {
        name: "retention.gfn4retention",
        summary: "GFN4Retention: cross-session retention as a generative flow — ranking-fusion actor, state flow, backward policy, detailed balance with immediate feedback — against a KuaiSim simulator",
        validate: gfn::validate,
        build: gfn::build,
    },
    AlgorithmEntry {
        name: "retention.dt4ier",
        summary: "DT4IER: a decision transformer generating recommendation lists conditioned on immediate and retention returns-to-go (user reward weights, meta-embedding returns, contrastive action term), trained on simulator trajectories",
        validate: dt4ier::validate,
        build: dt4ier::build,
    },
];
