//! kiln on a real single-node SLURM cluster (started by `make test` through
//! scripts/slurm-cluster.sh): jobs go through real sbatch, srun --mpi=pmix,
//! squeue/scontrol and scancel.

mod common;
use common::*;
use kiln_slurm::client::SlurmClient;
use kiln_slurm::state::JobState;
use std::time::{Duration, Instant};

fn cluster() -> SlurmClient {
    let ok = std::process::Command::new("sinfo").arg("-h").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(ok, "no SLURM cluster answers: start one with `scripts/slurm-cluster.sh start` (make test does)");
    SlurmClient::default()
}

fn submit(dir: &std::path::Path, spec: &std::path::Path) -> u64 {
    let mut c = kiln();
    c.current_dir(dir).args(["slurm", "submit"]).arg(spec);
    let out = run(&mut c);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("kiln slurm submit prints the job id")
}

fn wait_terminal(client: &SlurmClient, id: u64, limit: Duration) -> JobState {
    let deadline = Instant::now() + limit;
    loop {
        let s = client.state(id).expect("job state");
        if s.is_terminal() {
            return s;
        }
        assert!(Instant::now() < deadline, "job {id} still {s:?} after {limit:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_two_rank_slurm_job_follows_the_local_trajectory() {
    let client = cluster();
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), &Job { name: "viaslurm", steps: 20, every: 5, ..Job::default() });
    let text_spec = std::fs::read_to_string(&spec).unwrap().replacen("[checkpoint]", "[resources]\nranks_per_node = 2\n\n[launch]\nbackend = \"slurm\"\n\n[checkpoint]", 1);
    std::fs::write(&spec, text_spec).unwrap();
    let id = submit(dir.path(), &spec);
    let state = wait_terminal(&client, id, Duration::from_secs(180));
    let log = std::fs::read_to_string(dir.path().join(format!("runs/viaslurm/slurm-{id}.out"))).unwrap_or_default();
    assert_eq!(state, JobState::Completed, "job log:\n{log}");
    assert!(log.contains("world=2") && log.contains("backend=\"mpi\""), "two MPI ranks under srun:\n{log}");

    let local = write_spec(dir.path(), &Job { name: "local", steps: 20, every: 5, ..Job::default() });
    assert!(kiln_run(dir.path(), &local, 2, &[]).status.success());
    let d = max_diff(&params(dir.path(), "viaslurm", 20), &params(dir.path(), "local", 20));
    assert!(d <= 1e-6, "SLURM run differs from the local one by {d}");
}

#[test]
fn scancel_stops_a_running_job() {
    let client = cluster();
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), &Job { name: "cancelme", steps: 10_000_000, every: 0, ..Job::default() });
    let id = submit(dir.path(), &spec);
    let deadline = Instant::now() + Duration::from_secs(120);
    while client.state(id).unwrap() != JobState::Running {
        assert!(Instant::now() < deadline, "job never started");
        std::thread::sleep(Duration::from_millis(200));
    }
    client.cancel(id, None).unwrap();
    assert_eq!(wait_terminal(&client, id, Duration::from_secs(60)), JobState::Cancelled);
}

#[test]
fn render_refuses_a_bad_time_limit_with_the_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), &Job::default());
    let t = std::fs::read_to_string(&spec).unwrap().replacen("[checkpoint]", "[resources]\ntime_limit = \"2h\"\n\n[checkpoint]", 1);
    std::fs::write(&spec, t).unwrap();
    let mut c = kiln();
    c.current_dir(dir.path()).args(["slurm", "render"]).arg(&spec);
    let out = run(&mut c);
    assert!(!out.status.success());
    let all = text(&out);
    assert!(all.contains("t.toml") && all.contains("time limit '2h'"), "{all}");
}

