//! Bad input gets a clear message and a non-zero exit, never a panic, and loses
//! nothing.

mod common;
use common::*;

fn kiln_in(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut c = kiln();
    c.current_dir(dir).args(args);
    run(&mut c)
}

fn fails_with(out: &std::process::Output, needles: &[&str]) {
    let all = text(out);
    assert!(!out.status.success(), "expected failure:\n{all}");
    for n in needles {
        assert!(all.contains(n), "expected '{n}' in:\n{all}");
    }
}

#[test]
fn malformed_toml_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), &Job::default());
    let text = std::fs::read_to_string(&spec).unwrap().replace("[train]", "[train");
    std::fs::write(&spec, text).unwrap();
    fails_with(&kiln_in(dir.path(), &["run", spec.to_str().unwrap()]), &["t.toml:9:", "malformed TOML"]);
}

#[test]
fn unknown_field_names_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), &Job { extra_train: "stepz = 4", ..Job::default() });
    fails_with(&kiln_in(dir.path(), &["run", spec.to_str().unwrap()]), &["t.toml:", "stepz"]);
    // Inside the algorithm's own table too.
    let spec = write_spec(dir.path(), &Job::default());
    let text = std::fs::read_to_string(&spec).unwrap().replace("hidden = 32", "hiden = 32");
    let line = text.lines().position(|l| l.starts_with("hiden")).unwrap() + 1;
    std::fs::write(&spec, text).unwrap();
    fails_with(&kiln_in(dir.path(), &["run", spec.to_str().unwrap()]), &[&format!("t.toml:{line}: "), "`algorithm.hiden`"]);
    // A value out of range inside the algorithm's table.
    let text = std::fs::read_to_string(&spec).unwrap().replace("hiden = 32", "hidden = 0");
    std::fs::write(&spec, text).unwrap();
    fails_with(&kiln_in(dir.path(), &["run", spec.to_str().unwrap()]), &[&format!("t.toml:{line}: "), "`algorithm.hidden`", "between 1 and"]);
}

#[test]
fn unknown_algorithm_lists_the_known_ones() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), &Job { algorithm: "recsys.nope", ..Job::default() });
    fails_with(&kiln_in(dir.path(), &["run", spec.to_str().unwrap()]), &["unknown algorithm 'recsys.nope'", "recsys.mmoe", "recsys.shared-bottom"]);
    let out = kiln_in(dir.path(), &["algorithms"]);
    assert!(out.status.success() && text(&out).contains("recsys.mmoe"));
}

#[test]
fn zero_ranks_and_indivisible_batches_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), &Job::default());
    fails_with(&kiln_in(dir.path(), &["run", spec.to_str().unwrap(), "--ranks", "0"]), &["--ranks"]);
    fails_with(&kiln_in(dir.path(), &["run", spec.to_str().unwrap(), "--ranks", "5"]), &["global_batch (48)", "multiple of 5"]);
}

#[test]
fn bad_stores_fail_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), &Job::default());
    let text = std::fs::read_to_string(&spec).unwrap();
    let store_line = text.lines().find(|l| l.starts_with("store =")).unwrap().to_string();

    std::fs::write(&spec, text.replace(&store_line, "store = \"gopher://x/y\"")).unwrap();
    fails_with(&kiln_in(dir.path(), &["run", spec.to_str().unwrap()]), &["checkpoint.store", "gopher"]);

    std::fs::write(&spec, text.replace(&store_line, "store = \"file:///proc/kiln-nope\"")).unwrap();
    fails_with(&kiln_in(dir.path(), &["run", spec.to_str().unwrap()]), &["checkpoint.store", "/proc/kiln-nope"]);

    std::fs::write(&spec, text.replace(&store_line, "store = \"memory://\"")).unwrap();
    fails_with(&kiln_in(dir.path(), &["run", spec.to_str().unwrap(), "--ranks", "2"]), &["memory://", "cannot serve 2 ranks"]);
    assert!(!dir.path().join("runs/t/metrics.jsonl").exists(), "nothing may have trained");
}

#[test]
fn resume_without_checkpoint_and_rerun_over_an_existing_one_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), &Job { steps: 5, every: 0, ..Job::default() });
    fails_with(&kiln_in(dir.path(), &["run", spec.to_str().unwrap(), "--resume"]), &["nothing to resume", "without --resume"]);
    let out = kiln_in(dir.path(), &["run", spec.to_str().unwrap(), "--ranks", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    // A second fresh run must not silently overwrite the first one's checkpoints.
    fails_with(&kiln_in(dir.path(), &["run", spec.to_str().unwrap(), "--ranks", "1"]), &["already has checkpoints", "--resume"]);
    params(dir.path(), "t", 5);
}

#[test]
fn resume_with_a_different_world_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), &Job { steps: 10, every: 0, ..Job::default() });
    let mut c = kiln();
    c.current_dir(dir.path()).arg("run").arg(&spec).args(["--ranks", "2"]).env("KILN_FAULT", "stop-rank:0:after-step:4");
    assert_eq!(run(&mut c).status.code(), Some(75));
    fails_with(&kiln_in(dir.path(), &["run", spec.to_str().unwrap(), "--ranks", "3", "--resume"]), &["written by 2 ranks", "--ranks 2"]);
    // The checkpoint is untouched and still resumes with the right world size.
    let out = kiln_in(dir.path(), &["run", spec.to_str().unwrap(), "--ranks", "2", "--resume"]);
    assert!(out.status.success(), "{}", text(&out));
}
