//! `kiln grn` on BEELINE-layout files the test writes: a correlation baseline
//! recovers a network whose genes follow their regulators, the metrics come out
//! as both protocols, and bad input is refused with what to fix. An opt-in
//! test (`--ignored`) checks the numbers on the shared BEELINE data.

mod common;
use common::*;
use std::path::{Path, PathBuf};

/// A 6-gene chain g1 → g2 → … → g6 over 300 cells: each gene is its
/// regulator plus noise, so neighbours correlate most.
fn chain(dir: &Path) -> (PathBuf, PathBuf) {
    let mut state = 7u64;
    let mut noise = || {
        state = kiln_worker::rng::splitmix(state);
        kiln_worker::rng::unit(state) - 0.5
    };
    let cells = 300;
    let mut rows: Vec<Vec<f64>> = vec![(0..cells).map(|_| noise() * 4.0).collect()];
    for _ in 1..6 {
        let prev = rows.last().unwrap().clone();
        rows.push(prev.iter().map(|x| x + noise()).collect());
    }
    let mut text = String::new();
    for c in 0..cells {
        text += &format!(",c{c}");
    }
    text += "\n";
    for (g, r) in rows.iter().enumerate() {
        text += &format!("g{}", g + 1);
        for x in r {
            text += &format!(",{x}");
        }
        text += "\n";
    }
    let expr = dir.join("ExpressionData.csv");
    std::fs::write(&expr, text).unwrap();
    let net = dir.join("refNetwork.csv");
    std::fs::write(&net, "Gene1,Gene2,Type\ng1,g2,+\ng2,g3,+\ng3,g4,+\ng4,g5,+\ng5,g6,+\n").unwrap();
    (expr, net)
}

fn grn(dir: &Path, args: &[&str]) -> std::process::Output {
    let mut c = kiln();
    c.current_dir(dir).arg("grn").args(args);
    run(&mut c)
}