/// The preemption path: SIGUSR1 to the batch shell (what `--signal=B:USR1@grace`
/// sends before the time limit; here sent at once with `scancel --batch`) reaches
/// every rank through srun, they commit a checkpoint and exit 75, the script
/// requeues the job, and the requeued job resumes and ends on the trajectory of an
/// uninterrupted run.
#[test]
fn usr1_checkpoints_requeues_and_the_job_completes_on_the_same_trajectory() {
    let client = cluster();
    let dir = tempfile::tempdir().unwrap();
    let steps = 4000;
    let spec = write_spec(dir.path(), &Job { name: "preempt", steps, every: 0, ..Job::default() });
    let text_spec = std::fs::read_to_string(&spec).unwrap().replacen("[checkpoint]", "[resources]\nranks_per_node = 2\n\n[checkpoint]", 1);
    std::fs::write(&spec, text_spec).unwrap();
    let id = submit(dir.path(), &spec);

    let metrics = dir.path().join("runs/preempt/metrics.jsonl");
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_to_string(&metrics).map(|s| s.lines().count()).unwrap_or(0) < 2 {
        assert!(Instant::now() < deadline, "job {id} did not start training");
        std::thread::sleep(Duration::from_millis(100));
    }
    client.cancel(id, Some("USR1")).unwrap();

    release_when_requeued(&client, id);
    let state = wait_terminal(&client, id, Duration::from_secs(300));
    let log = std::fs::read_to_string(dir.path().join(format!("runs/preempt/slurm-{id}.out"))).unwrap_or_default();
    assert_eq!(state, JobState::Completed, "job log:\n{log}");
    assert!(log.contains("stop requested") && log.contains("resumed"), "the job must have stopped and resumed:\n{log}");

    let local = write_spec(dir.path(), &Job { name: "straight", steps, every: 0, ..Job::default() });
    assert!(kiln_run(dir.path(), &local, 2, &[]).status.success());
    let d = max_diff(&params(dir.path(), "preempt", steps), &params(dir.path(), "straight", steps));
    assert!(d <= 1e-6, "preempted + requeued run differs by {d}");
}

/// SLURM holds a requeued job back for ~2 minutes (BeginTime) while the old step
/// is torn down. Once the job is requeued and no step of it is left (plus srun's
/// own abort window), release it instead of waiting out that policy.
fn release_when_requeued(client: &SlurmClient, id: u64) {
    release_when_requeued_then(client, id, || {});
}

/// As [`release_when_requeued`], running `before_release` on the pending job first.
fn release_when_requeued_then(client: &SlurmClient, id: u64, before_release: impl FnOnce()) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let info = client.show(id).unwrap();
        let requeued = info.get("Restarts").map(|r| r != "0").unwrap_or(false);
        let no_steps = std::process::Command::new("squeue")
            .args(["-h", "-s", "-j", &id.to_string()])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().is_empty())
            .unwrap_or(false);
        if requeued && no_steps {
            std::thread::sleep(Duration::from_secs(8));
            before_release();
            let _ = std::process::Command::new("scontrol").args(["update", &format!("JobId={id}"), "StartTime=now"]).status();
            return;
        }
        assert!(Instant::now() < deadline, "job {id} was not requeued: {info:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A coordinator job spec on the SLURM backend, checkpoints under `dir/store`.
fn slurm_spec(dir: &std::path::Path, name: &str, steps: u64, every: u64) -> String {
    let spec = write_spec(dir, &Job { name, steps, every, ..Job::default() });
    std::fs::read_to_string(&spec)
        .unwrap()
        .replacen("[checkpoint]", "[resources]\nranks_per_node = 2\n\n[launch]\nbackend = \"slurm\"\n\n[checkpoint]", 1)
}

fn slurm_id(coord: &Coord, job: i64) -> u64 {
    let j = coord.client().job(job).unwrap();
    j.attempt_list.last().and_then(|a| a.handle.as_deref()).and_then(|h| h.parse().ok()).expect("a SLURM job id")
}

fn scontrol_update(id: u64, what: &str) {
    let ok = std::process::Command::new("scontrol")
        .args(["update", &format!("JobId={id}"), what])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "scontrol update JobId={id} {what} failed");
}

