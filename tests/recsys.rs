//! The recommender models as kiln jobs: every model trains on 2 ranks with
//! per-(domain, task) metrics; M3oE's structure search moves its scalars (and
//! the fixed-structure mode does not), runs alike on 1 and 2 ranks and
//! resumes exactly; the per-cell loss gives 2 ranks = 1; the gathered (distributed) AUC
//! equals a single process's; `kiln sweep` tables models × seeds.

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
        // ESMM with learned uncertainty weights, STAR with the per-cell loss.
        let loss = match algo {
            "recsys.esmm" => "\nloss = \"uncertainty\"",
            "recsys.star" => "\nloss = \"cells\"\ntask_weights = [1.0, 2.0]",
            _ => "",
        };
        let s = spec(dir.path(), &Job { name: &name, steps: 6, every: 0, batch: 48, algorithm: algo, ..Job::default() }, &format!("funnel = true\ndomain_shift = 1.0{loss}"));
        let out = kiln_run(dir.path(), &s, 2, &[]);
        assert!(out.status.success(), "{algo}: {}", text(&out));
        let e = final_eval(dir.path(), &name);
        for k in ["auc_task0", "auc_task1", "auc_d0_task0", "auc_d2_task1", "logloss_d1_task0", "mean_cell_auc"] {
            assert!(e[k].as_f64().is_some_and(f64::is_finite), "{algo}: {k} in {e}");
        }
    }
    let rows = std::fs::read_to_string(dir.path().join("runs/recsys-aitm/metrics.jsonl")).unwrap();
    assert!(rows.contains("\"calibration\""), "AITM logs its calibrator");
    let rows = std::fs::read_to_string(dir.path().join("runs/recsys-esmm/metrics.jsonl")).unwrap();
    assert!(rows.contains("\"task_weight_task1\""), "uncertainty weighting logs its weights");
    let bad = spec(dir.path(), &Job { name: "bad", steps: 2, every: 0, batch: 48, ..Job::default() }, "loss = \"average\"");
    let out = kiln_run(dir.path(), &bad, 1, &[]);
    assert!(!out.status.success() && text(&out).contains("algorithm.loss"), "{}", text(&out));
}

