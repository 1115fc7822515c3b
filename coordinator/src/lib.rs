//! kiln's coordinator: the long-running service that schedules, watches and
//! restarts jobs.
//!
//! This crate owns the job lifecycle ([`lifecycle`]: states, attempts, the
//! transition rules and the restart policy) and the persistent store
//! ([`store`]: SQLite with migrations), which together let the coordinator be
//! killed at any moment and pick up where it was. The HTTP API, the scheduler and
//! the launchers (local `mpirun`, SLURM through `kiln-slurm`) build on these.
//!
//! It must not train anything or link model code: ranks run `kiln worker`, and
//! the coordinator only launches and watches them.

pub mod error;
pub mod lifecycle;
pub mod store;

pub use error::CoordinatorError;
pub use lifecycle::{AttemptCause, Event, JobStatus};
pub use store::{JobId, JobRecord, NewJob, Store};
