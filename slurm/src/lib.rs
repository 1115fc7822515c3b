//! Everything SLURM, for kiln's coordinator and CLI.
//!
//! This crate owns the SLURM side of a job: rendering an sbatch script from a
//! request ([`sbatch`]), expanding hostlists ([`hostlist`]), reading the SLURM
//! environment a rank starts in ([`env`]), parsing what `squeue`, `scontrol` and
//! `sacct` print ([`state`]), and running those commands ([`client`]).
//!
//! It must not know about job specs, models or the coordinator's state: callers
//! translate their own types into an [`sbatch::SbatchRequest`] and read back
//! [`state::JobState`]s.

pub mod client;
pub mod env;
pub mod error;
pub mod hostlist;
pub mod sbatch;
pub mod state;

pub use error::SlurmError;
