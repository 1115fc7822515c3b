//! The coordinator as users run it: a real `kiln coordinator` process, jobs of
//! real `mpirun` ranks launched by it, the HTTP API over loopback, and the
//! faults it must survive (a rank killed, a rank hung, the coordinator itself
//! killed).

mod common;
#[path = "../cluster/tests/support/s3.rs"]
mod s3;
use common::*;
use kiln_coordinator::client::ClientError;
use kiln_coordinator::JobStatus;
use std::path::Path;
use std::time::{Duration, Instant};

/// A spec for `ranks` ranks whose checkpoints go under `dir/store`.
fn spec(dir: &Path, name: &str, ranks: usize, steps: u64, every: u64) -> String {
    let path = write_spec(dir, &Job { name, steps, every, ..Job::default() });
    let text = std::fs::read_to_string(path).unwrap();
    text.replacen("[checkpoint]", &format!("[resources]\nranks_per_node = {ranks}\n\n[checkpoint]"), 1)
}

fn wait_for(what: &str, limit: Duration, coord: &Coord, id: i64, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}\n{}", coord.diagnose(id));
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn api_error(r: Result<impl std::fmt::Debug, ClientError>) -> (u16, String) {
    match r {
        Err(ClientError::Api { status, message }) => (status, message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[test]
fn bad_requests_get_clear_4xx_answers_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(&dir.path().join("state"), &["--hold", "--slots", "2"], &[]);
    let c = coord.client();
    let good = spec(dir.path(), "good", 2, 10, 5);
    let http = reqwest::blocking::Client::new();

    // Health needs no token; everything else does.
    assert_eq!(http.get(format!("{}/healthz", coord.url)).send().unwrap().status(), 200);
    let r = http.get(format!("{}/v1/jobs", coord.url)).send().unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().unwrap().contains("Bearer"));
    let wrong = kiln_coordinator::client::Client::new(&coord.url, "not-the-token-at-all").unwrap();
    assert_eq!(api_error(wrong.submit(&good, None, None, None)).0, 401);
    assert_eq!(http.get(format!("{}/metrics", coord.url)).send().unwrap().status(), 401);

    // Invalid specs name the line and field; impossible ones say why.
    let (s, m) = api_error(c.submit(&good.replace("steps = 10", "stepz = 10"), None, None, None));
    assert!(s == 400 && m.contains("job.toml:") && m.contains("stepz"), "{s} {m}");
    let (s, m) = api_error(c.submit(&good.replace("recsys.mmoe", "recsys.nope"), None, None, None));
    assert!(s == 400 && m.contains("unknown algorithm"), "{s} {m}");
    let (s, m) = api_error(c.submit(&good.replace("ranks_per_node = 2", "ranks_per_node = 3"), None, None, None));
    assert!(s == 422 && m.contains("3 rank slot(s)") && m.contains("could never start"), "{s} {m}");
    let (s, m) = api_error(c.submit(&good.replace("ranks_per_node = 2", "ranks_per_node = 1\nnodes = 2"), None, None, None));
    assert!(s == 422 && m.contains("slurm"), "{s} {m}");
    // Path traversal through the run name never reaches the file system.
    let (s, m) = api_error(c.submit(&good.replace("name = \"good\"", "name = \"../../etc/evil\""), None, None, None));
    assert!(s == 400 && m.contains("run name"), "{s} {m}");
    assert!(!dir.path().join("etc").exists());

    // Oversized and malformed bodies.
    let huge = serde_json::json!({ "spec": "#".repeat(400 * 1024) }).to_string();
    let r = http.post(format!("{}/v1/jobs", coord.url)).bearer_auth(TOKEN).body(huge).send().unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.text().unwrap().contains("larger than"));
    let r = http.post(format!("{}/v1/jobs", coord.url)).bearer_auth(TOKEN).body("{\"spec\": 3}").send().unwrap();
    assert_eq!(r.status(), 400);
    let r = http.post(format!("{}/v1/jobs", coord.url)).bearer_auth(TOKEN).body("{\"spek\": \"x\"}").send().unwrap();
    assert!(r.status() == 400 && r.text().unwrap().contains("spek"));
    let r = http.get(format!("{}/v1/jobs/..%2F..%2Fetc", coord.url)).bearer_auth(TOKEN).send().unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(api_error(c.job(9999)).0, 404);
    let r = http.get(format!("{}/v1/jobs?state=sleeping", coord.url)).bearer_auth(TOKEN).send().unwrap();
    assert!(r.status() == 400 && r.text().unwrap().contains("queued"));
    let r = http.get(format!("{}/v1/jobs/1/logs?offset=-3", coord.url)).bearer_auth(TOKEN).send().unwrap();
    assert!(r.status() == 400 && r.text().unwrap().contains("\"error\""), "JSON errors for bad queries too");
    let r = http.delete(format!("{}/v1/jobs", coord.url)).bearer_auth(TOKEN).send().unwrap();
    assert!(r.status() == 405 && r.text().unwrap().contains("\"error\""));
    let r = http.get(format!("{}/v2/jobs", coord.url)).bearer_auth(TOKEN).send().unwrap();
    assert!(r.status() == 404 && r.text().unwrap().contains("/v1"));

    assert!(c.jobs(None).unwrap().is_empty(), "a refused request stores nothing");

    // A good job is stored (held: this coordinator launches nothing); its
    // worker token reports on it only, and cannot use the operator API.
    let (job, created) = c.submit(&good, Some(5), Some(1), Some("k1")).unwrap();
    assert!(created && job.status == JobStatus::Queued && job.priority == 5 && job.max_restarts == 1);
    let (again, created) = c.submit(&good, None, None, Some("k1")).unwrap();
    assert!(!created && again.id == job.id);
    let hb = serde_json::json!({ "attempt": 1, "rank": 0, "world": 2, "step": 1, "collectives": 1 });
    let other = c.submit(&good, None, None, None).unwrap().0;
    let db = rusqlite_token(&coord.state, other.id);
    let r = http.post(format!("{}/v1/jobs/{}/heartbeat", coord.url, job.id)).bearer_auth(&db).body(hb.to_string()).send().unwrap();
    assert_eq!(r.status(), 403, "another job's token");
    let worker = kiln_coordinator::client::Client::new(&coord.url, &db).unwrap();
    assert_eq!(api_error(worker.jobs(None)).0, 401, "a worker token is not an operator token");
    let r = http.post(format!("{}/v1/jobs/{}/heartbeat", coord.url, other.id)).bearer_auth(&db).body(hb.to_string()).send().unwrap();
    assert_eq!(r.status(), 409, "right token, but the job is not running");
    let r = http.post(format!("{}/v1/jobs/777/heartbeat", coord.url)).bearer_auth(&db).body("not json").send().unwrap();
    assert_eq!(r.status(), 403, "no hint whether job 777 exists, body unread");

    let m = c.get_text("/metrics").unwrap();
    assert!(m.contains("kiln_jobs{state=\"queued\"} 2"), "{m}");
}