#[test]
fn a_correlation_baseline_recovers_a_chain_and_both_protocols_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (expr, net) = chain(dir.path());
    let e = expr.to_str().unwrap();
    let out = grn(dir.path(), &["baseline", "--expression", e, "--method", "pearson", "--out", "p.csv"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = grn(dir.path(), &["eval", "--truth", net.to_str().unwrap(), "--edges", "p.csv", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // 30 ordered pairs, 5 true. Correlation is symmetric, so each true edge
    // ties with its reverse: the top 10 hold all 5 (early precision 1/2).
    assert_eq!((v["universe_pairs"].as_u64(), v["true_edges"].as_u64()), (Some(30), Some(5)));
    assert!((v["early_precision"].as_f64().unwrap() - 0.5).abs() < 1e-12, "{v}");
    assert!((v["epr"].as_f64().unwrap() - 3.0).abs() < 1e-12, "{v}");
    // Each true edge shares its score with one false edge (its reverse): the
    // ROC curve climbs diagonally over those 5 of 25 negatives, 1 − 0.5 · 5/25.
    assert!((v["auroc"].as_f64().unwrap() - 0.9).abs() < 1e-12, "{v}");
    let random = grn(dir.path(), &["baseline", "--expression", e, "--method", "random", "--seed", "3", "--out", "r.csv"]);
    assert!(random.status.success());
    let out = grn(dir.path(), &["eval", "--truth", net.to_str().unwrap(), "--edges", "r.csv"]);
    let t = text(&out);
    assert!(out.status.success() && t.contains("BEELINE:") && t.contains("top-k (KINDLE's protocol, k = 5)"), "{t}");
    let prior = grn(dir.path(), &["baseline", "--expression", e, "--method", "prior-random", "--prior", net.to_str().unwrap(), "--out", "pr.csv"]);
    assert!(prior.status.success());
    let out = grn(dir.path(), &["eval", "--truth", net.to_str().unwrap(), "--edges", "pr.csv", "--universe", "tf", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["topk"]["precision"].as_f64(), Some(1.0), "the prior is the truth here: {v}");
}

#[test]
fn bad_grn_input_is_refused_with_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let (expr, net) = chain(dir.path());
    let (e, n) = (expr.to_str().unwrap(), net.to_str().unwrap());
    let out = grn(dir.path(), &["eval", "--truth", n, "--edges", n]);
    assert!(!out.status.success() && text(&out).contains("expected Gene1,Gene2,EdgeWeight"), "{}", text(&out));
    std::fs::write(dir.path().join("upper.csv"), "Gene1,Gene2,EdgeWeight\nG1,G2,0.5\n").unwrap();
    let out = grn(dir.path(), &["eval", "--truth", n, "--edges", "upper.csv"]);
    assert!(!out.status.success() && text(&out).contains("no predicted edge joins two genes"), "{}", text(&out));
    let out = grn(dir.path(), &["eval", "--truth", n, "--edges", "upper.csv", "--tfs", n]);
    assert!(!out.status.success() && text(&out).contains("--universe tf"), "{}", text(&out));
    std::fs::write(dir.path().join("prior.csv"), "Gene1,Gene2\nG1,G2\n").unwrap();
    let out = grn(dir.path(), &["baseline", "--expression", e, "--method", "prior-random", "--prior", "prior.csv", "--out", "x.csv"]);
    assert!(!out.status.success() && text(&out).contains("no edge joins two of the 6 selected genes"), "{}", text(&out));
    let out = grn(dir.path(), &["baseline", "--expression", e, "--method", "pearson", "--prior", "prior.csv", "--out", "x.csv"]);
    assert!(!out.status.success() && text(&out).contains("--prior is needed by --method prior-random"), "{}", text(&out));
    assert!(!dir.path().join("x.csv").exists(), "nothing written on error");
}

/// The shared BEELINE data (`../shared/data/beeline`, not in the repository):
/// `cargo test --test grn -- --ignored`.
#[test]
#[ignore]
fn pearson_on_the_shared_beeline_data_gives_the_reference_numbers() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/beeline");
    let dir = tempfile::tempdir().unwrap();
    let ll = data.join("synthetic/dyn-LL-2000-1");
    let out = grn(dir.path(), &["baseline", "--expression", ll.join("ExpressionData.csv").to_str().unwrap(), "--method", "pearson", "--out", "ll.csv"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = grn(dir.path(), &["eval", "--truth", ll.join("refNetwork.csv").to_str().unwrap(), "--edges", "ll.csv", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // ../shared/reference/kindle.md: absolute Pearson reaches EPR 8.5 on dyn-LL.
    assert!((v["epr"].as_f64().unwrap() - 8.5).abs() < 1e-9, "{v}");
}

#[test]
fn simulated_datasets_are_reproducible_beeline_folders_and_bad_settings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let settings = r#"{"genes": 12, "trajectories": 2, "cells_per_trajectory": 60, "technical": {}}"#;
    for name in ["a", "b"] {
        let out = grn(dir.path(), &["simulate", "--out", name, "--settings", settings, "--seed", "4"]);
        assert!(out.status.success(), "{}", text(&out));
    }
    for f in ["ExpressionData.csv", "PseudoTime.csv", "refNetwork.csv", "prior.csv", "settings.json"] {
        let (a, b) = (std::fs::read(dir.path().join("a").join(f)).unwrap(), std::fs::read(dir.path().join("b").join(f)).unwrap());
        assert_eq!(a, b, "{f} differs between two runs with the same seed");
    }
    // The folder is what `kiln grn` reads.
    let out = grn(dir.path(), &["baseline", "--expression", "a/ExpressionData.csv", "--method", "spearman", "--out", "s.csv"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = grn(dir.path(), &["eval", "--truth", "a/refNetwork.csv", "--edges", "s.csv"]);
    assert!(out.status.success(), "{}", text(&out));

    let out = grn(dir.path(), &["simulate", "--out", "a"]);
    assert!(!out.status.success() && text(&out).contains("already exists"), "{}", text(&out));
    let out = grn(dir.path(), &["simulate", "--out", "c", "--settings", r#"{"genes": 3, "master_regulators": 3}"#]);
    assert!(!out.status.success() && text(&out).contains("master_regulators"), "{}", text(&out));
    let out = grn(dir.path(), &["simulate", "--out", "c", "--settings", r#"{"genez": 3}"#]);
    assert!(!out.status.success() && text(&out).contains("genez"), "{}", text(&out));
    assert!(!dir.path().join("c").exists() && !dir.path().join("c.partial").exists());

    // A teacher prior from the reference: part of it kept, false edges added,
    // the same for the same seed.
    for name in ["p1.csv", "p2.csv"] {
        let out = grn(dir.path(), &["prior", "--truth", "a/refNetwork.csv", "--expression", "a/ExpressionData.csv", "--drop", "0.5", "--add", "1", "--seed", "3", "--out", name]);
        assert!(out.status.success() && text(&out).contains("false) written to"), "{}", text(&out));
    }
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
    assert_eq!(read("p1.csv"), read("p2.csv"));
    let truth: std::collections::HashSet<String> = read("a/refNetwork.csv").lines().skip(1).map(|l| l.rsplitn(2, ',').last().unwrap().to_string()).collect();
    let prior: Vec<String> = read("p1.csv").lines().skip(1).map(str::to_string).collect();
    let kept = prior.iter().filter(|e| truth.contains(*e)).count();
    assert!(kept > 0 && kept < truth.len() && kept < prior.len(), "kept {kept} of {} in a prior of {}", truth.len(), prior.len());
    let out = grn(dir.path(), &["prior", "--truth", "a/refNetwork.csv", "--expression", "a/ExpressionData.csv", "--drop", "2", "--out", "p3.csv"]);
    assert!(!out.status.success() && text(&out).contains("drop must be in [0, 1]") && !dir.path().join("p3.csv").exists(), "{}", text(&out));
}
