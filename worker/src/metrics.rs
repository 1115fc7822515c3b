//! Metrics: rank 0 appends one JSON object per line to `<run dir>/metrics.jsonl`
//! (`step`, `time_s`, `kind`, then named scalars), and, when asked, mirrors
//! progress to stdout as `@kiln {json}` lines for `kiln run`'s progress bar.

use crate::error::WorkerError;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The stdout prefix of progress lines.
pub const PROGRESS_PREFIX: &str = "@kiln ";

pub struct MetricsWriter {
    file: Option<(File, PathBuf)>,
    progress: bool,
    start: Instant,
}

impl MetricsWriter {
    /// On rank 0 opens (appends to) `<run_dir>/metrics.jsonl`; other ranks write nothing.
    pub fn open(run_dir: &Path, rank: usize, progress: bool) -> Result<Self, WorkerError> {
        let file = if rank == 0 {
            std::fs::create_dir_all(run_dir)
                .map_err(|source| WorkerError::Io { path: run_dir.display().to_string(), source })?;
            let path = run_dir.join("metrics.jsonl");
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|source| WorkerError::Io { path: path.display().to_string(), source })?;
            Some((f, path))
        } else {
            None
        };
        Ok(MetricsWriter { file, progress: progress && rank == 0, start: Instant::now() })
    }

    pub fn elapsed_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Appends one record.
    pub fn record(&mut self, kind: &str, step: u64, scalars: &BTreeMap<String, f64>) -> Result<(), WorkerError> {
        let Some((file, path)) = self.file.as_mut() else { return Ok(()) };
        let mut obj = Map::new();
        obj.insert("step".into(), json!(step));
        obj.insert("time_s".into(), json!((self.start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0));
        obj.insert("kind".into(), json!(kind));
        for (k, v) in scalars {
            obj.insert(k.clone(), if v.is_finite() { json!(v) } else { Value::Null });
        }
        let line = Value::Object(obj).to_string();
        writeln!(file, "{line}").map_err(|source| WorkerError::Io { path: path.display().to_string(), source })?;
        self.mirror(&line);
        Ok(())
    }

    /// A progress-only event (start, checkpoint, stop) for `kiln run`.
    pub fn event(&self, value: Value) {
        self.mirror(&value.to_string());
    }

    /// Progress goes to whoever reads our stdout; if they went away, training goes
    /// on (println! would panic on a closed pipe).
    fn mirror(&self, line: &str) {
        if self.progress {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{PROGRESS_PREFIX}{line}").and_then(|_| out.flush());
        }
    }
}