/// A job's worker token, read from the coordinator's database as a worker would
/// receive it in its environment.
fn rusqlite_token(state: &Path, id: i64) -> String {
    let store = kiln_coordinator::Store::open(&state.join("kiln.db")).unwrap();
    store.worker_token(id).unwrap()
}

#[test]
fn local_jobs_are_gang_scheduled_run_and_report() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(&dir.path().join("state"), &["--slots", "2", "--heartbeat-s", "0.2"], &[]);
    let c = coord.client();
    let (a, _) = c.submit(&spec(dir.path(), "first", 2, 400, 100), None, None, None).unwrap();
    let (b, _) = c.submit(&spec(dir.path(), "second", 2, 20, 10), None, None, None).unwrap();
    wait_for("the first job to run", Duration::from_secs(60), &coord, a.id, || c.job(a.id).unwrap().status == JobStatus::Running);
    // Both need the host's two slots: the second waits for the first.
    let seen = c.job(b.id).unwrap();
    assert_eq!(seen.status, JobStatus::Queued, "{}", coord.diagnose(b.id));
    wait_for("heartbeats", Duration::from_secs(60), &coord, a.id, || {
        c.job(a.id).unwrap().step.unwrap_or(0) > 0 || c.job(a.id).unwrap().status.is_terminal()
    });
    let a_done = coord.wait(a.id, Duration::from_secs(240));
    assert_eq!(a_done.status, JobStatus::Succeeded, "{}", coord.diagnose(a.id));
    let b_done = coord.wait(b.id, Duration::from_secs(120));
    assert_eq!(b_done.status, JobStatus::Succeeded, "{}", coord.diagnose(b.id));
    assert_eq!((a_done.attempts, a_done.restarts), (1, 0));

    let (step, metrics) = c.metrics(a.id).unwrap().expect("rank 0 reported metrics");
    assert_eq!(step, 400);
    assert!(metrics["loss"].as_f64().is_some_and(f64::is_finite), "{metrics}");
    let log = c.logs(a.id, None, 0).unwrap();
    assert!(String::from_utf8_lossy(&log.bytes).contains("rank started"), "{}", String::from_utf8_lossy(&log.bytes));
    // Checkpoints and the log live in the job's own directory of the store.
    let store = dir.path().join("store").join("jobs").join(a.id.to_string());
    assert_eq!(params_in(&store, "first", 400).len(), params_in(&store, "first", 300).len());
    assert!(store.join("first/logs/attempt-1.log").exists());
    let m = c.get_text("/metrics").unwrap();
    assert!(m.contains("kiln_jobs{state=\"succeeded\"} 2") && m.contains("kiln_queue_wait_seconds_count 2"), "{m}");
}

