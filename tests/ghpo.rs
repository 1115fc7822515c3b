//! The GHPO crate's trainers as kiln jobs: `ghpo.sft` learns the easy level
//! from scratch, runs the same on 1 and 2 ranks, and resumes exactly after a
//! rank is killed.

mod common;
use common::*;
use std::path::Path;

/// An SFT spec whose checkpoints go to `dir/store`.
fn sft(dir: &Path, name: &str, steps: u64, every: u64, extra: &str) -> std::path::PathBuf {
    let text = format!(
        r#"name = "{name}"

[checkpoint]
store = "{store}"
every = {every}
keep = 5

[train]
steps = {steps}
seed = 1
global_batch = 32
log_every = 10
eval_every = 0

[train.optimizer]
kind = "sgd"
lr = 0.05
momentum = 0.9

[algorithm]
name = "ghpo.sft"
train_levels = [1]
eval_levels = [1, 3]
eval_problems = 32
{extra}
"#,
        store = dir.join("store").display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn eval_of(dir: &Path, name: &str) -> serde_json::Value {
    let metrics = std::fs::read_to_string(dir.join("runs").join(name).join("metrics.jsonl")).unwrap();
    let last = metrics.lines().rev().find(|l| l.contains("\"eval\"")).expect("an eval line");
    serde_json::from_str(last).unwrap()
}

#[test]
fn sft_from_scratch_learns_the_easy_level() {
    let dir = tempfile::tempdir().unwrap();
    let spec = sft(dir.path(), "learn", 300, 0, "");
    let text = std::fs::read_to_string(&spec).unwrap().replace("kind = \"sgd\"\nlr = 0.05\nmomentum = 0.9", "kind = \"adamw\"\nlr = 0.003\nweight_decay = 0.01");
    std::fs::write(&spec, text).unwrap();
    let out = kiln_run(dir.path(), &spec, 1, &[]);
    assert!(out.status.success(), "{}", common::text(&out));
    let e = eval_of(dir.path(), "learn");
    // One-digit sums have 17 possible answers: chance is about 6 %.
    let l1 = e["accuracy_l1"].as_f64().unwrap();
    assert!(l1 >= 0.2, "level-1 accuracy after 300 steps: {l1} ({e})");
    assert!(e["format"].as_f64().unwrap() > 0.2, "{e}");
    assert!(e["accuracy_l3"].as_f64().unwrap() <= l1, "untrained harder level stays harder: {e}");
}

#[test]
fn sft_runs_the_same_on_one_and_two_ranks_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let one = sft(dir.path(), "one", 20, 0, "");
    assert!(kiln_run(dir.path(), &one, 1, &[]).status.success());
    let two = sft(dir.path(), "two", 20, 0, "");
    let out = kiln_run(dir.path(), &two, 2, &[]);
    assert!(out.status.success(), "{}", common::text(&out));
    let d = max_diff(&params(dir.path(), "one", 20), &params(dir.path(), "two", 20));
    assert!(d <= 1e-5, "2 ranks differ from 1 by {d}");

    let killed = sft(dir.path(), "killed", 20, 5, "");
    let mut c = kiln();
    c.current_dir(dir.path()).arg("run").arg(&killed).args(["--ranks", "2"]).env("KILN_FAULT", "kill-rank:1:after-step:12");
    assert!(!run(&mut c).status.success());
    let out = kiln_run(dir.path(), &killed, 2, &["--resume"]);
    assert!(out.status.success(), "{}", common::text(&out));
    let d = max_diff(&params(dir.path(), "killed", 20), &params(dir.path(), "two", 20));
    assert!(d <= 1e-6, "the resumed run differs by {d}");
}