/// Through the coordinator, SLURM's own time limit: the running job's limit is
/// cut to one minute, inside its `signal_grace_s` (120 s), so slurmctld sends
/// SIGUSR1 to the batch shell at its next time-limit check (`--signal=B:USR1@120`),
/// exactly as it would before a real limit. The ranks checkpoint and exit 75, the
/// script requeues the SLURM job, the coordinator counts a preempted attempt (no
/// restart spent) and the next one on the same SLURM id — surviving its own
/// SIGKILL in between — and the job completes from its checkpoint.
#[test]
fn a_coordinator_slurm_job_at_its_time_limit_checkpoints_requeues_and_completes() {
    let client = cluster();
    let dir = tempfile::tempdir().unwrap();
    // Attempt 1 is slowed down so it is surely still running when the signal comes.
    let slow = [("KILN_FAULT", "slow-rank:0:ms:20,slow-rank:1:ms:20"), ("KILN_FAULT_ATTEMPT", "1")];
    let coord = Coord::start(&dir.path().join("state"), &["--heartbeat-s", "0.2"], &slow);
    let c = coord.client();
    let (job, _) = c.submit(&slurm_spec(dir.path(), "slurmtl", 3000, 0), None, Some(0), None).unwrap();
    assert_eq!(job.backend, "slurm");
    let deadline = Instant::now() + Duration::from_secs(120);
    while c.job(job.id).unwrap().step.unwrap_or(0) < 5 {
        assert!(Instant::now() < deadline, "no progress\n{}", coord.diagnose(job.id));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(c.job(job.id).unwrap().status, kiln_coordinator::JobStatus::Running);
    let sid = slurm_id(&coord, job.id);
    scontrol_update(sid, "TimeLimit=1");
    // Give the requeued job its time back before it starts again.
    release_when_requeued_then(&client, sid, || scontrol_update(sid, "TimeLimit=30"));
    // The coordinator crashes after counting the requeue; restarted, it must find
    // the same SLURM job by id and keep counting from attempt 2.
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.job(job.id).unwrap().attempts < 2 {
        assert!(Instant::now() < deadline, "requeue not seen\n{}", coord.diagnose(job.id));
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut coord = coord;
    coord.restart();
    let done = coord.wait(job.id, Duration::from_secs(300));
    assert_eq!(done.status, kiln_coordinator::JobStatus::Succeeded, "{}", coord.diagnose(job.id));
    assert_eq!((done.attempts, done.restarts), (2, 0), "{}", coord.diagnose(job.id));
    assert_eq!(done.attempt_list[0].cause.as_ref().unwrap()["cause"], "preempted");
    assert_eq!(done.attempt_list[1].handle.as_deref(), Some(sid.to_string().as_str()), "same SLURM job, requeued");
    let log = String::from_utf8_lossy(&coord.client().logs(job.id, None, 0).unwrap().bytes).to_string();
    assert!(log.contains("stop requested") && log.contains("resumed"), "{log}");
    assert!(coord.log().contains("re-attached"), "{}", coord.log());
}

/// kill -9 of one rank under srun: the SLURM job fails, the coordinator submits
/// a new one that resumes from the newest commit, and the job ends on the
/// trajectory of an uninterrupted local run.
#[test]
fn a_killed_rank_under_slurm_is_restarted_by_the_coordinator() {
    let _client = cluster();
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(
        &dir.path().join("state"),
        &[],
        &[("KILN_FAULT", "kill-rank:1:after-step:23"), ("KILN_FAULT_ATTEMPT", "1")],
    );
    let c = coord.client();
    let text = slurm_spec(dir.path(), "slurmkill", 40, 10);
    let (job, _) = c.submit(&text, None, Some(2), None).unwrap();
    let done = coord.wait(job.id, Duration::from_secs(300));
    assert_eq!(done.status, kiln_coordinator::JobStatus::Succeeded, "{}", coord.diagnose(job.id));
    assert_eq!((done.attempts, done.restarts), (2, 1), "{}", coord.diagnose(job.id));
    assert_ne!(done.attempt_list[0].handle, done.attempt_list[1].handle, "a fresh SLURM job");

    let local = write_spec(dir.path(), &Job { name: "slurmkill-local", steps: 40, every: 10, ..Job::default() });
    assert!(kiln_run(dir.path(), &local, 2, &[]).status.success());
    let store = dir.path().join("store/jobs").join(job.id.to_string());
    let d = max_diff(&params_in(&store, "slurmkill", 40), &params(dir.path(), "slurmkill-local", 40));
    assert!(d <= 1e-6, "restarted SLURM job differs from an uninterrupted run by {d}");
}