#[test]
fn a_killed_rank_restarts_from_the_last_commit_and_ends_where_an_uninterrupted_run_does() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(
        &dir.path().join("state"),
        &["--slots", "2"],
        &[("KILN_FAULT", "kill-rank:1:after-step:23"), ("KILN_FAULT_ATTEMPT", "1")],
    );
    let c = coord.client();
    let text = spec(dir.path(), "crashy", 2, 40, 10);
    let (job, _) = c.submit(&text, None, Some(2), None).unwrap();
    let done = coord.wait(job.id, Duration::from_secs(240));
    assert_eq!(done.status, JobStatus::Succeeded, "{}", coord.diagnose(job.id));
    assert_eq!((done.attempts, done.restarts), (2, 1), "{}", coord.diagnose(job.id));
    let first = done.attempt_list[0].cause.clone().unwrap();
    assert_eq!(first["cause"], "exited", "rank 1's SIGKILL makes mpirun fail the attempt: {first}");
    let log2 = String::from_utf8_lossy(&c.logs(job.id, Some(2), 0).unwrap().bytes).to_string();
    assert!(log2.contains("start_step=20"), "attempt 2 resumes from step 20:\n{log2}");

    std::fs::write(dir.path().join("plain.toml"), text.replace("name = \"crashy\"", "name = \"plain\"")).unwrap();
    let out = kiln_run(dir.path(), &dir.path().join("plain.toml"), 2, &[]);
    assert!(out.status.success(), "{}", common::text(&out));
    let restarted = params_in(&dir.path().join("store/jobs").join(job.id.to_string()), "crashy", 40);
    let d = max_diff(&restarted, &params_in(&dir.path().join("store"), "plain", 40));
    assert!(d <= 1e-6, "restarted job differs from an uninterrupted run by {d}");
}

