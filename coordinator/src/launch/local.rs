//! The local backend: an attempt is `kiln supervise`, a small process in its own
//! process group that runs `mpirun … kiln worker` (or one worker), waits for it
//! and writes its exit status to a file. The supervisor outlives a crashed
//! coordinator, and the file tells the restarted one how the attempt ended.

use super::{cause_of_exit, Polled, ReportTo};
use crate::lifecycle::AttemptCause;
use std::fs::OpenOptions;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Files of one local attempt.
#[derive(Debug, Clone)]
pub struct AttemptFiles {
    pub dir: PathBuf,
}

impl AttemptFiles {
    pub fn new(job_dir: &Path, attempt: u32) -> AttemptFiles {
        AttemptFiles { dir: job_dir.join(format!("attempt-{attempt}")) }
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("log.txt")
    }
    pub fn exit(&self) -> PathBuf {
        self.dir.join("exit.json")
    }
    pub fn pid(&self) -> PathBuf {
        self.dir.join("pid")
    }
}

/// Starts an attempt: `kiln supervise` around the ranks. Returns the supervisor.
pub fn start(
    kiln: &Path,
    spec_path: &Path,
    run_dir: &Path,
    ranks: usize,
    files: &AttemptFiles,
    report: &ReportTo,
    gpus: &[u32],
) -> std::io::Result<Child> {
    std::fs::create_dir_all(&files.dir)?;
    let _ = std::fs::remove_file(files.exit());
    let log = OpenOptions::new().create(true).append(true).open(files.log())?;
    let mut inner = if ranks == 1 { Command::new(kiln) } else { kiln_cluster::launch::mpirun(ranks, kiln) };
    inner.arg("worker").arg(spec_path).arg("--run-dir").arg(run_dir).arg("--auto-resume");
    let mut cmd = Command::new(kiln);
    cmd.arg("supervise").arg("--exit-file").arg(files.exit()).arg("--pid-file").arg(files.pid()).arg("--");
    cmd.arg(inner.get_program()).args(inner.get_args());
    cmd.envs(report.env());
    // A coordinator that itself runs inside a requeued SLURM job must not pass
    // its restart count on: ranks would report the wrong attempt.
    cmd.env_remove("SLURM_RESTART_COUNT");
    if !gpus.is_empty() {
        // The job's own devices; local rank r takes the r-th of them.
        let list: Vec<String> = gpus.iter().map(u32::to_string).collect();
        cmd.env("CUDA_VISIBLE_DEVICES", list.join(","));
    }
    // Own process group, no terminal, output to the attempt log: nothing ties the
    // attempt to the coordinator's life.
    cmd.process_group(0).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    cmd.spawn()
}

/// The body of `kiln supervise`: runs `command`, records its pid's exit status in
/// `exit_file` (written whole, then renamed), and returns the code to exit with.
pub fn supervise(exit_file: &Path, pid_file: &Path, command: &[String]) -> i32 {
    let Some((prog, args)) = command.split_first() else {
        eprintln!("kiln supervise: no command given");
        return 2;
    };
    let _ = std::fs::write(pid_file, std::process::id().to_string());
    let status = match Command::new(prog).args(args).status() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kiln supervise: cannot start {prog}: {e}");
            write_exit(exit_file, &serde_json::json!({ "code": 127 }));
            return 127;
        }
    };
    let (json, code) = match (status.code(), status.signal()) {
        (Some(c), _) => (serde_json::json!({ "code": c }), c),
        (None, Some(s)) => (serde_json::json!({ "signal": s }), 128 + s),
        _ => (serde_json::json!({ "code": 1 }), 1),
    };
    write_exit(exit_file, &json);
    code
}

fn write_exit(path: &Path, json: &serde_json::Value) {
    let tmp = path.with_extension("json.tmp");
    if std::fs::write(&tmp, json.to_string()).and_then(|_| std::fs::rename(&tmp, path)).is_err() {
        eprintln!("kiln supervise: cannot record the exit status in {}", path.display());
    }
}

/// How the attempt stands: its exit file decides once it exists; otherwise a live
/// supervisor means running, and a vanished one (no exit file) a lost attempt.
pub fn poll(pid: i32, files: &AttemptFiles) -> Polled {
    if let Some(cause) = read_exit(&files.exit()) {
        return Polled::Ended(cause);
    }
    if is_our_supervisor(pid, files) {
        return Polled::Running;
    }
    // It may have written the file between the two checks.
    read_exit(&files.exit()).map(Polled::Ended).unwrap_or(Polled::Ended(AttemptCause::Lost))
}

fn read_exit(path: &Path) -> Option<AttemptCause> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    if let Some(c) = v.get("code").and_then(|c| c.as_i64()) {
        return Some(cause_of_exit(c as i32));
    }
    v.get("signal").and_then(|s| s.as_i64()).map(|s| AttemptCause::Signal { signal: s as i32 })
}

