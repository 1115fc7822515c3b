//! Running SLURM's commands: submit, query, cancel.

use crate::error::SlurmError;
use crate::state::{self, AcctEntry, JobState, QueueEntry};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Runs `sbatch`, `squeue`, `scontrol`, `sacct` and `scancel`, from `bin_dir` when
/// given (else from `PATH`).
#[derive(Debug, Clone, Default)]
pub struct SlurmClient {
    pub bin_dir: Option<PathBuf>,
}

impl SlurmClient {
    fn cmd(&self, name: &str) -> Command {
        match &self.bin_dir {
            Some(d) => Command::new(d.join(name)),
            None => Command::new(name),
        }
    }

    fn run(&self, name: &str, args: &[&str], stdin: Option<&str>) -> Result<String, SlurmError> {
        let command = format!("{name} {}", args.join(" "));
        let mut c = self.cmd(name);
        c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        c.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        let mut child = c.spawn().map_err(|source| SlurmError::Spawn { command: command.clone(), source })?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).map_err(|source| SlurmError::Spawn { command: command.clone(), source })?;
        }
        let out = child.wait_with_output().map_err(|source| SlurmError::Spawn { command: command.clone(), source })?;
        if !out.status.success() {
            return Err(SlurmError::Command {
                command,
                code: out.status.code(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Submits a script (given as text, fed to `sbatch --parsable` on stdin).
    pub fn submit(&self, script: &str) -> Result<u64, SlurmError> {
        let out = self.run("sbatch", &["--parsable"], Some(script))?;
        state::parse_sbatch_parsable(&out)
    }

    /// The job's queue entries (several for job arrays); empty once it left the queue.
    pub fn queue(&self, job_id: u64) -> Result<Vec<QueueEntry>, SlurmError> {
        let jobs = format!("--jobs={job_id}");
        let format = format!("--format={}", state::SQUEUE_FORMAT);
        match self.run("squeue", &["--noheader", &jobs, &format], None) {
            Ok(out) => state::parse_squeue(&out),
            // squeue refuses ids it no longer knows: the job has left the queue.
            Err(SlurmError::Command { stderr, .. }) if stderr.contains("Invalid job id") => Ok(vec![]),
            Err(e) => Err(e),
        }
    }

    /// `scontrol show job`, as key=value pairs.
    pub fn show(&self, job_id: u64) -> Result<BTreeMap<String, String>, SlurmError> {
        let id = job_id.to_string();
        Ok(state::parse_scontrol(&self.run("scontrol", &["show", "job", &id], None)?))
    }

    /// Accounting records (needs slurmdbd; errors where accounting is off).
    pub fn accounting(&self, job_id: u64) -> Result<Vec<AcctEntry>, SlurmError> {
        let jobs = format!("--jobs={job_id}");
        let format = format!("--format={}", state::SACCT_FORMAT);
        state::parse_sacct(&self.run("sacct", &["--noheader", "--parsable2", &jobs, &format], None)?)
    }

    /// The job's state from whichever source still knows it: the queue, then the
    /// controller's memory of finished jobs, then accounting.
    pub fn state(&self, job_id: u64) -> Result<JobState, SlurmError> {
        let q = self.queue(job_id)?;
        if let Some(e) = q.iter().find(|e| e.job_id == job_id.to_string()).or(q.first()) {
            return Ok(e.state.clone());
        }
        if let Ok(m) = self.show(job_id) {
            if let Some(s) = m.get("JobState") {
                return Ok(JobState::parse(s));
            }
        }
        let acct = self.accounting(job_id)?;
        acct.iter()
            .find(|e| e.job_id == job_id.to_string())
            .map(|e| e.state.clone())
            .ok_or_else(|| SlurmError::Parse { command: "sacct".into(), what: "job state", line: format!("no record of job {job_id}") })
    }

    /// Cancels this user's jobs named `name` (for jobs submitted whose id was never
    /// learnt, e.g. when the submitter crashed right after `sbatch`).
    pub fn cancel_named(&self, name: &str) -> Result<(), SlurmError> {
        let n = format!("--name={name}");
        self.run("scancel", &[&n], None)?;
        Ok(())
    }

    /// Cancels a job, or with `signal` only signals its batch shell (e.g. "USR1").
    pub fn cancel(&self, job_id: u64, signal: Option<&str>) -> Result<(), SlurmError> {
        let id = job_id.to_string();
        match signal {
            Some(sig) => {
                let s = format!("--signal={sig}");
                self.run("scancel", &["--batch", &s, &id], None)?;
            }
            None => {
                self.run("scancel", &[&id], None)?;
            }
        }
        Ok(())
    }
}
