//! Typed errors of the coordinator.

use crate::lifecycle::{Event, JobStatus};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CoordinatorError {
    #[error("job {0} does not exist")]
    NoSuchJob(i64),
    #[error("job {job} is {status}: event {event:?} does not apply")]
    InvalidTransition { job: i64, status: JobStatus, event: Event },
    #[error("job store {path}: {source}")]
    Db { path: String, #[source] source: rusqlite::Error },
    #[error("job store {path} has schema version {found}, newer than this kiln understands ({known}); upgrade kiln")]
    SchemaTooNew { path: String, found: i64, known: i64 },
    #[error("job store {path} holds an unreadable value: {detail}")]
    Corrupt { path: String, detail: String },
}
