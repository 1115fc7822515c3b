//! The quick-start job learns (AUC well above 0.5 on both tasks, for both models)
//! and `kiln run` leaves a report behind.

mod common;
use common::*;

#[test]
fn mmoe_and_shared_bottom_learn_both_tasks() {
    let dir = tempfile::tempdir().unwrap();
    for (name, algo) in [("mmoe", "recsys.mmoe"), ("sb", "recsys.shared-bottom")] {
        let spec = write_spec(dir.path(), &Job { name, steps: 150, every: 50, batch: 128, algorithm: algo, extra_train: "eval_every = 50", ..Job::default() });
        let out = kiln_run(dir.path(), &spec, 2, &[]);
        assert!(out.status.success(), "{}", text(&out));
        let eval = final_eval(dir.path(), name);
        for t in 0..2 {
            let auc = eval[format!("auc_task{t}")].as_f64().unwrap();
            let oracle = eval[format!("oracle_auc_task{t}")].as_f64().unwrap();
            assert!(auc > 0.70, "{algo} task {t}: AUC {auc} (oracle {oracle})");
            assert!(auc <= oracle + 0.02, "{algo} task {t}: AUC {auc} above the oracle {oracle}?");
        }
        for f in ["loss.png", "eval.png", "summary.md", "metrics.jsonl"] {
            assert!(dir.path().join("runs").join(name).join(f).exists(), "missing {f}");
        }
        assert!(text(&out).contains("run complete"), "{}", text(&out));
        // The store (here another directory) holds the run's metrics and summary too.
        for f in ["metrics.jsonl", "summary.json"] {
            let local = std::fs::read(dir.path().join("runs").join(name).join(f)).unwrap();
            let stored = std::fs::read(dir.path().join("store").join(name).join(f)).unwrap();
            assert_eq!(local, stored, "{f} in the store differs");
        }
    }
    // `kiln report` regenerates the report on its own.
    let mut c = kiln();
    c.current_dir(dir.path()).args(["report", "runs/mmoe"]);
    let out = run(&mut c);
    assert!(out.status.success(), "{}", text(&out));
    let md = std::fs::read_to_string(dir.path().join("runs/mmoe/summary.md")).unwrap();
    assert!(md.contains("auc_task0"), "{md}");
}
