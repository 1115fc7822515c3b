//! Invariant: kill at any moment, resume, and the run continues from the last
//! commit on the trajectory of an uninterrupted run.

mod common;
use common::*;

#[test]
fn kill_9_a_rank_then_resume_matches_the_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let full = write_spec(dir.path(), &Job { name: "full", steps: 20, every: 5, ..Job::default() });
    let out = kiln_run(dir.path(), &full, 2, &[]);
    assert!(out.status.success(), "{}", text(&out));

    let killed = write_spec(dir.path(), &Job { name: "killed", steps: 20, every: 5, ..Job::default() });
    let mut c = kiln();
    c.current_dir(dir.path()).args(["run"]).arg(&killed).args(["--ranks", "2"]).env("KILN_FAULT", "kill-rank:1:after-step:12");
    let out = run(&mut c);
    assert!(!out.status.success(), "the killed run must fail:\n{}", text(&out));

    let out = kiln_run(dir.path(), &killed, 2, &["--resume"]);
    assert!(out.status.success(), "resume failed:\n{}", text(&out));
    let d = max_diff(&params(dir.path(), "full", 20), &params(dir.path(), "killed", 20));
    assert!(d <= 1e-6, "resumed run differs from the uninterrupted one by {d}");
}

#[test]
fn stop_request_checkpoints_exits_75_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let full = write_spec(dir.path(), &Job { name: "full", steps: 16, every: 0, ..Job::default() });
    assert!(kiln_run(dir.path(), &full, 2, &[]).status.success());

    // One rank alone receives the stop: all ranks must agree and stop at step 7.
    let stopped = write_spec(dir.path(), &Job { name: "stopped", steps: 16, every: 0, ..Job::default() });
    let mut c = kiln();
    c.current_dir(dir.path()).arg("run").arg(&stopped).args(["--ranks", "2"]).env("KILN_FAULT", "stop-rank:1:after-step:7");
    let out = run(&mut c);
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    assert!(text(&out).contains("--resume"), "{}", text(&out));
    params(dir.path(), "stopped", 7); // committed

    let out = kiln_run(dir.path(), &stopped, 2, &["--resume"]);
    assert!(out.status.success(), "{}", text(&out));
    let d = max_diff(&params(dir.path(), "full", 16), &params(dir.path(), "stopped", 16));
    assert!(d <= 1e-6, "differs by {d}");
}

#[test]
fn tampered_checkpoint_falls_back_to_the_previous_commit_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let full = write_spec(dir.path(), &Job { name: "full", steps: 15, every: 5, ..Job::default() });
    assert!(kiln_run(dir.path(), &full, 1, &[]).status.success());

    let part = write_spec(dir.path(), &Job { name: "part", steps: 15, every: 5, ..Job::default() });
    let mut c = kiln();
    c.current_dir(dir.path()).arg("run").arg(&part).args(["--ranks", "1"]).env("KILN_FAULT", "stop-rank:0:after-step:10");
    assert_eq!(run(&mut c).status.code(), Some(75));
    // Flip bytes in the newest checkpoint's model shard.
    let shard = dir.path().join("store/part/ckpt/step-0000000010/model.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xFF;
    bytes[n - 100] ^= 0xFF;
    std::fs::write(&shard, bytes).unwrap();

    let out = kiln_run(dir.path(), &part, 1, &["--resume"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("checkpoint step 10 is corrupt") && all.contains("resuming from step 5"), "{all}");
    let d = max_diff(&params(dir.path(), "full", 15), &params(dir.path(), "part", 15));
    assert!(d <= 1e-6, "differs by {d}");
}