#[test]
fn a_hung_rank_is_named_and_the_attempt_restarted_and_a_slow_rank_is_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(
        &dir.path().join("state"),
        &["--slots", "2", "--heartbeat-s", "0.2", "--hang-timeout-s", "4", "--straggler-factor", "1.5"],
        &[("KILN_FAULT", "slow-rank:1:ms:40,hang-rank:1:after-step:30"), ("KILN_FAULT_ATTEMPT", "1")],
    );
    let c = coord.client();
    let (job, _) = c.submit(&spec(dir.path(), "stuck", 2, 50, 10), None, Some(2), None).unwrap();
    let done = coord.wait(job.id, Duration::from_secs(240));
    assert_eq!(done.status, JobStatus::Succeeded, "{}", coord.diagnose(job.id));
    assert_eq!(done.attempts, 2, "{}", coord.diagnose(job.id));
    let events = serde_json::to_value(c.events(job.id).unwrap()).unwrap();
    let events = events.as_array().unwrap();
    let hang = events.iter().find(|e| e["event"] == "attempt_ended" && e["cause"]["cause"] == "hang");
    let hang = hang.unwrap_or_else(|| panic!("no hang event\n{}", coord.diagnose(job.id)));
    assert_eq!(hang["cause"]["stuck_ranks"], serde_json::json!([1]), "{hang}");
    let straggler = events.iter().find(|e| e["event"] == "straggler");
    assert_eq!(straggler.map(|s| s["rank"].clone()), Some(serde_json::json!(1)), "{}", coord.diagnose(job.id));
    assert!(c.get_text("/metrics").unwrap().contains("kiln_hangs_total 1"));
}

#[test]
fn the_coordinator_killed_mid_run_picks_its_job_up_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut coord = Coord::start(&dir.path().join("state"), &["--slots", "2", "--heartbeat-s", "0.2"], &[]);
    let c = coord.client();
    let (job, _) = c.submit(&spec(dir.path(), "survivor", 2, 1500, 500), None, Some(0), None).unwrap();
    wait_for("progress", Duration::from_secs(60), &coord, job.id, || c.job(job.id).unwrap().step.unwrap_or(0) > 10);
    coord.kill9();
    std::thread::sleep(Duration::from_secs(1));
    coord.restart();
    let c = coord.client();
    let done = coord.wait(job.id, Duration::from_secs(300));
    assert_eq!(done.status, JobStatus::Succeeded, "{}", coord.diagnose(job.id));
    // Same attempt, re-attached: not relaunched, not duplicated.
    assert_eq!((done.attempts, done.restarts), (1, 0), "{}", coord.diagnose(job.id));
    assert_eq!(c.jobs(None).unwrap().len(), 1);
    assert!(coord.log().contains("re-attached"), "{}", coord.log());
}

#[test]
fn cancel_stops_a_running_job_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(&dir.path().join("state"), &["--slots", "2"], &[]);
    let c = coord.client();
    let (job, _) = c.submit(&spec(dir.path(), "endless", 2, 10_000_000, 0), None, None, None).unwrap();
    wait_for("running", Duration::from_secs(60), &coord, job.id, || c.job(job.id).unwrap().status == JobStatus::Running);
    let pid: i32 = c.job(job.id).unwrap().attempt_list[0].handle.as_deref().unwrap().parse().unwrap();
    assert_eq!(c.cancel(job.id).unwrap().status, JobStatus::Cancelled);
    let files = kiln_coordinator::launch::local::AttemptFiles::new(&coord.state.join("jobs").join(job.id.to_string()), 1);
    wait_for("the attempt to die", Duration::from_secs(10), &coord, job.id, || {
        !kiln_coordinator::launch::local::is_our_supervisor(pid, &files)
    });
    assert_eq!(api_error(c.cancel(job.id)).0, 409);
}

#[test]
fn a_thousand_concurrent_submissions_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(&dir.path().join("state"), &["--hold", "--slots", "2"], &[]);
    let text = spec(dir.path(), "load", 2, 10, 5);
    let clients = 8;
    let per = 125;
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            let (url, text) = (coord.url.clone(), text.clone());
            std::thread::spawn(move || {
                let c = kiln_coordinator::client::Client::new(&url, TOKEN).unwrap();
                (0..per)
                    .map(|i| {
                        let key = format!("c{t}-{i}");
                        let (job, created) = c.submit(&text, None, None, Some(&key)).unwrap();
                        assert!(created);
                        // A retry after a lost answer must not duplicate.
                        let (again, created) = c.submit(&text, None, None, Some(&key)).unwrap();
                        assert!(!created && again.id == job.id);
                        job.id
                    })
                    .collect::<Vec<i64>>()
            })
        })
        .collect();
    let mut ids: Vec<i64> = threads.into_iter().flat_map(|h| h.join().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), clients * per);
    let listed = coord.client().jobs(None).unwrap();
    assert_eq!(listed.len(), clients * per);
}

