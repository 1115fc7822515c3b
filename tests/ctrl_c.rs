//! Ctrl-C on `kiln run` stops all ranks at one step with a committed checkpoint
//! (exit code 75), and the run resumes from there.

mod common;
use common::*;
use std::time::{Duration, Instant};

#[test]
fn sigint_to_kiln_run_checkpoints_every_rank_and_resume_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), &Job { name: "long", steps: 1_000_000, every: 0, ..Job::default() });
    let child = kiln()
        .current_dir(dir.path())
        .arg("run")
        .arg(&spec)
        .args(["--ranks", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until training is visibly under way.
    let metrics = dir.path().join("runs/long/metrics.jsonl");
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_to_string(&metrics).map(|s| s.lines().count()).unwrap_or(0) < 3 {
        assert!(Instant::now() < deadline, "training did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: kill() with a live child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    let all = text(&out);
    assert!(!all.contains("panicked"), "{all}");
    assert_eq!(out.status.code(), Some(75), "{all}");
    assert!(all.contains("--resume"), "{all}");

    let ckpt = dir.path().join("store/long/ckpt");
    let steps: Vec<u64> = std::fs::read_dir(&ckpt)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("step-")?.parse().ok())
        .collect();
    assert_eq!(steps.len(), 1, "exactly one checkpoint, at the stop: {steps:?}");
    assert!(ckpt.join(format!("step-{:010}/COMMIT", steps[0])).exists());

    // Finish quickly: same run, fewer total steps than a million but past the stop.
    let text_spec = std::fs::read_to_string(&spec).unwrap().replace("steps = 1000000", &format!("steps = {}", steps[0] + 3));
    std::fs::write(&spec, text_spec).unwrap();
    let out = kiln_run(dir.path(), &spec, 2, &["--resume"]);
    assert!(out.status.success(), "{}", text(&out));
}
