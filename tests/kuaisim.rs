//! KuaiSim as kiln jobs: the response model trains on synthetic KuaiRand-layout
//! logs on 2 ranks with per-behaviour metrics, equals a 1-rank run, exports a
//! simulator the environments load, resumes exactly, and bad logs are refused
//! with their place; whole-session agents (DDPG, TD3, A2C, HAC) earn more per
//! session than random slates, the CF scorer and ListCVAE more per request
//! (with R-NDCG and R-MRR), and a killed
//! DDPG run resumes exactly with its replay buffers; cross-session agents
//! (CEM, TD3, RLUR) bring users back sooner than random fusion weights; the
//! learned retention model trains on 2 ranks (= 1 rank, exact resume), beats
//! the marginal return-day distribution and drives the cross-session
//! environment.

mod common;
use common::*;
use std::path::{Path, PathBuf};

#[test]
fn the_response_model_trains_as_a_job_on_two_ranks_equal_to_one_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("synth");
    let mut c = kiln();
    c.args(["kuaisim", "synth", "--out"]).arg(&data).args(["--users", "40", "--items", "30", "--days", "8"]);
    let out = run(&mut c);
    assert!(out.status.success(), "{}", text(&out));
    for (name, ranks) in [("r1", 1), ("r2", 2)] {
        let out = kiln_run(dir.path(), &response_job(dir.path(), &data, name, 12, 0, ""), ranks, &[]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let (w, d) = worst(&params(dir.path(), "r1", 12), &params(dir.path(), "r2", 12));
    assert!(d <= 1e-5, "2 ranks differ from 1 by {d} ({w})");
    let e = final_eval(dir.path(), "r2");
    for k in ["auc_is_click", "auc_long_view", "logloss_is_hate", "mean_auc", "test_auc_is_click", "test_mean_auc"] {
        assert!(e[k].as_f64().is_some_and(f64::is_finite), "{k} in {e}");
    }
    let one = final_eval(dir.path(), "r1");
    assert!((e["mean_auc"].as_f64().unwrap() - one["mean_auc"].as_f64().unwrap()).abs() < 1e-6, "{e} vs {one}");
    // Exported, the trained model is a simulator the environments load.
    let mut c = kiln();
    c.current_dir(dir.path()).arg("export").arg(dir.path().join("r2.toml")).arg("--out").arg(dir.path().join("sim"));
    let out = run(&mut c);
    assert!(out.status.success(), "{}", text(&out));
    let sim = std::sync::Arc::new(kiln_kuaisim::env::Simulator::load(&dir.path().join("sim"), tch::Device::Cpu).unwrap());
    let mut env = kiln_kuaisim::env::Env::new(sim, kiln_kuaisim::env::EnvConfig { batch: 4, ..kiln_kuaisim::env::EnvConfig::new(kiln_kuaisim::env::Level::CrossSession) }, 1).unwrap();
    let s = env.step(&kiln_kuaisim::env::Action::Fusion(tch::Tensor::ones([4, 7], (tch::Kind::Float, tch::Device::Cpu)))).unwrap();
    assert_eq!(s.responses.size(), [4, 6, 7]);
    kill_then_resume(dir.path(), &response_job(dir.path(), &data, "killed", 12, 4, ""), 2, "kill-rank:1:after-step:6");
    let d = max_diff(&params(dir.path(), "killed", 12), &params(dir.path(), "r2", 12));
    assert!(d <= 1e-6, "the resumed run differs by {d}");
    // A log without a behaviour column is refused before training, named.
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    for f in ["user_features_pure.csv", "video_features_basic_pure.csv"] {
        std::fs::copy(data.join(f), bad.join(f)).unwrap();
    }
    std::fs::write(bad.join("log_standard_pure.csv"), std::fs::read_to_string(data.join("log_standard_pure.csv")).unwrap().replace("long_view", "longview")).unwrap();
    let out = kiln_run(dir.path(), &response_job(dir.path(), &bad, "bad", 2, 0, ""), 1, &[]);
    assert!(!out.status.success() && text(&out).contains("lacks the column long_view; its columns are: user_id, video_id"), "{}", text(&out));
    let out = kiln_run(dir.path(), &response_job(dir.path(), &data, "bad2", 2, 0, "missing_features = \"skip\""), 1, &[]);
    assert!(!out.status.success() && text(&out).contains("algorithm.data") && text(&out).contains("missing_features 'skip' is not one of unknown, error"), "{}", text(&out));
}

/// A `kuaisim.ddpg`/`kuaisim.td3` job against the simulator exported to `sim`.
fn agent_job(dir: &Path, sim: &Path, name: &str, algo: &str, steps: u64, every: u64) -> PathBuf {
    let text = format!(
        r#"name = "{name}"
[checkpoint]
store = "{store}"
every = {every}
keep = 10
[train]
steps = {steps}
seed = 5
global_batch = 64
log_every = 20
eval_every = {steps}
[train.optimizer]
kind = "adamw"
lr = 0.001
weight_decay = 0.0
[algorithm]
name = "{algo}"
simulator = "{sim}"
start_steps = 50
noise = 0.3
buffer = 5000
hidden = [64, 32]
actor_lr_scale = 1.0
eval_users = 48
[algorithm.env]
level = "whole-session"
batch = 8
initial_temper = 20
"#,
        store = dir.join("store").display(),
        sim = sim.display(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn whole_session_agents_beat_a_random_policy_and_resume_with_their_replay_buffers() {
    let dir = tempfile::tempdir().unwrap();
    let sim = trained_simulator(dir.path());
    // The random policy's whole sessions on the same simulator and settings.
    let simulator = std::sync::Arc::new(kiln_kuaisim::env::Simulator::load(&sim, tch::Device::Cpu).unwrap());
    let cfg = kiln_kuaisim::env::EnvConfig { batch: 8, initial_temper: Some(20.0), ..kiln_kuaisim::env::EnvConfig::new(kiln_kuaisim::env::Level::WholeSession) };
    let mut env = kiln_kuaisim::env::Env::new(simulator.clone(), cfg, 99).unwrap();
    let n = simulator.item_count() as u64;
    let step = std::cell::Cell::new(0u64);
    let random = kiln_kuaisim::agents::play(&mut env, 400, |s| {
        step.set(step.get() + 1);
        let ids: Vec<i64> = (0..s.size()[0] as u64 * 6).map(|k| 1 + (kiln_worker::rng::splitmix(step.get() * 977 + k) % n) as i64).collect();
        tch::Tensor::from_slice(&ids).view([s.size()[0], 6])
    })
    .unwrap();
    let random_total = random.session_reward / random.sessions;
    // Each agent's total reward per session over random's. One short run per
    // agent is noisy, and CPU kernels round differently from machine to
    // machine (AVX2 or AVX-512), which moves every trajectory: measured
    // here 1.10-1.39 per agent, 1.2-1.3 on average, over three kernel
    // choices (the default on AVX-512; ATEN_CPU_CAPABILITY=avx2; that and
    // MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2). Each must beat
    // random; together, by 10%.
    let mut ratios = Vec::new();
    for algo in ["kuaisim.ddpg", "kuaisim.td3", "kuaisim.a2c", "kuaisim.hac"] {
        let name = algo.replace('.', "-");
        let out = kiln_run(dir.path(), &agent_job(dir.path(), &sim, &name, algo, 1500, 0), 2, &[]);
        assert!(out.status.success(), "{}", text(&out));
        let e = final_eval(dir.path(), &name);
        let total = e["total_reward"].as_f64().unwrap();
        eprintln!("{algo}: {e}; random total reward {random_total:.3}, depth {:.2}", random.steps / random.sessions);
        assert!(total > random_total, "{algo}: total reward per session {total:.3} vs random {random_total:.3}");
        ratios.push(total / random_total);
        for k in ["depth", "avg_reward", "coverage", "ild"] {
            assert!(e[k].as_f64().is_some_and(f64::is_finite), "{k} in {e}");
        }
    }
    assert!(ratios.iter().sum::<f64>() / ratios.len() as f64 > 1.1, "total reward over random's: {ratios:?}");
    // Request level: the CF scorer's slates against random ones.
    let cfg = kiln_kuaisim::env::EnvConfig { batch: 8, ..kiln_kuaisim::env::EnvConfig::new(kiln_kuaisim::env::Level::Request) };
    let mut env = kiln_kuaisim::env::Env::new(simulator.clone(), cfg, 98).unwrap();
    let random_request = kiln_kuaisim::agents::play_request(&mut env, 256, |s| {
        step.set(step.get() + 1);
        let ids: Vec<i64> = (0..s.size()[0] as u64 * 6).map(|k| 1 + (kiln_worker::rng::splitmix(step.get() * 977 + k) % n) as i64).collect();
        tch::Tensor::from_slice(&ids).view([s.size()[0], 6])
    })
    .unwrap();
    let random_l = random_request.l_reward / random_request.slates;
    let cf = dir.path().join("cf.toml");
    std::fs::write(
        &cf,
        format!(
            "name = \"cf\"\n[checkpoint]\nstore = \"{}\"\nevery = 0\n[train]\nsteps = 400\nseed = 5\nglobal_batch = 16\nlog_every = 50\neval_every = 400\n[train.optimizer]\nkind = \"adamw\"\nlr = 0.003\nweight_decay = 0.0\n[algorithm]\nname = \"kuaisim.cf\"\nsimulator = \"{}\"\nhidden = [64]\neval_users = 128\n[algorithm.env]\nlevel = \"request\"\nbatch = 8\n",
            dir.path().join("store").display(),
            sim.display()
        ),
    )
    .unwrap();
    let out = kiln_run(dir.path(), &cf, 2, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let e = final_eval(dir.path(), "cf");
    let l = e["avg_l_reward"].as_f64().unwrap();
    eprintln!("kuaisim.cf: {e}; random L-reward {random_l:.3}");
    // Measured 3.50 vs 2.91 (1.20x); on another machine, over its CPU
    // kernel choices, 3.60-3.82 vs 2.86-3.14 (1.19-1.26x).
    assert!(l > random_l * 1.1 && e["max_l_reward"].as_f64().unwrap() >= l, "CF: L-reward {l:.3} vs random {random_l:.3}");
    for k in ["r_ndcg", "r_mrr"] {
        assert!(e[k].as_f64().is_some_and(|x| (0.0..=1.0).contains(&x)), "{k} in {e}");
    }
    // ListCVAE, asked for slates two standard deviations above its buffer's
    // mean reward, beats random slates too, and reconstructs slates better
    // than a uniform guess over the pool.
    let lc = dir.path().join("listcvae.toml");
    let spec = std::fs::read_to_string(&cf).unwrap().replace("name = \"cf\"", "name = \"listcvae\"").replace("kuaisim.cf", "kuaisim.listcvae").replace("hidden = [64]\n", "");
    std::fs::write(&lc, spec.replace("steps = 400", "steps = 1000").replace("eval_every = 400", "eval_every = 1000").replace("lr = 0.003", "lr = 0.001")).unwrap();
    let out = kiln_run(dir.path(), &lc, 2, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let e = final_eval(dir.path(), "listcvae");
    eprintln!("kuaisim.listcvae: {e}; random L-reward {random_l:.3}");
    for k in ["avg_l_reward", "max_l_reward", "coverage", "ild", "r_ndcg", "r_mrr"] {
        assert!(e[k].as_f64().is_some_and(f64::is_finite), "{k} in {e}");
    }
    let l = e["avg_l_reward"].as_f64().unwrap();
    assert!(l > random_l * 1.1, "ListCVAE: L-reward {l:.3} vs random {random_l:.3}");
    let metrics = std::fs::read_to_string(dir.path().join("runs/listcvae/metrics.jsonl")).unwrap();
    let last: serde_json::Value = metrics.lines().filter(|l| l.contains("\"reconstruction\"")).last().map(|l| serde_json::from_str(l).unwrap()).unwrap();
    let rec = last["reconstruction"].as_f64().unwrap();
    assert!(rec < (n as f64).ln(), "reconstruction {rec} vs uniform {}", (n as f64).ln());
    // Killed and resumed, ListCVAE's replay buffer (its condition's scale too)
    // and environment come back: it ends where an uninterrupted run does.
    let short = std::fs::read_to_string(&lc).unwrap().replace("steps = 1000", "steps = 100").replace("eval_every = 1000", "eval_every = 100").replace("every = 0", "every = 30");
    let d = resume_gap(dir.path(), "lc", 2, "kill-rank:0:after-step:70", 100, |name| {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, short.replace("name = \"listcvae\"", &format!("name = \"{name}\""))).unwrap();
        path
    });
    assert!(d <= 1e-6, "the resumed ListCVAE differs by {d}");
    // Killed after step 70 and resumed from 60: replay buffers, environments
    // and target networks come back, so the run ends where an uninterrupted one does.
    let d = resume_gap(dir.path(), "ddpg", 2, "kill-rank:1:after-step:70", 100, |name| agent_job(dir.path(), &sim, name, "kuaisim.ddpg", 100, 30));
    assert!(d <= 1e-6, "the resumed agent differs by {d}");
}

#[test]
fn cross_session_agents_shorten_the_return_time_against_random_fusion_weights() {
    let dir = tempfile::tempdir().unwrap();
    let sim = trained_simulator(dir.path());
    // Random fusion weights in [-1, 1] at every request, on the same simulator.
    let simulator = std::sync::Arc::new(kiln_kuaisim::env::Simulator::load(&sim, tch::Device::Cpu).unwrap());
    let cfg = kiln_kuaisim::env::EnvConfig { batch: 8, ..kiln_kuaisim::env::EnvConfig::new(kiln_kuaisim::env::Level::CrossSession) };
    let mut env = kiln_kuaisim::env::Env::new(simulator, cfg, 99).unwrap();
    let step = std::cell::Cell::new(0u64);
    let random = kiln_kuaisim::agents::play_cross(&mut env, 256, |s| {
        step.set(step.get() + 1);
        let w: Vec<f32> = (0..s.size()[0] as u64 * 7).map(|k| 2.0 * kiln_worker::rng::unit(kiln_worker::rng::splitmix(step.get() * 977 + k)) as f32 - 1.0).collect();
        tch::Tensor::from_slice(&w).view([s.size()[0], 7])
    })
    .unwrap();
    let random_day = random.return_days / random.ends;
    let random_retention = random.next_day / random.ends;
    let job = |name: &str, algo: &str, steps: u64, extra: &str| {
        let text = format!(
            "name = \"{name}\"\n[checkpoint]\nstore = \"{}\"\nevery = 0\n[train]\nsteps = {steps}\nseed = 5\nglobal_batch = 16\nlog_every = 10\neval_every = {steps}\n[train.optimizer]\nkind = \"adamw\"\nlr = 0.001\nweight_decay = 0.0\n[algorithm]\nname = \"{algo}\"\nsimulator = \"{}\"\neval_users = 128\n{extra}\n[algorithm.env]\nlevel = \"cross-session\"\nbatch = 8\n",
            dir.path().join("store").display(),
            sim.display()
        );
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    };
    for (name, algo, steps, extra) in [("cem", "kuaisim.cem", 10, "population = 16"), ("td3x", "kuaisim.td3", 1500, "start_steps = 60\nbuffer = 20000\nhidden = [64, 32]\nactor_lr_scale = 1.0\nnoise = 0.3"), ("rlur", "kuaisim.rlur", 1500, "start_steps = 60\nbuffer = 20000\nhidden = [64, 32]\nactor_lr_scale = 1.0\nnoise = 0.3\nrnd_weight = 0.1")] {
        let out = kiln_run(dir.path(), &job(name, algo, steps, extra), 2, &[]);
        assert!(out.status.success(), "{}", text(&out));
        let e = final_eval(dir.path(), name);
        let (day, retention) = (e["return_day"].as_f64().unwrap(), e["retention"].as_f64().unwrap());
        eprintln!("{algo}: return day {day:.3} retention {retention:.3}; random {random_day:.3} {random_retention:.3}");
        // Measured: CEM 2.04 / 0.53, TD3 1.72 / 0.58, RLUR 1.90 / 0.53, random 2.23 / 0.44.
        assert!(day < random_day - 0.1 && retention > random_retention + 0.05, "{algo}: return day {day:.3}, retention {retention:.3} vs random {random_day:.3}, {random_retention:.3}");
    }
    // The random baseline as a job (what the sweeps' baseline rows are): the
    // same policy as above, other draws.
    let out = kiln_run(dir.path(), &job("random", "kuaisim.random", 1, ""), 2, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let day = final_eval(dir.path(), "random")["return_day"].as_f64().unwrap();
    // Other draws on 256 users each: measured gaps of 0.0-0.26 days.
    assert!((day - random_day).abs() < 0.4, "kuaisim.random: return day {day:.3} vs {random_day:.3} in-process");
}

#[test]
fn the_learned_retention_model_trains_as_a_job_on_two_ranks_and_drives_the_cross_session_environment() {
    let dir = tempfile::tempdir().unwrap();
    // More users and days than the agents' simulator (return gaps are one
    // label per session), and a strong retention signal: the next-day return
    // chance is 1.6 × the session's click rate.
    let data = dir.path().join("synth");
    let mut c = kiln();
    c.args(["kuaisim", "synth", "--out"]).arg(&data).args(["--users", "240", "--items", "40", "--days", "18", "--return-base", "0", "--return-effect", "1.6"]);
    assert!(run(&mut c).status.success());
    let out = kiln_run(dir.path(), &response_job(dir.path(), &data, "uirm", 300, 0, ""), 2, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let sim = dir.path().join("sim");
    let mut c = kiln();
    c.arg("export").arg(dir.path().join("uirm.toml")).arg("--out").arg(&sim);
    assert!(run(&mut c).status.success());
    let adamw = "kind = \"adamw\"\nlr = 0.002\nweight_decay = 0.01";
    let job = |name: &str, steps: u64, every: u64, optimizer: &str| {
        let text = format!(
            "name = \"{name}\"\n[checkpoint]\nstore = \"{}\"\nevery = {every}\nkeep = 10\n[train]\nsteps = {steps}\nseed = 4\nglobal_batch = 32\nlog_every = 20\neval_every = {steps}\n[train.optimizer]\n{optimizer}\n[algorithm]\nname = \"kuaisim.retention\"\nsimulator = \"{}\"\n[algorithm.model]\ndropout = {dropout}\ncontext = 8\n",
            dir.path().join("store").display(),
            sim.display(),
            dropout = if optimizer == SGD { 0.0 } else { 0.1 },
        );
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    };
    // 2 ranks = 1 (SGD: Adam's normalisation amplifies last-bit differences).
    for (name, ranks) in [("sgd1", 1), ("sgd2", 2)] {
        let out = kiln_run(dir.path(), &job(name, 30, 0, SGD), ranks, &[]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let (w, d) = worst(&params(dir.path(), "sgd1", 30), &params(dir.path(), "sgd2", 30));
    assert!(d <= 1e-5, "2 ranks differ from 1 by {d} ({w})");
    let out = kiln_run(dir.path(), &job("ret2", 600, 0, adamw), 2, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let e = final_eval(dir.path(), "ret2");
    eprintln!("kuaisim.retention: {e}");
    for k in ["nll", "prior_nll", "accuracy", "next_day_auc", "mae_day", "return_day", "test_nll", "test_next_day_auc"] {
        assert!(e[k].as_f64().is_some_and(f64::is_finite), "{k} in {e}");
    }
    // The synthetic users come back sooner after a satisfying session: the
    // model reads that from the sessions (measured: validation next-day AUC
    // 0.61-0.67, NLL 1.33-1.35 vs the marginal's 1.42; test 0.78-0.82,
    // 1.34-1.38 vs 1.60; the session's click rate alone ranks at 0.79 /
    // 0.90). The ranges are over machines' CPU kernels; the validation set
    // is the smaller.
    for (p, auc) in [("", 0.55), ("test_", 0.7)] {
        assert!(e[format!("{p}nll")].as_f64().unwrap() < e[format!("{p}prior_nll")].as_f64().unwrap(), "{e}");
        assert!(e[format!("{p}next_day_auc")].as_f64().unwrap() > auc, "{e}");
    }
    kill_then_resume(dir.path(), &job("retk", 600, 200, adamw), 2, "kill-rank:0:after-step:300");
    let d = max_diff(&params(dir.path(), "retk", 600), &params(dir.path(), "ret2", 600));
    assert!(d <= 1e-6, "the resumed run differs by {d}");
    // Exported, it draws the cross-session environment's return days.
    let mut c = kiln();
    c.arg("export").arg(dir.path().join("ret2.toml")).arg("--out").arg(dir.path().join("retention"));
    assert!(run(&mut c).status.success());
    let random = |name: &str, learned: &str| {
        let text = format!(
            "name = \"{name}\"\n[checkpoint]\nstore = \"{}\"\nevery = 0\n[train]\nsteps = 1\nseed = 5\nglobal_batch = 16\n[algorithm]\nname = \"kuaisim.random\"\nsimulator = \"{}\"\neval_users = 64\n[algorithm.env]\nlevel = \"cross-session\"\nbatch = 8\n{learned}",
            dir.path().join("store").display(),
            sim.display()
        );
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let learned = format!("[algorithm.env.retention]\nmodel = \"learned\"\npath = \"{}\"\n", dir.path().join("retention").display());
    let out = kiln_run(dir.path(), &random("learned", &learned), 2, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let day = final_eval(dir.path(), "learned")["return_day"].as_f64().unwrap();
    assert!((1.0..=10.0).contains(&day), "{day}");
    // The learned model answers the policy: clicks bring these users back, so
    // fusion weights on clicks beat random ones (in-process, same seeds).
    use kiln_kuaisim::env::{Env, EnvConfig, Level, Retention, RetentionModelKind, Simulator};
    let cfg = EnvConfig { batch: 8, retention: Retention { model: RetentionModelKind::Learned, path: Some(dir.path().join("retention")), ..Retention::default() }, ..EnvConfig::new(Level::CrossSession) };
    let simulator = std::sync::Arc::new(Simulator::load_for(&sim, &cfg, tch::Device::Cpu).unwrap());
    let mut env = Env::new(simulator.clone(), cfg.clone(), 5).unwrap();
    let step = std::cell::Cell::new(0u64);
    let by_random = kiln_kuaisim::agents::play_cross(&mut env, 128, |s| {
        step.set(step.get() + 1);
        let w: Vec<f32> = (0..s.size()[0] as u64 * 7).map(|k| 2.0 * kiln_worker::rng::unit(kiln_worker::rng::splitmix(step.get() * 977 + k)) as f32 - 1.0).collect();
        tch::Tensor::from_slice(&w).view([s.size()[0], 7])
    })
    .unwrap();
    let constant = |w: [f32; 7]| {
        let mut env = Env::new(simulator.clone(), cfg.clone(), 5).unwrap();
        let r = kiln_kuaisim::agents::play_cross(&mut env, 128, |s| tch::Tensor::from_slice(&w).unsqueeze(0).expand([s.size()[0], 7], false)).unwrap();
        r.return_days / r.ends
    };
    let click_day = constant([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    let avoid_day = constant([-1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    let random_day = by_random.return_days / by_random.ends;
    eprintln!("learned retention model: return day {random_day:.3} under random weights ({day:.3} in the job), {click_day:.3} under click weights, {avoid_day:.3} avoiding clicks");
    // Measured: 1.33 vs 1.37 days (random 1.34): the environment's sessions
    // click far more than the log's, where the model is near certain of a
    // next-day return.
    assert!(click_day < avoid_day, "click weights {click_day:.3} vs avoiding clicks {avoid_day:.3}");
    // A path with no model is refused with the fix.
    let bad = format!("[algorithm.env.retention]\nmodel = \"learned\"\npath = \"{}\"\n", dir.path().join("nowhere").display());
    let out = kiln_run(dir.path(), &random("bad", &bad), 1, &[]);
    assert!(!out.status.success() && text(&out).contains("export a trained kuaisim.retention job there"), "{}", text(&out));
}
