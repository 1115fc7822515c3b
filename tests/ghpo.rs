//! The GHPO crate's trainers as kiln jobs: `ghpo.sft` learns the easy level
//! from scratch, runs the same on 1 and 2 ranks, and resumes exactly after a
//! rank is killed; GRPO and GHPO train from the warm-up (or its export as a
//! Hugging Face folder), with groups split over ranks, several updates per
//! batch, a KL reference and a curriculum, and resume exactly — inside a
//! batch's updates too.

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
    rl_with(dir, name, algo, &format!("init = \"{}\"", init.display()), steps, every, "")
}

/// A GRPO/GHPO spec with `policy` lines choosing the start and `extra` settings.
fn rl_with(dir: &Path, name: &str, algo: &str, policy: &str, steps: u64, every: u64, extra: &str) -> std::path::PathBuf {
    let train = "seed = 3\nlog_every = 1\n\n[train.optimizer]\nkind = \"adamw\"\nlr = 0.0005";
    let algorithm = format!(
        "name = \"{algo}\"\n{policy}\ntrain_levels = [1, 2, 3]\neval_levels = [1]\neval_problems = 8\ngroup_size = 8\nmax_new_tokens = 32\n{extra}"
    );
    write_job(dir, name, steps, every, train, &algorithm)
}

/// A 40-step warm-up in `dir` (AdamW: enough for some formatted and some
/// correct answers, so rewards differ within groups); returns its final
/// weights file.
fn warm_up(dir: &Path) -> std::path::PathBuf {
    let warm = sft(dir, "warm", 40, 40, "");
    let text = std::fs::read_to_string(&warm).unwrap().replace("kind = \"sgd\"\nlr = 0.05\nmomentum = 0.9", "kind = \"adamw\"\nlr = 0.003\nweight_decay = 0.01");
    std::fs::write(&warm, text).unwrap();
    let out = kiln_run(dir, &warm, 1, &[]);
    assert!(out.status.success(), "{}", common::text(&out));
    let init = dir.join("store/warm/ckpt/step-0000000040/model.safetensors");
    assert!(init.exists());
    init
}

