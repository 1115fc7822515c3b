//! Invariant: an N-rank run equals a 1-rank run with the same global batch, to
//! float tolerance. Real `mpirun` ranks (2 and 3, oversubscribed), 20 steps.

mod common;
use common::*;

#[test]
fn two_and_three_ranks_match_one_rank_within_1e_5() {
    let dir = tempfile::tempdir().unwrap();
    let mut results = Vec::new();
    for ranks in [1usize, 2, 3] {
        let name = format!("eq{ranks}");
        let spec = write_spec(dir.path(), &Job { name: &name, steps: 20, every: 0, batch: 48, optimizer: SGD, ..Job::default() });
        let out = kiln_run(dir.path(), &spec, ranks, &[]);
        assert!(out.status.success(), "{ranks} ranks failed:\n{}", text(&out));
        results.push(params(dir.path(), &name, 20));
    }
    let (w2, d2) = worst(&results[0], &results[1]);
    let (w3, d3) = worst(&results[0], &results[2]);
    eprintln!("SGD: 2 ranks differ by {d2} ({w2}), 3 ranks by {d3} ({w3})");
    assert!(d2 <= 1e-5, "2 ranks differ from 1 rank by {d2} (in {w2})");
    assert!(d3 <= 1e-5, "3 ranks differ from 1 rank by {d3} (in {w3})");
    // And training moved the parameters (the comparison is not of untouched weights).
    let init_like = max_diff(&results[0], &results[0].iter().map(|(n, t)| (n.clone(), t.zeros_like())).collect::<Vec<_>>());
    assert!(init_like > 0.0);
}

/// AdamW divides by the root of the second moment, so last-bit differences in
/// near-zero gradient components (summation order differs between 1 and N ranks)
/// grow into visible ones; the bound is looser, and still catches a wrong sync
/// (a missing average or a skipped bucket moves parameters by ~lr = 1e-2).
#[test]
fn adamw_runs_agree_across_world_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let mut results = Vec::new();
    for ranks in [1usize, 2] {
        let name = format!("adam{ranks}");
        let spec = write_spec(dir.path(), &Job { name: &name, steps: 20, every: 0, batch: 48, ..Job::default() });
        let out = kiln_run(dir.path(), &spec, ranks, &[]);
        assert!(out.status.success(), "{ranks} ranks failed:\n{}", text(&out));
        results.push(params(dir.path(), &name, 20));
    }
    let (w, d) = worst(&results[0], &results[1]);
    eprintln!("AdamW: 2 ranks differ by {d} ({w})");
    assert!(d <= 1e-3, "2 ranks differ from 1 rank by {d} (in {w})");
}

#[test]
fn gradient_accumulation_matches_one_big_batch() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_spec(dir.path(), &Job { name: "big", steps: 10, every: 0, batch: 48, ..Job::default() });
    let b = write_spec(
        dir.path(),
        &Job { name: "accum", steps: 10, every: 0, batch: 48, extra_train: "micro_steps = 3", ..Job::default() },
    );
    let out = kiln_run(dir.path(), &a, 2, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let out = kiln_run(dir.path(), &b, 2, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let d = max_diff(&params(dir.path(), "big", 10), &params(dir.path(), "accum", 10));
    assert!(d <= 1e-5, "accumulated run differs by {d}");
}
