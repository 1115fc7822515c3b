//! The recommender models as kiln jobs: every model trains on 2 ranks with
//! per-(domain, task) metrics; M3oE's structure search moves its scalars (and
//! the fixed-structure mode does not), runs the same on 1 and 2 ranks and
//! resumes exactly; the gathered (distributed) AUC equals a single process's.

mod common;
use common::*;
use std::path::{Path, PathBuf};

/// A job of `algo` with extra `[algorithm]` keys (the table is the spec's last).
fn spec(dir: &Path, job: &Job, extra: &str) -> PathBuf {
    let path = write_spec(dir, job);
    let text = std::fs::read_to_string(&path).unwrap() + extra + "\n";
    std::fs::write(&path, text).unwrap();
    path
}


#[test]
fn every_model_trains_as_a_job_on_two_ranks_with_per_cell_metrics() {
    let dir = tempfile::tempdir().unwrap();
    for algo in ["recsys.ple", "recsys.esmm", "recsys.aitm", "recsys.star", "recsys.m3oe"] {
        let name = algo.replace('.', "-");
        let s = spec(dir.path(), &Job { name: &name, steps: 6, every: 0, batch: 48, algorithm: algo, ..Job::default() }, "funnel = true\ndomain_shift = 1.0");
        let out = kiln_run(dir.path(), &s, 2, &[]);
        assert!(out.status.success(), "{algo}: {}", text(&out));
        let e = final_eval(dir.path(), &name);
        for k in ["auc_task0", "auc_task1", "auc_d0_task0", "auc_d2_task1", "logloss_d1_task0", "mean_cell_auc"] {
            assert!(e[k].as_f64().is_some_and(f64::is_finite), "{algo}: {k} in {e}");
        }
    }
    let rows = std::fs::read_to_string(dir.path().join("runs/recsys-aitm/metrics.jsonl")).unwrap();
    assert!(rows.contains("\"calibration\""), "AITM logs its calibrator");
}

#[test]
fn m3oe_searches_its_structure_the_same_on_one_and_two_ranks_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let search = "search_every = 2\nsearch_lr = 0.05\nsearch_batch = 256";
    let job = |name: &'static str, every: u64| Job { name, steps: 20, every, batch: 48, algorithm: "recsys.m3oe", optimizer: SGD, ..Job::default() };
    for (name, ranks) in [("one", 1), ("two", 2)] {
        let out = kiln_run(dir.path(), &spec(dir.path(), &job(name, 0), search), ranks, &[]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let (w, d) = worst(&params(dir.path(), "one", 20), &params(dir.path(), "two", 20));
    assert!(d <= 1e-5, "2 ranks differ from 1 by {d} ({w})");
    let (one, two) = (final_eval(dir.path(), "one"), final_eval(dir.path(), "two"));
    let start = 1.0 / (1.0 + (-1.0f64).exp());
    for k in ["alpha_domain", "alpha_task", "beta_domain", "beta_task"] {
        let (a, b) = (one[k].as_f64().unwrap(), two[k].as_f64().unwrap());
        assert!((a - b).abs() < 1e-5, "{k}: {a} vs {b}");
        assert!((a - start).abs() > 1e-3, "{k} did not move under search: {a}");
    }
    // Fixed structure: the scalars stay where they start.
    let out = kiln_run(dir.path(), &spec(dir.path(), &job("fixed", 0), "search = false"), 1, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!((final_eval(dir.path(), "fixed")["alpha_domain"].as_f64().unwrap() - start).abs() < 1e-6);
    // Killed after step 12, resumed from step 10: the same parameters and the same structure.
    let killed = spec(dir.path(), &job("killed", 5), search);
    kill_then_resume(dir.path(), &killed, 2, "kill-rank:1:after-step:12");
    let d = max_diff(&params(dir.path(), "killed", 20), &params(dir.path(), "two", 20));
    assert!(d <= 1e-6, "the resumed run differs by {d}");
    let k = final_eval(dir.path(), "killed");
    for key in ["alpha_domain", "beta_task"] {
        assert_eq!(k[key], two[key], "{key} after the resume");
    }
}

#[test]
fn the_gathered_auc_equals_a_single_process_auc_exactly() {
    // One SGD step with a learning rate too small to change any weight that
    // matters (zero biases move by ~1e-30, lost in any sum) leaves every world
    // size with the same scores; AUC and log-loss over the gathered scores must then be equal
    // bit for bit, per task and per (domain, task) cell.
    let dir = tempfile::tempdir().unwrap();
    for (name, ranks) in [("auc1", 1), ("auc2", 2), ("auc3", 3)] {
        let job = Job { name, steps: 1, every: 0, batch: 48, algorithm: "recsys.star", optimizer: "kind = \"sgd\"\nlr = 1e-30", ..Job::default() };
        let out = kiln_run(dir.path(), &spec(dir.path(), &job, "domain_shift = 1.0"), ranks, &[]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let (a, b, c) = (final_eval(dir.path(), "auc1"), final_eval(dir.path(), "auc2"), final_eval(dir.path(), "auc3"));
    assert_eq!(params(dir.path(), "auc1", 1).len(), params(dir.path(), "auc3", 1).len());
    let d = max_diff(&params(dir.path(), "auc1", 1), &params(dir.path(), "auc3", 1));
    assert!(d < 1e-20, "the parameters must be (all but) identical for this test: {d}");
    for k in ["auc_task0", "auc_task1", "auc_d0_task0", "auc_d1_task1", "logloss_task0", "mean_cell_auc"] {
        assert_eq!(a[k], b[k], "{k}: 1 vs 2 ranks");
        assert_eq!(a[k], c[k], "{k}: 1 vs 3 ranks");
    }
}
