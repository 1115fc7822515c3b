//! The GHPO crate's trainers as kiln jobs: `ghpo.sft` learns the easy level
//! from scratch, runs the same on 1 and 2 ranks, and resumes exactly after a
//! rank is killed.

mod common;
use common::*;
use std::path::Path;

/// Writes `dir/<name>.toml`: checkpoints to `dir/store`, 32 samples per step,
/// no periodic evaluation; `train` and `algorithm` are the variable parts.
fn write_job(dir: &Path, name: &str, steps: u64, every: u64, train: &str, algorithm: &str) -> std::path::PathBuf {
    let text = format!(
        "name = \"{name}\"\n\n[checkpoint]\nstore = \"{store}\"\nevery = {every}\nkeep = 5\n\n\
         [train]\nsteps = {steps}\nglobal_batch = 32\neval_every = 0\n{train}\n\n[algorithm]\n{algorithm}\n",
        store = dir.join("store").display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// An SFT spec.
fn sft(dir: &Path, name: &str, steps: u64, every: u64, extra: &str) -> std::path::PathBuf {
    let train = "seed = 1\nlog_every = 10\n\n[train.optimizer]\nkind = \"sgd\"\nlr = 0.05\nmomentum = 0.9";
    let algorithm = format!("name = \"ghpo.sft\"\ntrain_levels = [1]\neval_levels = [1, 3]\neval_problems = 32\n{extra}");
    write_job(dir, name, steps, every, train, &algorithm)
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

/// A GRPO/GHPO spec starting from `init`, checkpoints every `every` steps.
fn rl(dir: &Path, name: &str, algo: &str, init: &Path, steps: u64, every: u64) -> std::path::PathBuf {
    let train = "seed = 3\nlog_every = 1\n\n[train.optimizer]\nkind = \"adamw\"\nlr = 0.0005";
    let algorithm = format!(
        "name = \"{algo}\"\ninit = \"{}\"\ntrain_levels = [1, 2, 3]\neval_levels = [1]\neval_problems = 8\ngroup_size = 8\nmax_new_tokens = 32",
        init.display()
    );
    write_job(dir, name, steps, every, train, &algorithm)
}

fn train_rows(dir: &Path, name: &str) -> Vec<serde_json::Value> {
    let metrics = std::fs::read_to_string(dir.join("runs").join(name).join("metrics.jsonl")).unwrap();
    metrics.lines().filter(|l| l.contains("\"train\"")).map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn grpo_and_ghpo_train_from_the_warm_up_on_two_ranks_log_their_diagnostics_and_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let warm = sft(dir.path(), "warm", 40, 40, "");
    assert!(kiln_run(dir.path(), &warm, 1, &[]).status.success());
    let init = dir.path().join("store/warm/ckpt/step-0000000040/model.safetensors");
    assert!(init.exists());

    let ghpo = rl(dir.path(), "ghpo", "ghpo.ghpo", &init, 6, 2);
    let out = kiln_run(dir.path(), &ghpo, 2, &[]);
    assert!(out.status.success(), "{}", common::text(&out));
    for row in train_rows(dir.path(), "ghpo") {
        let shares: f64 = ["hinted_00", "hinted_25", "hinted_50", "hinted_75"].iter().map(|k| row[k].as_f64().unwrap()).sum();
        assert!((shares - 1.0).abs() < 1e-9, "hint shares sum to 1: {row}");
        for k in ["accuracy", "zero_adv_groups", "response_len"] {
            assert!(row[k].as_f64().is_some(), "{k} missing: {row}");
        }
    }
    let grpo = rl(dir.path(), "grpo", "ghpo.grpo", &init, 2, 0);
    assert!(kiln_run(dir.path(), &grpo, 2, &[]).status.success());
    assert!(train_rows(dir.path(), "grpo").iter().all(|r| r.get("hinted_00").is_none()), "GRPO gives no hints");

    // Rollouts are a pure function of (seed, step, rank): a killed and resumed
    // run ends where the uninterrupted one does.
    let killed = rl(dir.path(), "ghpo-killed", "ghpo.ghpo", &init, 6, 2);
    let mut c = kiln();
    c.current_dir(dir.path()).arg("run").arg(&killed).args(["--ranks", "2"]).env("KILN_FAULT", "kill-rank:1:after-step:3");
    assert!(!run(&mut c).status.success());
    let out = kiln_run(dir.path(), &killed, 2, &["--resume"]);
    assert!(out.status.success(), "{}", common::text(&out));
    let d = max_diff(&params(dir.path(), "ghpo-killed", 6), &params(dir.path(), "ghpo", 6));
    assert!(d <= 1e-6, "the resumed GHPO run differs by {d}");
}

#[test]
fn rl_jobs_refuse_bad_settings_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let init = dir.path().join("none.safetensors");
    let spec = rl(dir.path(), "bad", "ghpo.grpo", &init, 2, 0);
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(&spec, text.replace("group_size = 8", "group_size = 12")).unwrap();
    let out = kiln_run(dir.path(), &spec, 1, &[]);
    assert!(!out.status.success() && common::text(&out).contains("whole number of groups of 12"), "{}", common::text(&out));
    std::fs::write(&spec, text.clone()).unwrap();
    let out = kiln_run(dir.path(), &spec, 1, &[]);
    assert!(!out.status.success() && common::text(&out).contains("none.safetensors"), "{}", common::text(&out));
    std::fs::write(&spec, text.replace("group_size = 8", "group_size = 8\nloss = \"mean\"")).unwrap();
    let out = kiln_run(dir.path(), &spec, 1, &[]);
    assert!(!out.status.success() && common::text(&out).contains("algorithm.loss"), "{}", common::text(&out));
}