#[test]
fn m3oe_searches_its_structure_the_same_on_one_and_two_ranks_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let search = "search_every = 2\nsearch_lr = 0.05\nsearch_batch = 256";
    let job = |name: &'static str, every: u64| Job { name, steps: 20, every, batch: 48, algorithm: "recsys.m3oe", optimizer: SGD, ..Job::default() };
    // The per-cell loss normalises by the whole step's domain counts, so 2
    // ranks equal 1 to float rounding (measured 1e-7 over 10 steps; later a
    // ReLU crossing zero can amplify rounding, as any run's can).
    for (name, ranks) in [("cells1", 1), ("cells2", 2)] {
        let cells = Job { steps: 10, ..job(name, 0) };
        let out = kiln_run(dir.path(), &spec(dir.path(), &cells, "search = false\nloss = \"cells\""), ranks, &[]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let (w, d) = worst(&params(dir.path(), "cells1", 10), &params(dir.path(), "cells2", 10));
    assert!(d <= 1e-5, "per-cell loss: 2 ranks differ from 1 by {d} ({w})");
    for (name, ranks) in [("one", 1), ("two", 2)] {
        let out = kiln_run(dir.path(), &spec(dir.path(), &job(name, 0), search), ranks, &[]);
        assert!(out.status.success(), "{}", text(&out));
    }
    // The search's Adam divides by the root of its second moment: a structure
    // gradient near zero turns last-bit differences between world sizes into
    // steps of up to search_lr, so this bound is looser (as for AdamW in
    // tests/ddp_equivalence.rs); the resume below is exact.
    let (w, d) = worst(&params(dir.path(), "one", 20), &params(dir.path(), "two", 20));
    assert!(d <= 1e-2, "2 ranks differ from 1 by {d} ({w})");
    let (one, two) = (final_eval(dir.path(), "one"), final_eval(dir.path(), "two"));
    let start = 1.0 / (1.0 + (-1.0f64).exp());
    for k in ["alpha_domain", "alpha_task", "beta_domain", "beta_task"] {
        let (a, b) = (one[k].as_f64().unwrap(), two[k].as_f64().unwrap());
        assert!((a - b).abs() < 1e-2, "{k}: {a} vs {b}");
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
    for k in ["auc_task0", "auc_task1", "auc_d0_task0", "auc_d1_task1", "mean_cell_auc"] {
        assert_eq!(a[k], b[k], "{k}: 1 vs 2 ranks");
        assert_eq!(a[k], c[k], "{k}: 1 vs 3 ranks");
    }
    // A score can differ in its last bit with the shard's batch size on some
    // CPU kernels (MKL held to AVX2: 3e-11 in the log-loss): the order, and
    // so the AUCs, stay exact; the log-loss is equal to 1e-9.
    for other in [&b, &c] {
        let (x, y) = (a["logloss_task0"].as_f64().unwrap(), other["logloss_task0"].as_f64().unwrap());
        assert!((x - y).abs() < 1e-9, "logloss_task0: {x} vs {y}");
    }
}

#[test]
fn a_sweep_runs_every_model_and_seed_and_tables_mean_and_std() {
    let dir = tempfile::tempdir().unwrap();
    let base = spec(dir.path(), &Job { name: "sw", steps: 4, every: 0, batch: 48, ..Job::default() }, "domain_shift = 1.0");
    let sweep = |extra: &[&str]| {
        let mut c = kiln();
        c.current_dir(dir.path()).arg("sweep").arg(&base).args(["--set", "algorithm.name=recsys.shared-bottom,recsys.star", "--seeds", "1,2", "--ranks", "1"]).args(extra);
        run(&mut c)
    };
    let out = sweep(&["--metrics", "auc_task*,mean_cell_auc"]);
    assert!(out.status.success(), "{}", text(&out));
    let table = std::fs::read_to_string(dir.path().join("runs/sw-sweep/sweep.md")).unwrap();
    assert!(table.contains("| algorithm.name | auc_task0 | auc_task1 | mean_cell_auc |"), "{table}");
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("| recsys.")).collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(rows.iter().all(|r| r.matches(" ± ").count() == 3), "{table}");
    for run in ["sw-recsys-shared-bottom-s1", "sw-recsys-shared-bottom-s2", "sw-recsys-star-s1", "sw-recsys-star-s2"] {
        assert!(dir.path().join("runs").join(run).join("summary.json").exists(), "{run}");
    }
    // Finished runs are not run again; the table is the same.
    let again = sweep(&["--metrics", "auc_task*,mean_cell_auc"]);
    assert!(again.status.success() && !text(&again).contains("sweep: sw-recsys"), "{}", text(&again));
    assert_eq!(std::fs::read_to_string(dir.path().join("runs/sw-sweep/sweep.md")).unwrap(), table);
    let bad = sweep(&["--metrics", "nope"]);
    assert!(!bad.status.success() && text(&bad).contains("matches no metric"), "{}", text(&bad));
    // An edited base spec does not silently reuse runs made from the old one.
    std::fs::write(&base, std::fs::read_to_string(&base).unwrap().replace("steps = 4", "steps = 5")).unwrap();
    let stale = sweep(&[]);
    assert!(!stale.status.success() && text(&stale).contains("was made from a different spec"), "{}", text(&stale));
}

#[test]
fn early_stopping_ends_a_run_where_its_metric_stopped_improving_even_across_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    // The oracle AUC never changes: best at the first evaluation (step 5), then
    // two stale evaluations (10, 15) end the run at step 15 of 100.
    let early = "eval_every = 5\n[train.early_stop]\nmetric = \"oracle_auc_task0\"\npatience = 2";
    let job = |name: &'static str| Job { name, steps: 100, every: 5, batch: 48, extra_train: early, optimizer: SGD, ..Job::default() };
    let plain = write_spec(dir.path(), &job("early"));
    let out = kiln_run(dir.path(), &plain, 2, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("runs/early/summary.json")).unwrap()).unwrap();
    assert_eq!(summary["early_stop"]["best_step"], 5, "{summary}");
    assert_eq!(summary["early_stop"]["stopped_at"], 15, "{summary}");
    assert!(dir.path().join("store/early/ckpt/step-0000000015").exists(), "the run commits where it stopped");
    assert!(!dir.path().join("store/early/ckpt/step-0000000020").exists());
    // A stopped run stays stopped when resumed.
    let out = kiln_run(dir.path(), &plain, 2, &["--resume"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!dir.path().join("store/early/ckpt/step-0000000020").exists(), "resuming a stopped run trains no further");
    // Killed after step 12, resumed from 10 (one stale evaluation so far): it stops at 15 too.
    let killed = write_spec(dir.path(), &job("early-killed"));
    kill_then_resume(dir.path(), &killed, 2, "kill-rank:1:after-step:12");
    assert!(dir.path().join("store/early-killed/ckpt/step-0000000015").exists() && !dir.path().join("store/early-killed/ckpt/step-0000000020").exists());
    let d = max_diff(&params(dir.path(), "early-killed", 15), &params(dir.path(), "early", 15));
    assert!(d <= 1e-6, "the resumed run differs by {d}");
    // A metric the evaluation does not have is named with the ones it has.
    let wrong = write_spec(dir.path(), &Job { name: "wrong", steps: 10, every: 0, batch: 48, extra_train: "eval_every = 5\n[train.early_stop]\nmetric = \"accuracy\"\npatience = 1", ..Job::default() });
    let out = kiln_run(dir.path(), &wrong, 1, &[]);
    assert!(!out.status.success() && text(&out).contains("'accuracy' is not one of the evaluation's metrics (auc_d0_task0"), "{}", text(&out));
    let no_eval = write_spec(dir.path(), &Job { name: "noeval", steps: 10, every: 0, batch: 48, extra_train: "[train.early_stop]\nmetric = \"auc_task0\"\npatience = 1", ..Job::default() });
    let out = kiln_run(dir.path(), &no_eval, 1, &[]);
    assert!(!out.status.success() && text(&out).contains("set train.eval_every"), "{}", text(&out));
}

