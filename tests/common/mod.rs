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

/// Runs `spec` on `ranks` ranks with `fault` (a `KILN_FAULT` value) until it
/// fails, then resumes it to the end; panics if either half does not behave.
pub fn kill_then_resume(dir: &Path, spec: &Path, ranks: usize, fault: &str) {
    let mut c = kiln();
    c.current_dir(dir).arg("run").arg(spec).arg("--ranks").arg(ranks.to_string()).env("KILN_FAULT", fault);
    let out = run(&mut c);
    assert!(!out.status.success(), "the faulted run must fail: {}", text(&out));
    let out = kiln_run(dir, spec, ranks, &["--resume"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// Runs the job `spec(name)` as `<stem>-full`, uninterrupted, and as
/// `<stem>-killed`, under `fault` until it fails and then resumed, both on
/// `ranks` ranks; returns the largest difference between their parameters
/// at `step` (0 when the resumed run continued the exact trajectory).
pub fn resume_gap(dir: &Path, stem: &str, ranks: usize, fault: &str, step: u64, spec: impl Fn(&str) -> PathBuf) -> f64 {
    let (full, killed) = (format!("{stem}-full"), format!("{stem}-killed"));
    let out = kiln_run(dir, &spec(&full), ranks, &[]);
    assert!(out.status.success(), "{}", text(&out));
    kill_then_resume(dir, &spec(&killed), ranks, fault);
    max_diff(&params(dir, &killed, step), &params(dir, &full, step))
}

/// `final_eval` of run `name`'s `runs/<name>/summary.json` under `dir`.
pub fn final_eval(dir: &Path, name: &str) -> serde_json::Value {
    let path = dir.join("runs").join(name).join("summary.json");
    let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap();
    s["final_eval"].clone()
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

/// The parameters committed at `step` of run `name` in the store directory `store`.
pub fn params_in(store: &Path, name: &str, step: u64) -> Vec<(String, Tensor)> {
    let path = store.join(name).join("ckpt").join(format!("step-{step:010}")).join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    kiln_cluster::checkpoint::decode_tensors(&bytes).unwrap()
}

pub const TOKEN: &str = "test-token-0123456789abcdef";

/// A real `kiln coordinator` process on a free loopback port, with its state in
/// `state`. Dropping it kills the coordinator and every attempt it started.
pub struct Coord {
    pub state: PathBuf,
    pub url: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<std::process::Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Coord {
    pub fn start(state: &Path, extra: &[&str], env: &[(&str, &str)]) -> Coord {
        let port = free_port();
        let mut args = vec!["coordinator".to_string(), "--listen".into(), format!("127.0.0.1:{port}")];
        args.push("--state-dir".into());
        args.push(state.display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut c = Coord {
            state: state.to_path_buf(),
            url: format!("http://127.0.0.1:{port}"),
            args,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            child: None,
        };
        c.spawn();
        c
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.state).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.state.join("coordinator.log")).unwrap();
        let mut cmd = kiln();
        cmd.args(&self.args).env("KILN_TOKEN", TOKEN).envs(self.env.iter().cloned());
        cmd.stdout(log.try_clone().unwrap()).stderr(log);
        self.child = Some(cmd.spawn().expect("kiln coordinator starts"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let http = reqwest::blocking::Client::new();
        loop {
            if http.get(format!("{}/healthz", self.url)).send().map(|r| r.status().is_success()).unwrap_or(false) {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("coordinator exited with {status}:\n{}", self.log());
            }
            assert!(std::time::Instant::now() < deadline, "coordinator did not come up:\n{}", self.log());
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.join("coordinator.log")).unwrap_or_default()
    }

    pub fn client(&self) -> kiln_coordinator::client::Client {
        kiln_coordinator::client::Client::new(&self.url, TOKEN).unwrap()
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Waits for job `id` to end; panics with the job's log and the coordinator's after `limit`.
    pub fn wait(&self, id: i64, limit: std::time::Duration) -> kiln_coordinator::api::JobView {
        let j = self.client().wait(id, limit).unwrap();
        assert!(j.status.is_terminal(), "job {id} still {} after {limit:?}\n{}", j.status, self.diagnose(id));
        j
    }

    /// Everything known about a job, for failure messages.
    pub fn diagnose(&self, id: i64) -> String {
        let c = self.client();
        let events = c.events(id).map(|e| format!("{e:#?}")).unwrap_or_default();
        let mut logs = String::new();
        if let Ok(j) = c.job(id) {
            for a in 1..=j.attempts {
                if let Ok(chunk) = c.logs(id, Some(a), 0) {
                    logs.push_str(&format!("---- attempt {a} ----\n{}\n", String::from_utf8_lossy(&chunk.bytes)));
                }
            }
        }
        format!("events: {events}\n{logs}\n---- coordinator ----\n{}", self.log())
    }
}

impl Drop for Coord {
    fn drop(&mut self) {
        self.kill9();
        // Attempts outlive the coordinator by design; a test must not leave them behind.
        let jobs = self.state.join("jobs");
        for job in std::fs::read_dir(&jobs).into_iter().flatten().flatten() {
            for attempt in std::fs::read_dir(job.path()).into_iter().flatten().flatten() {
                if let Some(pid) = std::fs::read_to_string(attempt.path().join("pid")).ok().and_then(|s| s.trim().parse::<i32>().ok()) {
                    let files = kiln_coordinator::launch::local::AttemptFiles { dir: attempt.path() };
                    if kiln_coordinator::launch::local::is_our_supervisor(pid, &files) {
                        kiln_coordinator::launch::local::kill(pid);
                    }
                }
            }
        }
    }
}

// KuaiSim: a simulator to play against (tests/kuaisim.rs, tests/retention.rs).

/// A `kuaisim.response` job over the logs in `data`, with SGD and no dropout
/// (so ranks can be compared).
pub fn response_job(dir: &Path, data: &Path, name: &str, steps: u64, every: u64, extra: &str) -> PathBuf {
    let text = format!(
        r#"name = "{name}"
[checkpoint]
store = "{store}"
every = {every}
keep = 10
[train]
steps = {steps}
seed = 3
global_batch = 32
log_every = 4
[train.optimizer]
{SGD}
[algorithm]
name = "kuaisim.response"
[algorithm.data]
log = ["{log}"]
user_features = "{data}/user_features_pure.csv"
video_features = "{data}/video_features_basic_pure.csv"
core = 3
{extra}
[algorithm.model]
id_dim = 8
enc_dim = 16
history = 6
dropout = 0.0
"#,
        store = dir.join("store").display(),
        log = data.join("log_standard_pure.csv").display(),
        data = data.display(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Synthetic logs (60 users, 40 items, 10 days), a 2-rank response model of
/// 600 steps, exported: the simulator the agent tests play against.
pub fn trained_simulator(dir: &Path) -> PathBuf {
    let data = dir.join("synth");
    let mut c = kiln();
    c.args(["kuaisim", "synth", "--out"]).arg(&data).args(["--users", "60", "--items", "40", "--days", "10"]);
    assert!(run(&mut c).status.success());
    let out = kiln_run(dir, &response_job(dir, &data, "uirm", 600, 0, ""), 2, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let sim = dir.join("sim");
    let mut c = kiln();
    c.arg("export").arg(dir.join("uirm.toml")).arg("--out").arg(&sim);
    assert!(run(&mut c).status.success());
    sim
}