fn train_rows(dir: &Path, name: &str) -> Vec<serde_json::Value> {
    let metrics = std::fs::read_to_string(dir.join("runs").join(name).join("metrics.jsonl")).unwrap();
    metrics.lines().filter(|l| l.contains("\"train\"")).map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn grpo_and_ghpo_train_from_the_warm_up_on_two_ranks_log_their_diagnostics_and_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let init = warm_up(dir.path());

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
    for f in ["eval.png", "diagnostics.png"] {
        assert!(dir.path().join("runs/ghpo").join(f).exists(), "the report plots {f}");
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

    // From scratch (no init): prompts that leave no room for the completion.
    let scratch = text.lines().filter(|l| !l.starts_with("init")).collect::<Vec<_>>().join("\n");
    std::fs::write(&spec, scratch.replace("max_new_tokens = 32", "max_new_tokens = 500")).unwrap();
    let out = kiln_run(dir.path(), &spec, 1, &[]);
    assert!(!out.status.success() && common::text(&out).contains("exceeds the model's context of 512"), "{}", common::text(&out));

    // A JSONL line without the configured fields, by line number.
    let jsonl = dir.path().join("problems.jsonl");
    std::fs::write(&jsonl, "{\"question\": \"1+1?\", \"answer\": \"#### 2\"}\n{\"question\": \"2+2?\"}\n").unwrap();
    std::fs::write(&spec, format!("{scratch}\n\n[algorithm.data]\ntrain = \"{}\"\nlayout = \"gsm8k\"\n", jsonl.display())).unwrap();
    let out = kiln_run(dir.path(), &spec, 1, &[]);
    assert!(!out.status.success() && common::text(&out).contains("problems.jsonl:2: no field 'answer'"), "{}", common::text(&out));
}

#[test]
fn several_updates_per_batch_with_a_kl_reference_resume_inside_a_batch_and_split_groups_match_one_rank() {
    let dir = tempfile::tempdir().unwrap();
    let init = warm_up(dir.path());
    let policy = format!("init = \"{}\"", init.display());
    // One group of 32 per batch: on 2 ranks each generates half of it. Two
    // updates per batch; a KL to the warm-up; levels climbed over the run.
    let extra = "updates_per_batch = 2\nbeta = 0.05\norder = \"curriculum\"";
    let spec = |name: &str| {
        let s = rl_with(dir.path(), name, "ghpo.grpo", &policy, 6, 3, extra);
        let text = std::fs::read_to_string(&s).unwrap().replace("group_size = 8", "group_size = 32");
        std::fs::write(&s, text).unwrap();
        s
    };
    let two = spec("mu-two");
    let out = kiln_run(dir.path(), &two, 2, &[]);
    assert!(out.status.success(), "{}", common::text(&out));
    let rows = train_rows(dir.path(), "mu-two");
    assert!(rows.iter().all(|r| r["kl"].as_f64().is_some_and(|k| k >= 0.0)), "kl logged: {rows:?}");
    assert!(rows[1]["kl"].as_f64().unwrap() > 0.0, "the policy has moved from the reference after one update: {:?}", rows[1]);
    // Rollout time is spent on a batch's first update only.
    assert!(rows[0]["rollout_s"].as_f64().unwrap() > 0.0 && rows[1]["rollout_s"].as_f64().unwrap() == 0.0, "{rows:?}");
    // Step 3 is inside the batch of steps 2–3: its commit carries that batch's policy.
    assert!(dir.path().join("store/mu-two/ckpt/step-0000000003/algorithm.safetensors").exists());

    let one = spec("mu-one");
    let out = kiln_run(dir.path(), &one, 1, &[]);
    assert!(out.status.success(), "{}", common::text(&out));
    let (name, d) = common::worst(&params(dir.path(), "mu-one", 6), &params(dir.path(), "mu-two", 6));
    assert!(d <= 1e-5, "groups split over 2 ranks differ from 1 rank by {d} ({name})");

    let killed = spec("mu-killed");
    let mut c = kiln();
    c.current_dir(dir.path()).arg("run").arg(&killed).args(["--ranks", "2"]).env("KILN_FAULT", "kill-rank:1:after-step:4");
    assert!(!run(&mut c).status.success());
    let out = kiln_run(dir.path(), &killed, 2, &["--resume"]);
    assert!(out.status.success(), "{}", common::text(&out));
    let d = max_diff(&params(dir.path(), "mu-killed", 6), &params(dir.path(), "mu-two", 6));
    assert!(d <= 1e-6, "resumed inside a batch, the run differs by {d}");
}

fn python(args: &[&str]) -> std::process::Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let py = root.join(".venv/bin/python");
    std::process::Command::new(&py)
        .arg(root.join("scripts/qwen2_reference.py"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", py.display()))
}

#[test]
fn an_exported_warm_up_loads_in_transformers_and_trains_as_a_hugging_face_policy() {
    let dir = tempfile::tempdir().unwrap();
    let init = warm_up(dir.path());
    let warm = dir.path().join("warm.toml");
    let hf = dir.path().join("hf");
    let mut c = kiln();
    c.current_dir(dir.path()).arg("export").arg(&warm).arg("--out").arg(&hf);
    let out = run(&mut c);
    assert!(out.status.success(), "{}", common::text(&out));
    for f in ["config.json", "model.safetensors", "tokenizer.json", "generation_config.json"] {
        assert!(hf.join(f).exists(), "{f} missing");
    }
    let out = run(&mut c);
    assert!(!out.status.success() && common::text(&out).contains("already exists"), "{}", common::text(&out));

    // transformers, reading the folder as a user would, tokenizes and greedily
    // continues a prompt exactly as kiln does.
    let prompt = "Ana has 3 apples and gets 4 more. How many apples does Ana have?\n";
    let out = python(&["folder-greedy", hf.to_str().unwrap(), prompt, "12"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let theirs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tok = kiln_ghpo::tokenizer::Tokenizer::from_file(&hf.join("tokenizer.json")).unwrap();
    let model = kiln_ghpo::model::io::load(&hf, tch::Device::Cpu, tch::Kind::Float).unwrap();
    let ids = tok.encode(prompt).unwrap();
    assert_eq!(serde_json::json!(ids), theirs["prompt"]);
    let p = kiln_ghpo::generate::SamplingParams { temperature: 0.0, max_new_tokens: 12, ..Default::default() };
    let ours = kiln_ghpo::generate::generate(&model, &[ids], 0, &p);
    assert_eq!(serde_json::json!(ours[0].tokens), theirs["new"]);

    // RL from the folder is RL from the warm-up's weights.
    let a = rl_with(dir.path(), "from-init", "ghpo.ghpo", &format!("init = \"{}\"", init.display()), 2, 0, "");
    let b = rl_with(dir.path(), "from-dir", "ghpo.ghpo", &format!("model_dir = \"{}\"\nprompt_template = \"{{user}}\\n\"", hf.display()), 2, 0, "");
    for spec in [&a, &b] {
        let out = kiln_run(dir.path(), spec, 1, &[]);
        assert!(out.status.success(), "{}", common::text(&out));
    }
    let d = max_diff(&params(dir.path(), "from-init", 2), &params(dir.path(), "from-dir", 2));
    assert!(d <= 1e-6, "the Hugging Face policy trains differently by {d}");

    // A tokenizer that does not fit the model's vocabulary is refused.
    let small = dir.path().join("small");
    let out = python(&["make", small.to_str().unwrap(), "tied", "single"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::copy(hf.join("tokenizer.json"), small.join("tokenizer.json")).unwrap();
    let bad = rl_with(dir.path(), "bad-vocab", "ghpo.grpo", &format!("model_dir = \"{}\"", small.display()), 2, 0, "");
    let out = kiln_run(dir.path(), &bad, 1, &[]);
    assert!(!out.status.success() && common::text(&out).contains("vocab_size is 97"), "{}", common::text(&out));
}