#[test]
fn users_tables_train_as_jobs_through_the_presets_on_two_ranks_and_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ml-1m.csv");
    kiln_recsys::samples::movielens_1m(&file, 200, 100, 3000, 1).unwrap();
    let data = format!("\n[algorithm.data]\npreset = \"movielens-1m\"\nfile = \"{}\"", file.display());
    // M3oE with its search: metrics per (domain, task) named by the preset's
    // labels, on the validation split (plain keys) and the test split (test_).
    let m3oe = Job { name: "ml-m3oe", steps: 40, every: 0, batch: 120, algorithm: "recsys.m3oe", ..Job::default() };
    let out = kiln_run(dir.path(), &spec(dir.path(), &m3oe, &format!("search_every = 5\nsearch_batch = 100{data}")), 2, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let e = final_eval(dir.path(), "ml-m3oe");
    for k in ["auc_click", "auc_like", "auc_d0_click", "auc_d2_like", "logloss_d1_click", "mean_cell_auc", "test_auc_click", "test_mean_cell_auc", "alpha_domain"] {
        assert!(e[k].as_f64().is_some_and(f64::is_finite), "{k} in {e}");
    }
    assert!(e.get("oracle_auc_click").is_none(), "a table has no oracle");
    assert!(e["auc_click"].as_f64().unwrap() > 0.65, "2 epochs of the sample's signal: {e}");
    // 2 ranks = 1 over an epoch boundary (2400 training rows, 25 steps of 96),
    // and a run killed after step 22 resumes from 20 onto the same trajectory.
    let sb = |name: &'static str| Job { name, steps: 30, every: 10, batch: 96, algorithm: "recsys.shared-bottom", optimizer: SGD, ..Job::default() };
    for (name, ranks) in [("ml1", 1), ("ml2", 2)] {
        let out = kiln_run(dir.path(), &spec(dir.path(), &sb(name), &data), ranks, &[]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let (w, d) = worst(&params(dir.path(), "ml1", 30), &params(dir.path(), "ml2", 30));
    assert!(d <= 1e-5, "2 ranks differ from 1 by {d} ({w})");
    kill_then_resume(dir.path(), &spec(dir.path(), &sb("ml-killed"), &data), 2, "kill-rank:1:after-step:22");
    let d = max_diff(&params(dir.path(), "ml-killed", 30), &params(dir.path(), "ml2", 30));
    assert!(d <= 1e-6, "the resumed run differs by {d}");
    // KuaiRand's layout: three tasks, four tab domains, two joined feature files.
    let log = kiln_recsys::samples::kuairand(dir.path(), 100, 80, 2000, 2).unwrap();
    let kr = Job { name: "kr-mmoe", steps: 10, every: 0, batch: 96, algorithm: "recsys.mmoe", ..Job::default() };
    let extra = format!("loss = \"cells\"\ntask_weights = [1.0, 1.0, 2.0]\n[algorithm.data]\npreset = \"kuairand\"\nfile = \"{}\"", log.display());
    let out = kiln_run(dir.path(), &spec(dir.path(), &kr, &extra), 2, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let e = final_eval(dir.path(), "kr-mmoe");
    for k in ["auc_long_view", "auc_d3_like", "test_auc_click"] {
        assert!(e[k].as_f64().is_some_and(f64::is_finite), "{k} in {e}");
    }
    // Bad input: at submit (preset, weights per task) and when the file is read.
    let bad = |name: &'static str, extra: &str| {
        let out = kiln_run(dir.path(), &spec(dir.path(), &Job { name, steps: 2, every: 0, ..Job::default() }, extra), 1, &[]);
        assert!(!out.status.success());
        text(&out)
    };
    let t = bad("b1", &data.replace("movielens-1m", "movielens"));
    assert!(t.contains("algorithm.data") && t.contains("'movielens' is not one of movielens-1m, kuairand"), "{t}");
    let t = bad("b2", &format!("task_weights = [1.0, 2.0]\n[algorithm.data]\npreset = \"kuairand\"\nfile = \"{}\"", log.display()));
    assert!(t.contains("task_weights") && t.contains("needs 3 non-negative numbers"), "{t}");
    let t = bad("b3", &format!("{data}\nsparse = [\"user_id\", \"zipcode\"]"));
    assert!(t.contains("sparse field 'zipcode' is not a column of") && t.contains("its columns are: user_id, movie_id, rating"), "{t}");
}

#[test]
fn row_sparse_embedding_gradients_train_as_dense_ones_on_two_ranks_and_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let plain = "kind = \"sgd\"\nlr = 0.05";
    let job = |name: &'static str, optimizer: &'static str, every: u64| Job { name, steps: 12, every, batch: 48, algorithm: "recsys.mmoe", optimizer, ..Job::default() };
    // Plain SGD is the same update either way: sparse gradients synced as rows
    // (all-gather) equal dense ones all-reduced.
    for (name, extra) in [("dense", ""), ("sparse", "sparse_min_rows = 0")] {
        let out = kiln_run(dir.path(), &spec(dir.path(), &job(name, plain, 0), extra), 2, &[]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let (w, d) = worst(&params(dir.path(), "dense", 12), &params(dir.path(), "sparse", 12));
    assert!(d <= 1e-6, "sparse and dense gradients differ by {d} ({w})");
    // Momentum is lazy with sparse rows; still 2 ranks = 1, and a killed run resumes exactly.
    for (name, ranks) in [("lazy1", 1), ("lazy2", 2)] {
        let out = kiln_run(dir.path(), &spec(dir.path(), &job(name, SGD, 0), "sparse_min_rows = 0"), ranks, &[]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let (w, d) = worst(&params(dir.path(), "lazy1", 12), &params(dir.path(), "lazy2", 12));
    assert!(d <= 1e-5, "2 ranks differ from 1 by {d} ({w})");
    let d = max_diff(&params(dir.path(), "lazy2", 12), &params(dir.path(), "dense", 12));
    assert!(d > 1e-4, "lazy momentum is not plain SGD");
    kill_then_resume(dir.path(), &spec(dir.path(), &job("lazy-killed", SGD, 5), "sparse_min_rows = 0"), 2, "kill-rank:0:after-step:7");
    let d = max_diff(&params(dir.path(), "lazy-killed", 12), &params(dir.path(), "lazy2", 12));
    assert!(d <= 1e-6, "the resumed run differs by {d}");
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("runs/lazy2/summary.json")).unwrap()).unwrap();
    let peaks = summary["peak_rss_mb"].as_array().unwrap();
    assert!(peaks.len() == 2 && peaks.iter().all(|p| p.as_f64().is_some_and(|m| m > 10.0)), "{summary}");
}
