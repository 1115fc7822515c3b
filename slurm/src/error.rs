//! Typed errors of the SLURM layer.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum SlurmError {
    #[error("invalid hostlist '{list}': {reason}")]
    Hostlist { list: String, reason: String },
    #[error("invalid sbatch request: {0}")]
    Request(String),
    #[error("could not run `{command}`: {source}. Is SLURM installed and on PATH?")]
    Spawn { command: String, #[source] source: std::io::Error },
    #[error("`{command}` failed (exit {code:?}): {stderr}")]
    Command { command: String, code: Option<i32>, stderr: String },
    #[error("could not parse {what} from `{command}` output: {line}")]
    Parse { command: String, what: &'static str, line: String },
}
