//! What runs in every rank of a kiln job.
//!
//! This crate owns the rank's life: [`bootstrap`] (communicator, threads, device),
//! the [`spec`] of a job as a rank reads it, the [`Algorithm`] trait that
//! `algorithms/*` implement and the [`registry`] types that name them, the
//! [`train_loop`] (train / eval / checkpoint / metrics cadence, agreed stops),
//! [`optim`] (AdamW and SGD with state that checkpoints exactly, clipping),
//! [`schedule`] (learning-rate schedules), [`signals`] and the [`heartbeat`]
//! reports a rank sends to a coordinator when it has one.
//!
//! It must not launch processes, talk to SLURM or know any particular model:
//! launching is the CLI's and the coordinator's job, models are the algorithm
//! crates'.

pub mod algorithm;
pub mod bootstrap;
pub mod error;
pub mod fault;
pub mod heartbeat;
pub mod metrics;
pub mod optim;
pub mod registry;
pub mod rng;
pub mod schedule;
pub mod signals;
pub mod spec;
pub mod train_loop;

pub use algorithm::{sorted_variables, Algorithm, StepContext, StepOutput};
pub use error::WorkerError;
pub use registry::{parse_config, AlgorithmEntry, BuildContext, ConfigError};
pub use spec::JobSpec;
