//! Rendering sbatch scripts.

use crate::error::SlurmError;

/// The exit code kiln ranks use after checkpointing on a stop request (kept equal
/// to `kiln_cluster::launch::EXIT_PREEMPTED`; this crate does not depend on it).
pub const PREEMPTED_EXIT: i32 = 75;

/// Everything an sbatch script says, in SLURM's terms. Callers (the coordinator,
/// `kiln slurm render`) fill it from their own job description.
#[derive(Debug, Clone, PartialEq)]
pub struct SbatchRequest {
    pub job_name: String,
    pub nodes: usize,
    pub ntasks_per_node: usize,
    pub gpus_per_node: usize,
    pub cpus_per_task: usize,
    /// Memory per node as SLURM writes it (`64G`, `4000M`); `None` leaves the default.
    pub mem: Option<String>,
    /// Wall-clock limit (`MM`, `HH:MM:SS`, `D-HH:MM:SS`, …).
    pub time: Option<String>,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// `--output`/`--error` paths (SLURM patterns such as `%j` allowed).
    pub output: Option<String>,
    pub error: Option<String>,
    /// Seconds before the time limit at which the batch shell receives SIGUSR1.
    pub signal_grace_s: Option<u32>,
    /// Let SLURM requeue the job after preemption or node failure.
    pub requeue: bool,
    pub workdir: Option<String>,
    /// Variables exported before the job step starts.
    pub env: Vec<(String, String)>,
    /// The program each task runs (`srun --mpi=pmix` is put in front).
    pub command: Vec<String>,
}

impl Default for SbatchRequest {
    fn default() -> Self {
        SbatchRequest {
            job_name: "kiln".into(),
            nodes: 1,
            ntasks_per_node: 1,
            gpus_per_node: 0,
            cpus_per_task: 1,
            mem: None,
            time: None,
            partition: None,
            account: None,
            qos: None,
            output: None,
            error: None,
            signal_grace_s: None,
            requeue: false,
            workdir: None,
            env: Vec::new(),
            command: Vec::new(),
        }
    }
}

/// Quotes a word for bash: single quotes, with embedded ones closed and escaped.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Checks a SLURM time limit: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
pub fn valid_time(t: &str) -> bool {
    let (days, rest) = match t.split_once('-') {
        Some((d, r)) => (Some(d), r),
        None => (None, t),
    };
    let digits = |s: &str| !s.is_empty() && s.len() <= 4 && s.chars().all(|c| c.is_ascii_digit());
    if let Some(d) = days {
        if !digits(d) {
            return false;
        }
    }
    let parts: Vec<&str> = rest.split(':').collect();
    (1..=3).contains(&parts.len()) && parts.iter().all(|p| digits(p))
}

fn check_name(what: &str, v: &str) -> Result<(), SlurmError> {
    if v.is_empty() || v.len() > 200 || !v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(SlurmError::Request(format!("{what} '{v}' may only use letters, digits, '-', '_' and '.'")));
    }
    Ok(())
}

impl SbatchRequest {
    /// Checks what SLURM would otherwise reject at submit time, with a clearer message.
    pub fn validate(&self) -> Result<(), SlurmError> {
        check_name("job name", &self.job_name)?;
        if self.nodes < 1 || self.ntasks_per_node < 1 || self.cpus_per_task < 1 {
            return Err(SlurmError::Request("nodes, tasks per node and cpus per task must be at least 1".into()));
        }
        if let Some(t) = &self.time {
            if !valid_time(t) {
                return Err(SlurmError::Request(format!(
                    "time limit '{t}' is not a SLURM time (MM, HH:MM:SS or D-HH:MM:SS)"
                )));
            }
        }
        for (what, v) in [("partition", &self.partition), ("account", &self.account), ("qos", &self.qos)] {
            if let Some(v) = v {
                check_name(what, v)?;
            }
        }
        if let Some(mem) = &self.mem {
            let ok = mem.trim_end_matches(['K', 'M', 'G', 'T']).chars().all(|c| c.is_ascii_digit()) && !mem.is_empty();
            if !ok {
                return Err(SlurmError::Request(format!("memory '{mem}' is not a SLURM size such as 64G or 4000M")));
            }
        }
        for (k, _) in &self.env {
            if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || k.starts_with(|c: char| c.is_ascii_digit()) {
                return Err(SlurmError::Request(format!("'{k}' is not a valid environment variable name")));
            }
        }
        if self.command.is_empty() {
            return Err(SlurmError::Request("no command to run".into()));
        }
        Ok(())
    }

