//! Deep metric learning as kiln jobs on scikit-learn's digits (exported by
//! bench/digits_export.py from the project's .venv): the learned Bregman
//! divergence trains on 2 ranks to retrieval well above chance, a proxy job
//! with its faster proxies resumes exactly after a killed rank, and bad data
//! is named with its file and line before anything trains.

mod common;
use common::*;
use std::path::{Path, PathBuf};

/// The digits CSV (and NPY pair), written into `dir`.
fn digits(dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let py = root.join(".venv/bin/python");
    let out = dir.join("digits.csv");
    let o = std::process::Command::new(&py).arg(root.join("bench/digits_export.py")).arg(&out).arg("--npy").output().unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", py.display()));
    assert!(o.status.success(), "{}", text(&o));
    out
}

fn job(dir: &Path, name: &str, steps: u64, every: u64, data: &str, algo: &str) -> PathBuf {
    let text = format!(
        "name = \"{name}\"\n[checkpoint]\nstore = \"{}\"\nevery = {every}\nkeep = 10\n[train]\nsteps = {steps}\nseed = 3\nglobal_batch = 64\nlog_every = 50\neval_every = {steps}\n[train.optimizer]\nkind = \"adamw\"\nlr = 0.001\nweight_decay = 0.0001\n[algorithm]\nname = \"metric.dml\"\n{algo}\n[algorithm.data]\n{data}\n",
        dir.join("store").display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_learned_bregman_divergence_trains_on_two_ranks_and_a_proxy_job_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let csv = digits(dir.path());
    let data = format!("csv = \"{}\"\nholdout = \"samples\"", csv.display());
    let out = kiln_run(dir.path(), &job(dir.path(), "bregman", 500, 0, &data, "divergence = \"bregman\"\nloss = \"triplet\""), 2, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let e = final_eval(dir.path(), "bregman");
    eprintln!("metric.dml (bregman, triplet, digits, sample holdout): {e}");
    // Half of each class (rounded) is searched: 901 queries. Chance: recall@1 ≈ 0.1.
    assert_eq!(e["queries"].as_f64(), Some(901.0), "{e}");
    assert!(e["recall@1"].as_f64().unwrap() > 0.9 && e["map@r"].as_f64().unwrap() > 0.7, "{e}");
    let metrics = std::fs::read_to_string(dir.path().join("runs/bregman/metrics.jsonl")).unwrap();
    let gap: Vec<f64> = metrics.lines().filter(|l| l.contains("\"d_neg\"")).map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).map(|m| m["d_neg"].as_f64().unwrap() - m["d_pos"].as_f64().unwrap()).collect();
    assert!(gap.len() >= 2 && gap[gap.len() - 1] > gap[0], "the divergence does not separate the classes more: {gap:?}");
    // The NPY pair and a class holdout; killed after step 40 and resumed from 20.
    let npy = format!("npy_features = \"{}\"\nnpy_labels = \"{}\"", dir.path().join("digits-x.npy").display(), dir.path().join("digits-y.npy").display());
    let algo = "divergence = \"bregman\"\nloss = \"proxy\"\nproxy_lr_scale = 10.0";
    let d = resume_gap(dir.path(), "proxy", 2, "kill-rank:1:after-step:40", 60, |name| job(dir.path(), name, 60, 20, &npy, algo));
    assert!(d <= 1e-6, "the resumed proxy job differs by {d}");
    assert_eq!(final_eval(dir.path(), "proxy-killed"), final_eval(dir.path(), "proxy-full"));
}

#[test]
fn bad_data_is_named_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let csv = digits(dir.path());
    let spec = job(dir.path(), "bad", 10, 0, &format!("csv = \"{}\"\nlabel_column = \"digit\"", csv.display()), "");
    let out = kiln_run(dir.path(), &spec, 1, &[]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("digits.csv") && t.contains("no column 'digit'") && t.contains("label_column"), "{t}");
    let spec = job(dir.path(), "bad-phi", 10, 0, &format!("csv = \"{}\"", csv.display()), "[algorithm.phi]\nepsilon = 0.0");
    let t = text(&kiln_run(dir.path(), &spec, 1, &[]));
    assert!(t.contains("bad-phi.toml") && t.contains("algorithm.phi.epsilon") && t.contains("must be > 0"), "{t}");
}
