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

    // Requeued: SLURM holds a requeued job back for ~2 minutes (BeginTime) while
    // the old step is torn down. Once no step of the job is left (plus srun's own
    // abort window), the test releases it instead of waiting out that policy.
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
            let _ = std::process::Command::new("scontrol").args(["update", &format!("JobId={id}"), "StartTime=now"]).status();
            break;
        }
        assert!(Instant::now() < deadline, "job {id} was not requeued: {info:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let state = wait_terminal(&client, id, Duration::from_secs(300));
    let log = std::fs::read_to_string(dir.path().join(format!("runs/preempt/slurm-{id}.out"))).unwrap_or_default();
    assert_eq!(state, JobState::Completed, "job log:\n{log}");
    assert!(log.contains("stop requested") && log.contains("resumed"), "the job must have stopped and resumed:\n{log}");

    let local = write_spec(dir.path(), &Job { name: "straight", steps, every: 0, ..Job::default() });
    assert!(kiln_run(dir.path(), &local, 2, &[]).status.success());
    let d = max_diff(&params(dir.path(), "preempt", steps), &params(dir.path(), "straight", steps));
    assert!(d <= 1e-6, "preempted + requeued run differs by {d}");
}
