//! KINDLE's stages as kiln jobs on a simulated dataset with a known network:
//! the teacher and the student train on 2 ranks and report network metrics,
//! 2 ranks equal 1, a killed run resumes exactly, `kiln export` writes the
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

fn final_eval(dir: &Path, name: &str) -> serde_json::Value {
    let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("runs").join(name).join("summary.json")).unwrap()).unwrap();
    s["final_eval"].clone()
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
    let mut c = kiln();
    c.current_dir(dir.path()).arg("run").arg(&killed).args(["--ranks", "2"]).env("KILN_FAULT", "kill-rank:1:after-step:12");
    assert!(!run(&mut c).status.success());
    let out = kiln_run(dir.path(), &killed, 2, &["--resume"]);
    assert!(out.status.success(), "{}", text(&out));
    let d = max_diff(&params(dir.path(), "killed", 20), &params(dir.path(), "two", 20));
    assert!(d <= 1e-6, "the resumed run differs by {d}");
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
    std::fs::write(dir.path().join("other.csv"), "Gene1,Gene2\ng1,g2\n").unwrap();
    let spec = job(dir.path(), "prior", "kindle.teacher", 2, 0, "");
    std::fs::write(&spec, std::fs::read_to_string(&spec).unwrap().replace("sim/prior.csv", "other.csv")).unwrap();
    let out = kiln_run(dir.path(), &spec, 1, &[]);
    assert!(!out.status.success() && text(&out).contains("no edge joins two of the 15 selected genes"), "{}", text(&out));
}
