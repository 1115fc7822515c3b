//! kiln's distributed runtime, free of any model.
//!
//! This crate owns what every rank of every job needs regardless of what it
//! trains: where the process sits in the job ([`topology`]), how ranks talk
//! ([`comm`]: one [`Communicator`] trait with a single-process, an MPI and a
//! feature-gated NCCL backend, all held to one [`conformance`] suite),
//! data-parallel gradient sync ([`ddp`]), and the checkpoint store on
//! `object_store` ([`checkpoint`]).
//!
//! It must not know about models, algorithms, job specs or the coordinator:
//! those live in `kiln-worker`, `algorithms/*` and `coordinator/`, which build
//! on this crate and never the other way round.

pub mod checkpoint;
pub mod comm;
pub mod conformance;
pub mod ddp;
pub mod error;
pub mod launch;
pub mod topology;

pub use comm::{Communicator, ReduceOp};
pub use error::{CommError, StoreError};
pub use topology::Topology;
