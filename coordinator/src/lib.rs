//! kiln's coordinator: the long-running service that accepts, schedules,
//! launches, watches and restarts jobs.
//!
//! What it owns: the job lifecycle ([`lifecycle`]: states, attempts, the
//! transition rules and the restart policy), the persistent store ([`store`]:
//! SQLite with migrations), submission checks ([`plan`]), gang scheduling against
//! this host ([`schedule`]), the launchers ([`launch`]: local `mpirun` under a
//! supervisor process, SLURM through `kiln-slurm`), the watchdog ([`watch`]:
//! heartbeats, hangs, stragglers), the service that ties them together
//! ([`service`]), its HTTP API ([`api`], [`auth`]) and a client for it
//! ([`client`]). Killing the coordinator at any moment loses nothing: the store
//! says what was running where, and [`service::Coordinator::recover`] picks up.
//!
//! It must not train anything or load models: ranks run `kiln worker`, and the
//! coordinator only launches, watches and stops them. It reads job specs
//! (`kiln-worker`'s spec types) but algorithm checks come from the binary.

pub mod api;
pub mod auth;
pub mod client;
pub mod config;
pub mod error;
pub mod launch;
pub mod lifecycle;
pub mod plan;
pub mod schedule;
pub mod service;
pub mod store;
pub mod watch;

pub use config::{Capacity, Config};
pub use error::CoordinatorError;
pub use lifecycle::{AttemptCause, Event, JobStatus};
pub use service::Coordinator;
pub use store::{JobId, JobRecord, NewJob, Store};

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    coordinator: std::sync::Arc<Coordinator>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, api::router(coordinator)).with_graceful_shutdown(shutdown).await
}