#[test]
fn attempts_that_vanished_while_the_coordinator_was_down_count_as_lost_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut coord = Coord::start(&dir.path().join("state"), &["--slots", "2", "--heartbeat-s", "0.2"], &[]);
    let c = coord.client();
    let (job, _) = c.submit(&spec(dir.path(), "vanish", 2, 600, 50), None, Some(1), None).unwrap();
    wait_for("a commit", Duration::from_secs(60), &coord, job.id, || c.job(job.id).unwrap().step.unwrap_or(0) > 60);
    let pid: i32 = c.job(job.id).unwrap().attempt_list[0].handle.as_deref().unwrap().parse().unwrap();
    coord.kill9();
    // The node "reboots": the attempt dies while nobody watches it.
    kiln_coordinator::launch::local::kill(pid);
    std::thread::sleep(Duration::from_millis(500));
    coord.restart();
    let c = coord.client();
    let done = coord.wait(job.id, Duration::from_secs(240));
    assert_eq!(done.status, JobStatus::Succeeded, "{}", coord.diagnose(job.id));
    assert_eq!((done.attempts, done.restarts), (2, 1), "{}", coord.diagnose(job.id));
    assert_eq!(done.attempt_list[0].cause.as_ref().unwrap()["cause"], "lost");
    let log2 = String::from_utf8_lossy(&c.logs(job.id, Some(2), 0).unwrap().bytes).to_string();
    assert!(!log2.contains("start_step=0"), "attempt 2 resumes from a commit:\n{log2}");
}

#[test]
fn the_cli_submits_lists_shows_follows_and_explains_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(&dir.path().join("state"), &["--slots", "2"], &[]);
    let path = dir.path().join("cli.toml");
    std::fs::write(&path, spec(dir.path(), "cli", 1, 20, 10)).unwrap();
    let cli = |args: &[&str]| {
        let mut c = kiln();
        c.args(args).env("KILN_COORDINATOR", &coord.url).env("KILN_TOKEN", TOKEN);
        run(&mut c)
    };
    let out = cli(&["submit", path.to_str().unwrap(), "--wait"]);
    assert!(out.status.success(), "{}\n{}", text(&out), coord.log());
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let jobs = text(&cli(&["jobs"]));
    assert!(jobs.contains("cli") && jobs.contains("succeeded"), "{jobs}");
    let status = text(&cli(&["status", &id]));
    assert!(status.contains("attempt 1") && status.contains("\"exited\"") && status.contains("step      20"), "{status}");
    let logs = cli(&["logs", &id, "-f"]);
    assert!(logs.status.success() && text(&logs).contains("rank started"), "{}", text(&logs));

    // Mistakes: the user's file and line, a missing token, an unknown job.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, std::fs::read_to_string(&path).unwrap().replace("steps = 20", "steps = \"many\"")).unwrap();
    let out = cli(&["submit", bad.to_str().unwrap()]);
    assert!(!out.status.success() && text(&out).contains("bad.toml:") && text(&out).contains("HTTP 400"), "{}", text(&out));
    let mut c = kiln();
    c.args(["jobs"]).env("KILN_COORDINATOR", &coord.url).env_remove("KILN_TOKEN");
    let out = run(&mut c);
    assert!(!out.status.success() && text(&out).contains("KILN_TOKEN"), "{}", text(&out));
    let out = cli(&["cancel", "424242"]);
    assert!(!out.status.success() && text(&out).contains("does not exist"), "{}", text(&out));
    let mut c = kiln();
    c.args(["jobs"]).env("KILN_COORDINATOR", "http://127.0.0.1:9").env("KILN_TOKEN", TOKEN);
    let out = run(&mut c);
    assert!(!out.status.success() && text(&out).contains("kiln coordinator"), "{}", text(&out));
}

