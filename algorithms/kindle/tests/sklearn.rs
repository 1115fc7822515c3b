//! AUROC and BEELINE's trapezoid AUPRC against scikit-learn (run from the
//! project's `.venv`, installed by scripts/setup.sh), on score lists with
//! heavy ties, unscored pairs and class imbalance like a GRN universe's.

use kiln_kindle::metrics::auroc_auprc;
use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn roc_and_pr_areas_match_scikit_learn() {
    // A small counter-based generator: the cases are fixed.
    let mut state = 12345u64;
    let mut next = || {
        state = kiln_worker::rng::splitmix(state);
        kiln_worker::rng::unit(state)
    };
    let mut cases = Vec::new();
    for (n, density, levels, zeros) in [(20, 0.3, 0, 0.0), (200, 0.05, 5, 0.5), (1000, 0.01, 20, 0.9), (57, 0.5, 2, 0.0), (300, 0.2, 0, 0.99)] {
        let labels: Vec<bool> = (0..n).map(|_| next() < density).collect();
        let scores: Vec<f64> = labels
            .iter()
            .map(|l| {
                if next() < zeros {
                    return 0.0;
                }
                // Positives score a little higher on average; `levels` > 0 rounds scores into ties.
                let s = next() + if *l { 0.3 } else { 0.0 };
                if levels > 0 {
                    (s * levels as f64).round() / levels as f64
                } else {
                    s
                }
            })
            .collect();
        let mut labels = labels;
        labels[0] = true; // at least one positive
        labels[1] = false; // and one negative
        cases.push((scores, labels));
    }
    let json: Vec<serde_json::Value> =
        cases.iter().map(|(s, l)| serde_json::json!({ "scores": s, "labels": l.iter().map(|b| u8::from(*b)).collect::<Vec<_>>() })).collect();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("cases.json");
    std::fs::write(&input, serde_json::to_string(&json).unwrap()).unwrap();
    let py = root().join(".venv/bin/python");
    let out = Command::new(&py)
        .arg(root().join("scripts/grn_reference.py"))
        .arg(&input)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh: it installs scikit-learn)", py.display()));
    assert!(out.status.success(), "reference script failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let theirs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    for (i, ((scores, labels), t)) in cases.iter().zip(&theirs).enumerate() {
        let (roc, pr) = auroc_auprc(scores, labels);
        let (troc, tpr) = (t["auroc"].as_f64().unwrap(), t["auprc"].as_f64().unwrap());
        assert!((roc - troc).abs() < 1e-12, "case {i}: AUROC {roc} vs scikit-learn {troc}");
        assert!((pr - tpr).abs() < 1e-12, "case {i}: AUPRC {pr} vs scikit-learn {tpr}");
    }
}
