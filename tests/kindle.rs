//! KINDLE as kiln jobs on a simulated dataset with a known network: the
//! teacher and the student as separate jobs and as one `kindle` job on 2 ranks
//! report network metrics, 2 ranks equal 1 and a killed run resumes exactly
//! (across the switch from teacher to student), `kiln export` writes the
//! student's edge list, and bad settings are refused before training.

mod common;
use common::*;
use std::path::{Path, PathBuf};

fn simulate(dir: &Path) {
    let mut c = kiln();
    c.current_dir(dir).args(["grn", "simulate", "--out", "sim", "--seed", "2", "--settings", r#"{"genes": 15, "cells_per_trajectory": 400}"#]);
    let out = run(&mut c);
    assert!(out.status.success(), "{}", text(&out));
}

fn job(dir: &Path, name: &str, algo: &str, steps: u64, every: u64, extra: &str) -> PathBuf {
    let spec = format!(
        "name = \"{name}\"\n[checkpoint]\nstore = \"{store}\"\nevery = {every}\nkeep = 5\n[train]\nsteps = {steps}\nglobal_batch = 16\nseed = 1\nlog_every = 10\neval_every = 0\n\
         [train.optimizer]\nkind = \"adamw\"\nlr = 0.003\n[algorithm]\nname = \"{algo}\"\nexpression = \"sim/ExpressionData.csv\"\npseudotime = \"sim/PseudoTime.csv\"\n\
         prior = \"sim/prior.csv\"\ntruth = \"sim/refNetwork.csv\"\n{extra}\n",
        store = dir.join("store").display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, spec).unwrap();
    path
}


#[test]
fn teacher_then_student_on_two_ranks_with_network_metrics_and_an_exported_edge_list() {
    let dir = tempfile::tempdir().unwrap();
    simulate(dir.path());
    let teacher = job(dir.path(), "teacher", "kindle.teacher", 100, 100, "");
    let out = kiln_run(dir.path(), &teacher, 2, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let t = final_eval(dir.path(), "teacher");
    for k in ["val_mse", "auroc", "auprc_ratio", "epr", "topk_precision"] {
        assert!(t[k].as_f64().is_some_and(f64::is_finite), "{k}: {t}");
    }
    // The teacher's attention is confined to the prior, which holds most true
    // edges: its network beats absolute correlation on this dataset.
    let mut c = kiln();
    c.current_dir(dir.path()).args(["grn", "baseline", "--expression", "sim/ExpressionData.csv", "--method", "pearson", "--out", "p.csv"]);
    assert!(run(&mut c).status.success());
    let mut c = kiln();
    c.current_dir(dir.path()).args(["grn", "eval", "--truth", "sim/refNetwork.csv", "--edges", "p.csv", "--json"]);
    let pearson: serde_json::Value = serde_json::from_slice(&run(&mut c).stdout).unwrap();
    assert!(t["epr"].as_f64().unwrap() > pearson["epr"].as_f64().unwrap(), "teacher {t} vs Pearson {pearson}");

    // Knockout: under the hard mask, genes interact only along prior edges, so
    // with one prediction round through the 2 blocks nothing farther than 2
    // prior hops from the knocked genes can change, and their direct prior
    // targets do.
    let mut c = kiln();
    c.current_dir(dir.path()).arg("grn").arg("knockout").arg(&teacher).args(["--genes", "G1,G2", "--rollout", "1", "--out", "ko.csv"]);
    let out = run(&mut c);
    assert!(out.status.success() && text(&out).contains("(knocked out)"), "{}", text(&out));
    let change: std::collections::HashMap<String, f64> = std::fs::read_to_string(dir.path().join("ko.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].to_string(), f[3].parse().unwrap())
        })
        .collect();
    let prior: Vec<(String, String)> = std::fs::read_to_string(dir.path().join("sim/prior.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let (a, b) = l.split_once(',').unwrap();
            (a.to_string(), b.to_string())
        })
        .collect();
    let mut reach: std::collections::HashSet<String> = ["G1".to_string(), "G2".to_string()].into();
    let direct: Vec<String> = prior.iter().filter(|(a, _)| reach.contains(a)).map(|(_, b)| b.clone()).collect();
    for _ in 0..2 {
        let next: Vec<String> = prior.iter().filter(|(a, _)| reach.contains(a)).map(|(_, b)| b.clone()).collect();
        reach.extend(next);
    }
    for (g, d) in &change {
        if !reach.contains(g) {
            assert_eq!(*d, 0.0, "{g} is more than 2 prior hops from the knockout but changed by {d}");
        }
    }
    assert!(direct.iter().any(|g| change[g].abs() > 1e-4), "a direct prior target responds: {change:?}");
    let mut c = kiln();
    c.current_dir(dir.path()).arg("grn").arg("knockout").arg(&teacher).args(["--genes", "G99"]);
    let out = run(&mut c);
    assert!(!out.status.success() && text(&out).contains("gene G99 is not among the model's 15 genes"), "{}", text(&out));

    let init = dir.path().join("store/teacher/ckpt/step-0000000100/model.safetensors");
    let student = job(dir.path(), "student", "kindle.student", 40, 40, &format!("teacher = \"{}\"\ndistill = \"rbf\"\nalpha = 0.5", init.display()));
    let out = kiln_run(dir.path(), &student, 2, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let rows = std::fs::read_to_string(dir.path().join("runs/student/metrics.jsonl")).unwrap();
    assert!(rows.contains("\"distill\"") && rows.contains("\"prediction\""), "the student logs both loss terms");
    let mut c = kiln();
    c.current_dir(dir.path()).arg("export").arg(&student).args(["--out", "grn"]);
    let out = run(&mut c);
    assert!(out.status.success(), "{}", text(&out));
    let edges = std::fs::read_to_string(dir.path().join("grn/edges.csv")).unwrap();
    assert_eq!(edges.lines().count(), 1 + 15 * 14, "every ordered pair of the 15 genes, ranked");
}

#[test]
fn one_kindle_job_trains_the_teacher_then_the_student_and_reads_out_the_network() {
    let dir = tempfile::tempdir().unwrap();
    simulate(dir.path());
    let spec = job(dir.path(), "pipeline", "kindle", 60, 30, "teacher_steps = 30\ninput_mask = 0.5");
    let text_of = std::fs::read_to_string(&spec).unwrap().replace("eval_every = 0", "eval_every = 30");
    std::fs::write(&spec, text_of).unwrap();
    let out = kiln_run(dir.path(), &spec, 2, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(dir.path().join("runs/pipeline/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["kind"] == "eval")
        .collect();
    // After the teacher's 30 steps only the teacher is scored; at the end both.
    assert!(rows[0]["teacher_auroc"].is_f64() && rows[0].get("auroc").is_none(), "{}", rows[0]);
    let last = final_eval(dir.path(), "pipeline");
    for k in ["val_mse", "auroc", "auprc_ratio", "epr", "topk_precision", "teacher_val_mse", "teacher_auroc"] {
        assert!(last[k].as_f64().is_some_and(f64::is_finite), "{k}: {last}");
    }
    // The teacher stops changing when the student starts.
    assert_eq!(rows[0]["teacher_auroc"], last["teacher_auroc"], "the teacher is frozen in the student's stage");
    assert_eq!(rows[0]["teacher_val_mse"], last["teacher_val_mse"]);
    let train: String = std::fs::read_to_string(dir.path().join("runs/pipeline/metrics.jsonl")).unwrap();
    assert!(train.contains("\"distill\""), "the student's stage logs its distillation term");
    let mut c = kiln();
    c.current_dir(dir.path()).arg("export").arg(&spec).args(["--out", "grn"]);
    let out = run(&mut c);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(dir.path().join("grn/edges.csv")).unwrap().lines().count(), 1 + 15 * 14);
    let mut c = kiln();
    c.current_dir(dir.path()).arg("grn").arg("knockout").arg(&spec).args(["--genes", "G1"]);
    let out = run(&mut c);
    assert!(out.status.success() && text(&out).contains("(knocked out)"), "{}", text(&out));
}

#[test]
fn the_teacher_runs_the_same_on_one_and_two_ranks_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    simulate(dir.path());
    // SGD with momentum: AdamW would amplify the last-bit noise of gradients
    // that are exactly zero in theory (an attention key's bias shifts every
    // score of a row alike), as tests/ddp_equivalence.rs explains.
    let sgd = |spec: PathBuf| {
        let text = std::fs::read_to_string(&spec).unwrap().replace("kind = \"adamw\"\nlr = 0.003", "kind = \"sgd\"\nlr = 0.05\nmomentum = 0.9");
        std::fs::write(&spec, text).unwrap();
        spec
    };
    for (name, ranks) in [("one", 1), ("two", 2)] {
        let spec = sgd(job(dir.path(), name, "kindle.teacher", 20, 0, "mask = \"soft\""));
        let out = kiln_run(dir.path(), &spec, ranks, &[]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let (name, d) = worst(&params(dir.path(), "one", 20), &params(dir.path(), "two", 20));
    assert!(d <= 1e-5, "2 ranks differ from 1 by {d} ({name})");
    let killed = sgd(job(dir.path(), "killed", "kindle.teacher", 20, 5, "mask = \"soft\""));
    kill_then_resume(dir.path(), &killed, 2, "kill-rank:1:after-step:12");
    let d = max_diff(&params(dir.path(), "killed", 20), &params(dir.path(), "two", 20));
    assert!(d <= 1e-6, "the resumed run differs by {d}");

    // The same for a whole `kindle` job, with hidden inputs in the student's
    // stage, killed after the switch to the student and resumed.
    let both = "teacher_steps = 10\ninput_mask = 0.3\nalpha = 0.7";
    for (name, ranks) in [("one-k", 1), ("two-k", 2)] {
        let spec = sgd(job(dir.path(), name, "kindle", 20, 0, both));
        let out = kiln_run(dir.path(), &spec, ranks, &[]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let (name, d) = worst(&params(dir.path(), "one-k", 20), &params(dir.path(), "two-k", 20));
    assert!(d <= 1e-5, "kindle: 2 ranks differ from 1 by {d} ({name})");
    let killed = sgd(job(dir.path(), "killed-k", "kindle", 20, 5, both));
    kill_then_resume(dir.path(), &killed, 2, "kill-rank:1:after-step:12");
    let d = max_diff(&params(dir.path(), "killed-k", 20), &params(dir.path(), "two-k", 20));
    assert!(d <= 1e-6, "the resumed kindle job differs by {d}");
}

#[test]
fn kindle_jobs_refuse_bad_settings_before_training() {
    let dir = tempfile::tempdir().unwrap();
    simulate(dir.path());
    let refused = |name: &str, algo: &str, extra: &str, want: &str| {
        let spec = job(dir.path(), name, algo, 2, 0, extra);
        let out = kiln_run(dir.path(), &spec, 1, &[]);
        assert!(!out.status.success() && text(&out).contains(want), "{name}: {}", text(&out));
    };
    refused("long", "kindle.teacher", "window = 300\nhorizon = 200", "T + W = 500 cells exceeds the longest trajectory (400 cells)");
    refused("noteacher", "kindle.student", "", "the student needs the teacher's weights");
    refused("mask", "kindle.teacher", "mask = \"medium\"", "algorithm.mask");
    refused("nosplit", "kindle", "", "a kindle job needs teacher_steps");
    refused("split", "kindle", "teacher_steps = 2", "teacher_steps (2) must be at least 1 and below train.steps (2)");
    refused("stage", "kindle.teacher", "teacher_steps = 1", "teacher_steps is for `kindle` jobs");
    refused("hide", "kindle", "teacher_steps = 1\ninput_mask = 0.001", "algorithm.input_mask");
    std::fs::write(dir.path().join("other.csv"), "Gene1,Gene2\ng1,g2\n").unwrap();
    let spec = job(dir.path(), "prior", "kindle.teacher", 2, 0, "");
    std::fs::write(&spec, std::fs::read_to_string(&spec).unwrap().replace("sim/prior.csv", "other.csv")).unwrap();
    let out = kiln_run(dir.path(), &spec, 1, &[]);
    assert!(!out.status.success() && text(&out).contains("no edge joins two of the 15 selected genes"), "{}", text(&out));
}