#[test]
fn local_gpu_jobs_get_disjoint_devices() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(&dir.path().join("state"), &["--slots", "2", "--gpus", "2"], &[]);
    let c = coord.client();
    // GPUs are reserved and handed out even though these ranks train on the CPU.
    let text = spec(dir.path(), "gpu", 1, 10_000_000, 0).replacen("ranks_per_node = 1", "ranks_per_node = 1\ngpus_per_rank = 1", 1);
    let text = text.replacen("[train]", "[train]\ndevice = \"cpu\"", 1);
    let ids: Vec<i64> = (0..3).map(|_| c.submit(&text, None, None, None).unwrap().0.id).collect();
    for &id in &ids[..2] {
        wait_for("running", Duration::from_secs(60), &coord, id, || c.job(id).unwrap().status == JobStatus::Running);
    }
    assert_eq!(c.job(ids[2]).unwrap().status, JobStatus::Queued, "no third GPU");
    let gpus_of = |id: i64| {
        let pid: i32 = c.job(id).unwrap().attempt_list[0].handle.as_deref().unwrap().parse().unwrap();
        kiln_coordinator::launch::local::assigned_gpus(pid)
    };
    let (g0, g1) = (gpus_of(ids[0]), gpus_of(ids[1]));
    let mut both = vec![g0.clone(), g1];
    both.sort();
    assert_eq!(both, vec![vec![0], vec![1]]);
    c.cancel(ids[0]).unwrap();
    wait_for("the third job to take the freed GPU", Duration::from_secs(60), &coord, ids[2], || {
        c.job(ids[2]).unwrap().status == JobStatus::Running
    });
    assert_eq!(gpus_of(ids[2]), g0);
    for id in &ids[1..] {
        c.cancel(*id).unwrap();
    }
}

#[test]
fn checkpoints_and_logs_of_coordinator_jobs_live_in_the_s3_store() {
    let server = s3::start_s3("runs");
    let dir = tempfile::tempdir().unwrap();
    let env: Vec<(&str, String)> = server.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let coord = Coord::start(&dir.path().join("state"), &["--slots", "2", "--store", "s3://runs/lab"], &env);
    let c = coord.client();
    // The default store ("runs") means: the coordinator's.
    let text = spec(dir.path(), "ins3", 2, 30, 10).replace(&format!("store = \"{}\"", dir.path().join("store").display()), "store = \"runs\"");
    let (job, _) = c.submit(&text, None, None, None).unwrap();
    let done = coord.wait(job.id, Duration::from_secs(180));
    assert_eq!(done.status, JobStatus::Succeeded, "{}", coord.diagnose(job.id));
    let run = server.root.path().join("runs/lab/jobs").join(job.id.to_string()).join("ins3");
    assert!(run.join("ckpt/step-0000000030/COMMIT").exists(), "no commit in S3 under {}", run.display());
    assert!(run.join("logs/attempt-1.log").exists() && run.join("metrics.jsonl").exists());
    assert!(!dir.path().join("store").exists(), "nothing written outside the store");
    // Any node can serve the log: with the local copy gone, it comes from S3.
    let local = coord.state.join("jobs").join(job.id.to_string()).join("attempt-1/log.txt");
    let before = c.logs(job.id, Some(1), 0).unwrap().bytes;
    std::fs::remove_file(&local).unwrap();
    let after = c.logs(job.id, Some(1), 0).unwrap().bytes;
    assert!(!after.is_empty() && after == before);
}

#[test]
fn a_second_coordinator_on_the_same_state_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(&dir.path().join("state"), &["--hold"], &[]);
    let mut c = kiln();
    c.args(["coordinator", "--listen", "127.0.0.1:0", "--state-dir"]).arg(&coord.state).env("KILN_TOKEN", TOKEN);
    let out = run(&mut c);
    assert!(!out.status.success());
    assert!(text(&out).contains("another coordinator is using"), "{}", text(&out));
    // The first one is unharmed.
    assert!(coord.client().jobs(None).unwrap().is_empty());
}
