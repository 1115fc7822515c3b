//! Job states and the parsing of `sbatch --parsable`, `squeue`, `scontrol show
//! job` and `sacct` output.

use crate::error::SlurmError;
use std::collections::BTreeMap;

/// A SLURM job state (the long names `squeue %T`, `scontrol` and `sacct` print).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    Pending,
    Configuring,
    Running,
    Completing,
    Suspended,
    Requeued,
    Completed,
    Failed,
    Cancelled,
    Timeout,
    Preempted,
    NodeFail,
    OutOfMemory,
    BootFail,
    Deadline,
    Other(String),
}

impl JobState {
    /// Parses a state, ignoring decorations such as `CANCELLED by 0` or a trailing `+`.
    pub fn parse(s: &str) -> JobState {
        let word = s.split_whitespace().next().unwrap_or("").trim_end_matches('+');
        match word {
            "PENDING" | "PD" => JobState::Pending,
            "CONFIGURING" | "CF" => JobState::Configuring,
            "RUNNING" | "R" => JobState::Running,
            "COMPLETING" | "CG" => JobState::Completing,
            "SUSPENDED" | "S" => JobState::Suspended,
            "REQUEUED" | "RQ" | "REQUEUE_HOLD" | "REQUEUE_FED" => JobState::Requeued,
            "COMPLETED" | "CD" => JobState::Completed,
            "FAILED" | "F" => JobState::Failed,
            "CANCELLED" | "CA" => JobState::Cancelled,
            "TIMEOUT" | "TO" => JobState::Timeout,
            "PREEMPTED" | "PR" => JobState::Preempted,
            "NODE_FAIL" | "NF" => JobState::NodeFail,
            "OUT_OF_MEMORY" | "OOM" => JobState::OutOfMemory,
            "BOOT_FAIL" | "BF" => JobState::BootFail,
            "DEADLINE" | "DL" => JobState::Deadline,
            other => JobState::Other(other.to_string()),
        }
    }

    /// Whether the job will not run again by itself.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            JobState::Completed
                | JobState::Failed
                | JobState::Cancelled
                | JobState::Timeout
                | JobState::NodeFail
                | JobState::OutOfMemory
                | JobState::BootFail
                | JobState::Deadline
        )
    }
}

/// `sbatch --parsable` prints `<id>` or `<id>;<cluster>`.
pub fn parse_sbatch_parsable(out: &str) -> Result<u64, SlurmError> {
    let line = out.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    line.split(';')
        .next()
        .and_then(|id| id.trim().parse().ok())
        .ok_or_else(|| SlurmError::Parse { command: "sbatch --parsable".into(), what: "job id", line: line.to_string() })
}

/// One line of `squeue --noheader --format=%i|%T|%r|%N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    /// `1234`, `1234_7` (array task) or `1234_[1-3]` (pending array tasks).
    pub job_id: String,
    pub state: JobState,
    pub reason: String,
    pub nodes: String,
}

/// The `squeue` format [`parse_squeue`] reads.
pub const SQUEUE_FORMAT: &str = "%i|%T|%r|%N";

