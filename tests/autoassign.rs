//! AutoAssign+ (`recsys.autoassign`) as kiln jobs: on the generator's stream
//! with new ids every chunk, the identity agent and the baselines train on 2
//! ranks test-then-train, the agent's tables stay within their memory budget
//! while the full table outgrows it, a killed run resumes exactly across
//! chunk starts, and a MovieLens `u.data`-layout log streams through the
//! reader (a bad line is named).

mod common;
use common::*;
use std::path::{Path, PathBuf};

const SYNTH: &str = "[algorithm.stream]\nchunks = 8\n[algorithm.stream.synthetic]\nusers = 1200\nitems = 600\nchunk_size = 1024\nseed = 2";

fn job(dir: &Path, name: &str, steps: u64, every: u64, algo: &str, stream: &str) -> PathBuf {
    let text = format!(
        "name = \"{name}\"\n[checkpoint]\nstore = \"{}\"\nevery = {every}\nkeep = 10\n[train]\nsteps = {steps}\nseed = 4\nglobal_batch = 128\nlog_every = 8\neval_every = 8\n[train.optimizer]\nkind = \"adamw\"\nlr = 0.01\nweight_decay = 0.0\n[algorithm]\nname = \"recsys.autoassign\"\n{algo}\n{stream}\n",
        dir.join("store").display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn evals(dir: &Path, name: &str) -> Vec<serde_json::Value> {
    let m = std::fs::read_to_string(dir.join("runs").join(name).join("metrics.jsonl")).unwrap();
    m.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).filter(|v| v["kind"] == "eval").collect()
}

#[test]
fn the_agent_keeps_its_budget_the_full_table_does_not_and_a_killed_run_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    // 1024 interactions a chunk / 128 a step: 8 steps a chunk, 8 chunks.
    let budget = 120;
    for policy in ["autoassign", "full"] {
        let spec = job(dir.path(), policy, 64, 0, &format!("policy = \"{policy}\"\nbudget_rows = {budget}\nshared = 4"), SYNTH);
        let out = kiln_run(dir.path(), &spec, 2, &[]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let agent = evals(dir.path(), "autoassign");
    assert_eq!(agent.len(), 8, "one evaluation a chunk");
    for e in &agent {
        let (u, i) = (e["rows_user"].as_f64().unwrap(), e["rows_item"].as_f64().unwrap());
        assert!(u <= budget as f64 && i <= budget as f64, "over budget: {e}");
        // Rows plus 4 shared embeddings per field, 16 floats each.
        assert!(e["bytes"].as_f64().unwrap() <= ((2 * budget + 8) * 16 * 4) as f64, "{e}");
    }
    let last = final_eval(dir.path(), "autoassign");
    eprintln!("recsys.autoassign: {last}");
    assert!(last["rows_user"].as_f64().unwrap() > 0.0, "the agent gave no row: {last}");
    assert!(last["mean_auc"].as_f64().unwrap() > 0.55 && last["mean_auc_new"].as_f64().is_some() && last["mean_auc_old"].as_f64().is_some(), "{last}");
    assert!(last["oracle_auc"].as_f64().unwrap() > last["auc"].as_f64().unwrap(), "{last}");
    let full = final_eval(dir.path(), "full");
    eprintln!("recsys.autoassign, policy full: {full}");
    assert!(full["rows_user"].as_f64().unwrap() > budget as f64 && full["peak_bytes"].as_f64().unwrap() > last["peak_bytes"].as_f64().unwrap(), "{full}");
    // Checkpoints at steps 12 and 24 (inside chunks 1 and 3); killed after
    // step 20, resumed from 12 through three chunk starts.
    let algo = format!("policy = \"autoassign\"\nbudget_rows = {budget}\nshared = 4");
    let d = resume_gap(dir.path(), "aa", 2, "kill-rank:1:after-step:20", 36, |name| job(dir.path(), name, 36, 12, &algo, SYNTH));
    assert!(d <= 1e-6, "the resumed AutoAssign+ run differs by {d}");
    assert_eq!(final_eval(dir.path(), "aa-killed"), final_eval(dir.path(), "aa-full"));
}

#[test]
fn a_movielens_layout_log_streams_and_a_bad_line_is_named() {
    let dir = tempfile::tempdir().unwrap();
    // u.data layout: user, item, rating, timestamp, tab-separated, no header.
    let mut log = String::new();
    for k in 0..3000u64 {
        let z = kiln_worker::rng::splitmix(k);
        let (user, item) = (1 + z % 90, 1 + (z >> 20) % 150);
        let rating = 1 + ((user + item) % 5 + (z >> 40) % 2).min(4);
        log += &format!("{user}\t{item}\t{rating}\t{}\n", 880000000 + (z >> 33) % 100000);
    }
    let data = dir.path().join("u.data");
    std::fs::write(&data, log).unwrap();
    let stream = format!("[algorithm.stream]\nchunks = 4\n[algorithm.stream.log]\npath = \"{}\"", data.display());
    let spec = job(dir.path(), "ml", 24, 0, "policy = \"threshold\"\nbudget_rows = 50\nthreshold = 5", &stream);
    let out = kiln_run(dir.path(), &spec, 2, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let e = final_eval(dir.path(), "ml");
    eprintln!("recsys.autoassign on a u.data log: {e}");
    assert_eq!(e["chunk"].as_f64(), Some(3.0));
    assert!(e["auc"].as_f64().is_some_and(|a| a > 0.5) && e["oracle_auc"].is_null(), "{e}");
    std::fs::write(&data, "1\t2\t5\t880000000\n1\t3\tfive\t880000001\n").unwrap();
    let out = kiln_run(dir.path(), &job(dir.path(), "ml-bad", 4, 0, "policy = \"threshold\"", &format!("[algorithm.stream]\nchunks = 2\n[algorithm.stream.log]\npath = \"{}\"", data.display())), 1, &[]);
    let t = text(&out);
    assert!(!out.status.success() && t.contains("u.data") && t.contains("line 2") && t.contains("'five'"), "{t}");
}
