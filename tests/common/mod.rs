//! Helpers for the end-to-end tests: they drive the real `kiln` binary, which
//! launches real `mpirun` ranks.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tch::Tensor;

pub fn kiln() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.env_remove("KILN_FAULT");
    c
}

/// Options of a small, fast test job.
pub struct Job<'a> {
    pub name: &'a str,
    pub steps: u64,
    pub every: u64,
    pub batch: usize,
    pub algorithm: &'a str,
    pub extra_train: &'a str,
    /// The body of `[train.optimizer]`.
    pub optimizer: &'a str,
}

impl Default for Job<'_> {
    fn default() -> Self {
        Job { name: "t", steps: 20, every: 5, batch: 48, algorithm: "recsys.mmoe", extra_train: "", optimizer: ADAMW }
    }
}

pub const ADAMW: &str = "kind = \"adamw\"\nlr = 0.01\nweight_decay = 0.01";
pub const SGD: &str = "kind = \"sgd\"\nlr = 0.05\nmomentum = 0.9\nweight_decay = 0.0001";

/// Writes a spec into `dir` whose checkpoints go to `dir/store`.
pub fn write_spec(dir: &Path, job: &Job) -> PathBuf {
    let store = dir.join("store");
    let text = format!(
        r#"name = "{name}"

[checkpoint]
store = "{store}"
every = {every}
keep = 10
async = true

[train]
steps = {steps}
seed = 7
global_batch = {batch}
log_every = 5
{extra}

[train.optimizer]
{optimizer}

[algorithm]
name = "{algo}"
users = 300
items = 200
hidden = 32
tower_hidden = 16
embedding_dim = 8
eval_samples = 1024
"#,
        name = job.name,
        store = store.display(),
        every = job.every,
        steps = job.steps,
        batch = job.batch,
        extra = job.extra_train,
        algo = job.algorithm,
        optimizer = job.optimizer,
    );
    let path = dir.join(format!("{}.toml", job.name));
    std::fs::write(&path, text).unwrap();
    path
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("kiln binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "no panic may reach the user:\n{stderr}");
    out
}

pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

pub fn kiln_run(dir: &Path, spec: &Path, ranks: usize, extra: &[&str]) -> Output {
    let mut c = kiln();
    c.current_dir(dir).arg("run").arg(spec).arg("--ranks").arg(ranks.to_string()).args(extra);
    run(&mut c)
}

/// The parameters committed at `step` of run `name` in `dir/store`.
pub fn params(dir: &Path, name: &str, step: u64) -> Vec<(String, Tensor)> {
    let path = dir.join("store").join(name).join("ckpt").join(format!("step-{step:010}")).join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    kiln_cluster::checkpoint::decode_tensors(&bytes).unwrap()
}

/// Largest absolute difference between two parameter sets (same names required).
pub fn max_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    worst(a, b).1
}

/// The parameter that differs most, and by how much.
pub fn worst(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> (String, f64) {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            (na.clone(), (ta - tb).abs().max().double_value(&[]))
        })
        .fold((String::new(), 0.0), |acc, x| if x.1 > acc.1 { x } else { acc })
}