pub fn parse_squeue(out: &str) -> Result<Vec<QueueEntry>, SlurmError> {
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|line| {
            let f: Vec<&str> = line.splitn(4, '|').collect();
            if f.len() < 3 || f[0].is_empty() {
                return Err(SlurmError::Parse { command: "squeue".into(), what: "queue entry", line: line.to_string() });
            }
            Ok(QueueEntry {
                job_id: f[0].to_string(),
                state: JobState::parse(f[1]),
                reason: f[2].to_string(),
                nodes: f.get(3).map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

/// `scontrol show job <id>` as key=value pairs (the first job if several).
/// Values run to the next ` Key=`; `Command=` and similar may hold spaces.
pub fn parse_scontrol(out: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let first_job = out.split("\n\n").next().unwrap_or("");
    for line in first_job.lines() {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        let mut i = 0;
        while i < tokens.len() {
            if let Some((k, v)) = tokens[i].split_once('=') {
                let mut value = v.to_string();
                // Glue following tokens that are not `Key=` onto this value.
                while i + 1 < tokens.len() && !is_key(tokens[i + 1]) {
                    value.push(' ');
                    value.push_str(tokens[i + 1]);
                    i += 1;
                }
                map.insert(k.to_string(), value);
            }
            i += 1;
        }
    }
    map
}

fn is_key(token: &str) -> bool {
    token
        .split_once('=')
        .is_some_and(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == ':' || c == '/'))
}

/// One line of `sacct --noheader --parsable2 --format=JobID,State,ExitCode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcctEntry {
    pub job_id: String,
    pub state: JobState,
    pub exit_code: i32,
    pub signal: i32,
}

pub const SACCT_FORMAT: &str = "JobID,State,ExitCode";

pub fn parse_sacct(out: &str) -> Result<Vec<AcctEntry>, SlurmError> {
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|line| {
            let bad = || SlurmError::Parse { command: "sacct".into(), what: "accounting entry", line: line.to_string() };
            let f: Vec<&str> = line.split('|').collect();
            if f.len() < 3 {
                return Err(bad());
            }
            let (code, sig) = f[2].split_once(':').ok_or_else(bad)?;
            Ok(AcctEntry {
                job_id: f[0].to_string(),
                state: JobState::parse(f[1]),
                exit_code: code.parse().map_err(|_| bad())?,
                signal: sig.parse().map_err(|_| bad())?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sbatch_ids() {
        assert_eq!(parse_sbatch_parsable("4242\n").unwrap(), 4242);
        assert_eq!(parse_sbatch_parsable("17;cluster-a\n").unwrap(), 17);
        assert!(parse_sbatch_parsable("Submitted batch job 5").is_err());
        assert!(parse_sbatch_parsable("").is_err());
    }

    #[test]
    fn squeue_lines_with_arrays_and_reasons() {
        let out = "101|RUNNING|None|node[01-02]\n102_[3-5]|PENDING|Resources|\n102_1|RUNNING|None|node03\n103|PENDING|launch failed requeued held|\n";
        let e = parse_squeue(out).unwrap();
        assert_eq!(e.len(), 4);
        assert_eq!(e[0].state, JobState::Running);
        assert_eq!(e[0].nodes, "node[01-02]");
        assert_eq!(e[1].job_id, "102_[3-5]");
        assert_eq!(e[1].reason, "Resources");
        assert_eq!(e[3].reason, "launch failed requeued held");
        assert!(parse_squeue("garbage").is_err());
        assert!(parse_squeue("").unwrap().is_empty());
    }

    #[test]
    fn scontrol_key_values_with_spaces() {
        let out = "JobId=77 JobName=kiln-job\n   UserId=root(0) GroupId=root(0)\n   JobState=PENDING Reason=BeginTime Dependency=(null)\n   Command=/tmp/my dir/run.sh\n   NodeList=(null) BatchHost=node01\n   Restarts=2\n";
        let m = parse_scontrol(out);
        assert_eq!(m["JobId"], "77");
        assert_eq!(JobState::parse(&m["JobState"]), JobState::Pending);
        assert_eq!(m["Reason"], "BeginTime");
        assert_eq!(m["Command"], "/tmp/my dir/run.sh");
        assert_eq!(m["Restarts"], "2");
    }

    #[test]
    fn sacct_states_and_exit_codes() {
        let out = "55|CANCELLED by 0|0:15\n55.batch|CANCELLED|0:15\n56|FAILED|1:0\n57|COMPLETED|0:0\n58|TIMEOUT|0:0\n";
        let e = parse_sacct(out).unwrap();
        assert_eq!(e[0].state, JobState::Cancelled);
        assert_eq!(e[0].signal, 15);
        assert_eq!(e[2].state, JobState::Failed);
        assert_eq!(e[2].exit_code, 1);
        assert!(e[3].state.is_terminal() && e[4].state.is_terminal());
        assert!(!JobState::parse("PENDING").is_terminal());
        assert_eq!(JobState::parse("RUNNING+"), JobState::Running);
        assert_eq!(JobState::parse("WEIRD"), JobState::Other("WEIRD".into()));
        assert!(parse_sacct("55|COMPLETED").is_err());
    }
}