    /// The sbatch script.
    pub fn render(&self) -> Result<String, SlurmError> {
        self.validate()?;
        let mut s = String::from("#!/bin/bash\n");
        let mut d = |k: &str, v: String| s.push_str(&format!("#SBATCH --{k}={v}\n"));
        d("job-name", self.job_name.clone());
        d("nodes", self.nodes.to_string());
        d("ntasks-per-node", self.ntasks_per_node.to_string());
        d("cpus-per-task", self.cpus_per_task.to_string());
        if self.gpus_per_node > 0 {
            d("gpus-per-node", self.gpus_per_node.to_string());
        }
        if let Some(v) = &self.mem {
            d("mem", v.clone());
        }
        if let Some(v) = &self.time {
            d("time", v.clone());
        }
        if let Some(v) = &self.partition {
            d("partition", v.clone());
        }
        if let Some(v) = &self.account {
            d("account", v.clone());
        }
        if let Some(v) = &self.qos {
            d("qos", v.clone());
        }
        if let Some(v) = &self.output {
            d("output", shell_quote(v));
        }
        if let Some(v) = &self.error {
            d("error", shell_quote(v));
        }
        if let Some(v) = &self.workdir {
            d("chdir", shell_quote(v));
        }
        if let Some(g) = self.signal_grace_s {
            // B: the batch shell gets it and hands it to srun (see the traps below).
            d("signal", format!("B:USR1@{g}"));
        }
        if self.requeue {
            s.push_str("#SBATCH --requeue\n#SBATCH --open-mode=append\n");
        }
        s.push_str("\nset -uo pipefail\n");
        for (k, v) in &self.env {
            s.push_str(&format!("export {k}={}\n", shell_quote(v)));
        }
        let cmd: Vec<String> = self.command.iter().map(|c| shell_quote(c)).collect();
        s.push_str(&format!("srun --mpi=pmix --kill-on-bad-exit=1 {} &\n", cmd.join(" ")));
        // SLURM signals this shell (--signal=B:USR1@grace, scancel --batch); srun
        // passes what it gets on to every task. `wait` returns early when a trap
        // runs, so wait again until the step has really ended.
        s.push_str(concat!(
            "step=$!\n",
            "trap 'kill -USR1 \"$step\" 2>/dev/null' USR1\n",
            "trap 'kill -TERM \"$step\" 2>/dev/null' TERM\n",
            "rc=0\n",
            "while :; do\n",
            "  wait \"$step\" && rc=0 || rc=$?\n",
            "  kill -0 \"$step\" 2>/dev/null || break\n",
            "done\n",
        ));
        if self.requeue {
            // The ranks exit with 75 after committing a checkpoint on request: the
            // job is unfinished, not failed, so it goes back into the queue and
            // resumes from that checkpoint.
            s.push_str(&format!(
                "if [ \"$rc\" -eq {PREEMPTED_EXIT} ]; then\n  scontrol requeue \"$SLURM_JOB_ID\"\nfi\n"
            ));
        }
        s.push_str("exit \"$rc\"\n");
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> SbatchRequest {
        SbatchRequest {
            job_name: "mmoe-run".into(),
            nodes: 2,
            ntasks_per_node: 4,
            gpus_per_node: 4,
            cpus_per_task: 8,
            mem: Some("64G".into()),
            time: Some("02:00:00".into()),
            partition: Some("gpu".into()),
            account: Some("lab".into()),
            qos: None,
            output: Some("/runs/x/slurm-%j.out".into()),
            error: None,
            signal_grace_s: Some(120),
            requeue: true,
            workdir: None,
            env: vec![("KILN_RUN".into(), "it's here".into())],
            command: vec!["/opt/kiln".into(), "worker".into(), "job dir/job.toml".into()],
        }
    }

    #[test]
    fn renders_every_directive_and_quotes_the_command() {
        let s = req().render().unwrap();
        for line in [
            "#SBATCH --job-name=mmoe-run",
            "#SBATCH --nodes=2",
            "#SBATCH --ntasks-per-node=4",
            "#SBATCH --gpus-per-node=4",
            "#SBATCH --cpus-per-task=8",
            "#SBATCH --mem=64G",
            "#SBATCH --time=02:00:00",
            "#SBATCH --partition=gpu",
            "#SBATCH --account=lab",
            "#SBATCH --output=/runs/x/slurm-%j.out",
            "#SBATCH --signal=B:USR1@120",
            "#SBATCH --requeue",
            "export KILN_RUN='it'\\''s here'",
            "srun --mpi=pmix --kill-on-bad-exit=1 /opt/kiln worker 'job dir/job.toml' &",
            "  scontrol requeue \"$SLURM_JOB_ID\"",
        ] {
            assert!(s.lines().any(|l| l == line), "missing `{line}` in:\n{s}");
        }
        assert!(!s.contains("--qos"));
        assert!(s.starts_with("#!/bin/bash\n"));
    }

    #[test]
    fn refuses_what_slurm_would_refuse() {
        let bad = [
            SbatchRequest { time: Some("2h".into()), ..req() },
            SbatchRequest { job_name: "a b".into(), ..req() },
            SbatchRequest { partition: Some("gpu;rm -rf".into()), ..req() },
            SbatchRequest { nodes: 0, ..req() },
            SbatchRequest { mem: Some("lots".into()), ..req() },
            SbatchRequest { env: vec![("1X".into(), "v".into())], ..req() },
            SbatchRequest { command: vec![], ..req() },
        ];
        for r in bad {
            assert!(r.render().is_err(), "{r:?} should be refused");
        }
    }

    #[test]
    fn time_formats() {
        for ok in ["30", "30:00", "01:30:00", "2-00", "2-12:00", "1-00:00:00"] {
            assert!(valid_time(ok), "{ok}");
        }
        for bad in ["", "1h", "1:2:3:4", "-1", "a-01:00"] {
            assert!(!valid_time(bad), "{bad}");
        }
    }

    #[test]
    fn quoting_round_trips_through_bash() {
        let tricky = "a'b \"c\" $HOME `x` \\n";
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!("printf %s {}", shell_quote(tricky)))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), tricky);
    }
}