/// Whether `pid` is alive, not a zombie, and is the supervisor of these files
/// (pids are reused; the command line names the exit file).
pub fn is_our_supervisor(pid: i32, files: &AttemptFiles) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    if matches!(state, None | Some("Z") | Some("X")) {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let exit = files.exit().display().to_string();
    cmdline.split(|b| *b == 0).any(|arg| arg == exit.as_bytes())
}

/// The GPUs a running supervisor was given (read back after a coordinator restart).
pub fn assigned_gpus(pid: i32) -> Vec<u32> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    env.split(|b| *b == 0)
        .filter_map(|kv| kv.strip_prefix(b"CUDA_VISIBLE_DEVICES="))
        .flat_map(|v| String::from_utf8_lossy(v).split(',').filter_map(|g| g.trim().parse().ok()).collect::<Vec<u32>>())
        .collect()
}

/// Kills an attempt: the supervisor's process group and every descendant (mpirun
/// may put ranks in groups of their own).
pub fn kill(pid: i32) {
    let mut victims = descendants(pid);
    victims.push(pid);
    // SAFETY: kill() has no memory preconditions. The group first (covers the
    // common case atomically), then each process found in the tree.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
        for v in victims {
            libc::kill(v, libc::SIGKILL);
        }
    }
}

/// All processes below `root`, from /proc.
fn descendants(root: i32) -> Vec<i32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if let Some(ppid) = ppid {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(c, pp) in &parent_of {
            if pp == p && !out.contains(&c) {
                out.push(c);
                frontier.push(c);
            }
        }
    }
    out
}

/// Kills every process of an attempt, found by the variables the launcher gave
/// it (`KILN_COORDINATOR_ID`, `KILN_JOB_ID`, `KILN_ATTEMPT`): ranks that
/// outlived their supervisor, or a supervisor whose pid was never recorded.
pub fn kill_attempt(instance: &str, job: i64, attempt: u32) {
    let want = [
        format!("KILN_COORDINATOR_ID={instance}"),
        format!("KILN_JOB_ID={job}"),
        format!("KILN_ATTEMPT={attempt}"),
    ];
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else { return };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
        let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
        if want.iter().all(|w| vars.contains(&w.as_bytes())) {
            // SAFETY: kill() has no memory preconditions.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Kills a supervisor that was started but whose pid never reached the store
/// (the coordinator died in between): its pid file names it, and its
/// environment finds it (and its ranks) even before it wrote that file.
pub fn kill_unrecorded(files: &AttemptFiles, instance: &str, job: i64, attempt: u32) {
    let pid = std::fs::read_to_string(files.pid()).ok().and_then(|s| s.trim().parse::<i32>().ok());
    if let Some(pid) = pid.filter(|&p| is_our_supervisor(p, files)) {
        kill(pid);
    }
    kill_attempt(instance, job, attempt);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_files_map_to_causes() {
        let dir = tempfile::tempdir().unwrap();
        let files = AttemptFiles::new(dir.path(), 1);
        std::fs::create_dir_all(&files.dir).unwrap();
        // No supervisor, no file: lost.
        assert_eq!(poll(i32::MAX, &files), Polled::Ended(AttemptCause::Lost));
        for (json, cause) in [
            (r#"{"code":0}"#, AttemptCause::Exited { code: 0 }),
            (r#"{"code":75}"#, AttemptCause::Preempted),
            (r#"{"code":1}"#, AttemptCause::Exited { code: 1 }),
            (r#"{"signal":9}"#, AttemptCause::Signal { signal: 9 }),
        ] {
            std::fs::write(files.exit(), json).unwrap();
            assert_eq!(poll(i32::MAX, &files), Polled::Ended(cause));
        }
    }

    #[test]
    fn supervise_records_codes_and_signals() {
        let dir = tempfile::tempdir().unwrap();
        let (exit, pid) = (dir.path().join("exit.json"), dir.path().join("pid"));
        let sh = |s: &str| vec!["sh".to_string(), "-c".to_string(), s.to_string()];
        assert_eq!(supervise(&exit, &pid, &sh("exit 3")), 3);
        assert_eq!(read_exit(&exit), Some(AttemptCause::Exited { code: 3 }));
        assert_eq!(supervise(&exit, &pid, &sh("kill -9 $$")), 137);
        assert_eq!(read_exit(&exit), Some(AttemptCause::Signal { signal: 9 }));
        assert_eq!(supervise(&exit, &pid, &["/nonexistent/kiln".to_string()]), 127);
        assert_eq!(std::fs::read_to_string(&pid).unwrap(), std::process::id().to_string());
    }
}
