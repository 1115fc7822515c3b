//! The LLM-powered user simulator as an environment (Zhang et al., AAAI
//! 2025; the reference's gymnasium `UserSim`): a batch of users, each
//! starting from their first `start` real interactions; an action is one
//! item per user; the reward is the simulator's engagement — the 2-of-3
//! ensemble of the keyword, embedding and SASRec voters of
//! `kiln_recsys::llmsim` on the user's history so far; an episode ends with
//! probability `terminate` per step, or after `max_steps`. A finished slot
//! draws a new user. Draws are counter-based, so a restored environment
//! continues exactly.
//!
//! A step may show each user a slate of `slate` items (1, as the
//! reference, by default): every item is judged on the history before the
//! step, then all join it in order. For agents that score items, the world
//! also gives item features (hashed analysis words, then the pros and cons
//! embeddings) and a user state built from them, so KuaiSim's request-level
//! agents play here through [`crate::request::RequestEnv`].
//!
//! It lives beside KuaiSim's environments and shares their conventions
//! (batched users, item ids 1..=items, per-rank checkpoint state through
//! `to_named`/`load`).

use kiln_recsys::llmsim::analysis::read_analyses;
use kiln_recsys::llmsim::embed::SentenceEncoder;
use kiln_recsys::llmsim::evaluate::{Panel, SasrecVoter};
use kiln_recsys::llmsim::sasrec::{read, SasrecJob};
use kiln_recsys::llmsim::voters::ensemble;
use kiln_worker::rng::{fnv1a, splitmix, unit};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use tch::{Device, Kind, Tensor};

/// `[algorithm.world]`: what the simulator is built from.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorldSpec {
    /// User, item, rating, timestamp (CSV/TSV/JSONL with a header).
    pub interactions: PathBuf,
    /// Item analyses (`kiln llmsim analyse --out`).
    pub analysis: PathBuf,
    /// A sentence-transformers folder for the embedding voter (absent: it never votes yes).
    pub embedder: Option<PathBuf>,
    /// `kiln export` of an `llmsim.sasrec` job (absent: it never votes yes).
    pub sasrec: Option<PathBuf>,
    #[serde(default = "positive_at")]
    pub positive_at: f64,
}

fn positive_at() -> f64 {
    4.0
}

/// The users, items and voters, shared by every environment of a process.
pub struct World {
    pub panel: Panel,
    /// Users with at least `start` interactions (those that can start an episode).
    starters: Vec<usize>,
    /// `[items + 1, d]` item features (row 0 the padding item, zeros).
    features: Tensor,
}

/// Buckets the analysis words are hashed into, the first columns of an item's features.
pub const WORD_BUCKETS: usize = 64;

/// Item features `[items + 1, d]` from the analyses, what a recommender could
/// know of an item: its category and pros (+1) and cons (−1) keywords hashed
/// into [`WORD_BUCKETS`] signed buckets, L2-normalised; then, when the world
/// has an embedder, the pros and the cons embeddings. Rows of items without
/// an analysis are zero.
fn item_features(panel: &Panel) -> Tensor {
    let n = panel.data.items;
    let emb = (1..=n as i64).find_map(|i| panel.item(i).1.map(|(p, _)| p.len())).unwrap_or(0);
    let d = WORD_BUCKETS + 2 * emb;
    let mut f = vec![0f32; (n + 1) * d];
    for i in 1..=n {
        let row = &mut f[i * d..(i + 1) * d];
        let (analysis, embedding) = panel.item(i as i64);
        if let Some(a) = analysis {
            let category = format!("category:{}", a.category.to_lowercase());
            let words = std::iter::once((category, 1.0)).chain(a.pros_keywords.iter().map(|w| (w.to_lowercase(), 1.0))).chain(a.cons_keywords.iter().map(|w| (w.to_lowercase(), -1.0)));
            for (w, sign) in words {
                row[(fnv1a(w.as_bytes()) % WORD_BUCKETS as u64) as usize] += sign;
            }
            let norm = row[..WORD_BUCKETS].iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm > 0.0 {
                row[..WORD_BUCKETS].iter_mut().for_each(|x| *x /= norm);
            }
        }
        if let Some((p, c)) = embedding.filter(|(p, c)| p.len() == emb && c.len() == emb) {
            row[WORD_BUCKETS..WORD_BUCKETS + emb].copy_from_slice(p);
            row[WORD_BUCKETS + emb..].copy_from_slice(c);
        }
    }
    Tensor::from_slice(&f).view([n as i64 + 1, d as i64])
}

impl World {
    /// The world of `spec`; users need `start` interactions to start an
    /// episode; the item features live on `device`.
    pub fn load(spec: &WorldSpec, start: usize, device: Device) -> Result<World, String> {
        let job: SasrecJob = serde_json::from_value(serde_json::json!({ "interactions": spec.interactions, "positive_at": spec.positive_at })).map_err(|e| e.to_string())?;
        let encoder = spec.embedder.as_ref().map(|dir| SentenceEncoder::load(dir, Device::Cpu).map_err(|e| e.to_string())).transpose()?;
        let sasrec = spec.sasrec.as_ref().map(|d| SasrecVoter::load(d)).transpose()?;
        let panel = Panel::new(read(&job)?, &read_analyses(&spec.analysis)?, encoder.as_ref(), sasrec)?;
        if panel.analysed() == 0 {
            return Err(format!("{}: no analysis of any item in {} (are they of the same items?)", spec.analysis.display(), spec.interactions.display()));
        }
        let users = &panel.data.users;
        let starters: Vec<usize> = (0..users.len()).filter(|&u| users[u].len() >= start).collect();
        if starters.is_empty() {
            return Err(format!("{}: no user has {start} interactions to start from", spec.interactions.display()));
        }
        let features = item_features(&panel).to_device(device);
        Ok(World { panel, starters, features })
    }

    /// `[items + 1, d]` item features, row k for item k (row 0 the padding item).
    pub fn features(&self) -> &Tensor {
        &self.features
    }

    pub fn items(&self) -> usize {
        self.panel.data.items
    }

    pub fn users(&self) -> usize {
        self.panel.data.users.len()
    }

    /// The ensemble's verdict on `item` (1-based) for `user` after `history`
    /// ((item, liked) pairs); `coin` for an item without an analysis or a
    /// user without history.
    pub fn engaged(&self, user: usize, history: &[(i64, f32)], item: i64, coin: bool) -> bool {
        self.panel.verdict(user, history, item).map_or(coin, |v| ensemble(v.votes, !history.is_empty(), coin))
    }
}

/// Episode settings.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LlmEnvConfig {
    /// Users per rank.
    #[serde(default = "batch")]
    pub batch: usize,
    /// Items shown to each user per step.
    #[serde(default = "slate")]
    pub slate: usize,
    /// Real interactions an episode starts from.
    #[serde(default = "start")]
    pub start: usize,
    /// Probability that an episode ends after a step.
    #[serde(default = "terminate")]
    pub terminate: f64,
    /// Steps after which an episode ends (0: no limit).
    #[serde(default)]
    pub max_steps: usize,
    /// Evaluation: steps per episode (the reference evaluates 11), with no random end.
    #[serde(default = "eval_steps")]
    pub eval_steps: usize,
}

fn batch() -> usize {
    16
}
fn slate() -> usize {
    1
}
fn start() -> usize {
    2
}
fn eval_steps() -> usize {
    11
}
fn terminate() -> f64 {
    0.025
}

impl Default for LlmEnvConfig {
    fn default() -> Self {
        LlmEnvConfig { batch: batch(), slate: slate(), start: start(), terminate: terminate(), max_steps: 0, eval_steps: eval_steps() }
    }
}

impl LlmEnvConfig {
    pub fn check(&self) -> Result<(), String> {
        if self.batch == 0 || self.slate == 0 || self.start == 0 || self.eval_steps == 0 {
            return Err("batch, slate, start and eval_steps must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.terminate) {
            return Err("terminate must be in [0, 1]".into());
        }
        Ok(())
    }

    /// The evaluation's settings: `users` users, episodes of exactly `eval_steps` steps.
    pub fn evaluation(&self, users: usize) -> LlmEnvConfig {
        LlmEnvConfig { batch: users, terminate: 0.0, max_steps: self.eval_steps, ..*self }
    }
}

pub struct LlmEnv {
    world: Rc<World>,
    cfg: LlmEnvConfig,
    seed: u64,
    t: u64,
    drawn: u64,
    user: Vec<usize>,
    history: Vec<Vec<(i64, f32)>>,
    steps: Vec<usize>,
}

fn draw(seed: u64, tag: u64, a: u64, b: u64) -> f64 {
    unit(splitmix(seed ^ splitmix(tag << 56 ^ splitmix(a ^ (b << 32)))))
}

impl LlmEnv {
    pub fn new(world: Rc<World>, cfg: LlmEnvConfig, seed: u64) -> LlmEnv {
        let mut env = LlmEnv { world, cfg, seed, t: 0, drawn: 0, user: vec![0; cfg.batch], history: vec![Vec::new(); cfg.batch], steps: vec![0; cfg.batch] };
        for k in 0..cfg.batch {
            env.arrive(k);
        }
        env
    }

    /// Slot `k` gets the next drawn user, with their first `start` interactions.
    fn arrive(&mut self, k: usize) {
        let s = &self.world.starters;
        let u = s[(splitmix(self.seed ^ splitmix(self.drawn + 1)) % s.len() as u64) as usize];
        self.drawn += 1;
        self.user[k] = u;
        self.history[k] = self.world.panel.data.users[u][..self.cfg.start].to_vec();
        self.steps[k] = 0;
    }

    /// Each slot's user and last `h` (item, reward) pairs, left-padded with
    /// (0, 0): `[B, 1 + 2h]` (the user, the items, then the rewards), as the
    /// reference's observation holds the user id and the history.
    pub fn observation(&self, h: usize) -> Tensor {
        let mut v = Vec::with_capacity(self.cfg.batch * (1 + 2 * h));
        for (hist, &u) in self.history.iter().zip(&self.user) {
            v.push(u as f32);
            let last = &hist[hist.len().saturating_sub(h)..];
            let pad = h - last.len();
            v.extend(std::iter::repeat(0.0).take(pad).chain(last.iter().map(|x| x.0 as f32)));
            v.extend(std::iter::repeat(0.0).take(pad).chain(last.iter().map(|x| x.1)));
        }
        Tensor::from_slice(&v).view([self.cfg.batch as i64, 1 + 2 * h as i64])
    }

    pub fn config(&self) -> &LlmEnvConfig {
        &self.cfg
    }

    pub fn world(&self) -> &World {
        &self.world
    }

    /// Each slot's state `[B, 3d]` from the item features: the mean features
    /// of the items they liked, of those they did not, and of the last item
    /// they saw (as KuaiSim's user state is three encodings wide).
    pub fn user_state(&self) -> Tensor {
        let b = self.cfg.batch;
        // Each history entry adds its weighted feature row to one of 3·B
        // accumulators (liked, disliked, last; by slot).
        let (mut rows, mut into, mut weight) = (Vec::new(), Vec::new(), Vec::new());
        for (k, h) in self.history.iter().enumerate() {
            let liked = h.iter().filter(|x| x.1 > 0.5).count();
            for &(item, y) in h {
                let (m, count) = if y > 0.5 { (0, liked) } else { (1, h.len() - liked) };
                rows.push(item);
                into.push((m * b + k) as i64);
                weight.push(1.0 / count as f32);
            }
            if let Some(&(item, _)) = h.last() {
                rows.push(item);
                into.push((2 * b + k) as i64);
                weight.push(1.0);
            }
        }
        let f = &self.world.features;
        let d = f.device();
        let picked = f.index_select(0, &Tensor::from_slice(&rows).to_device(d)) * Tensor::from_slice(&weight).to_device(d).unsqueeze(1);
        let sums = Tensor::zeros([3 * b as i64, f.size()[1]], (f.kind(), d)).index_add(0, &Tensor::from_slice(&into).to_device(d), &picked);
        sums.view([3, b as i64, -1]).permute([1, 0, 2]).reshape([b as i64, -1])
    }

    /// `slate` items per slot, slot by slot (1..=items): each item's
    /// engagement, judged on the slot's history before this step, and which
    /// episodes ended (those slots hold new users afterwards).
    pub fn step(&mut self, items: &[i64]) -> Result<(Vec<f32>, Vec<bool>), String> {
        let (b, s) = (self.cfg.batch, self.cfg.slate);
        if items.len() != b * s || items.iter().any(|&i| i < 1 || i > self.world.items() as i64) {
            return Err(format!("an action is {b} users × {s} item ids in 1..={}", self.world.items()));
        }
        let (mut rewards, mut done) = (Vec::with_capacity(b * s), Vec::with_capacity(b));
        for (k, slate) in items.chunks_exact(s).enumerate() {
            let judged: Vec<f32> = slate
                .iter()
                .enumerate()
                .map(|(j, &item)| {
                    let coin = draw(self.seed, 1, self.t, (k * s + j) as u64) < 0.5;
                    if self.world.engaged(self.user[k], &self.history[k], item, coin) { 1.0 } else { 0.0 }
                })
                .collect();
            self.history[k].extend(slate.iter().copied().zip(judged.iter().copied()));
            self.steps[k] += 1;
            let end = (self.cfg.max_steps > 0 && self.steps[k] >= self.cfg.max_steps) || draw(self.seed, 2, self.t, k as u64) < self.cfg.terminate;
            rewards.extend(judged);
            done.push(end);
            if end {
                self.arrive(k);
            }
        }
        self.t += 1;
        Ok((rewards, done))
    }

    /// The environment as tensors, for per-rank checkpoint state.
    pub fn to_named(&self) -> Vec<(String, Tensor)> {
        let lens: Vec<i64> = self.history.iter().map(|h| h.len() as i64).collect();
        let items: Vec<i64> = self.history.iter().flatten().map(|x| x.0).collect();
        let rewards: Vec<f32> = self.history.iter().flatten().map(|x| x.1).collect();
        let meta = [self.t as i64, self.drawn as i64];
        vec![
            ("llm_env.meta".into(), Tensor::from_slice(&meta)),
            ("llm_env.user".into(), Tensor::from_slice(&self.user.iter().map(|&u| u as i64).collect::<Vec<_>>())),
            ("llm_env.steps".into(), Tensor::from_slice(&self.steps.iter().map(|&s| s as i64).collect::<Vec<_>>())),
            ("llm_env.lens".into(), Tensor::from_slice(&lens)),
            ("llm_env.items".into(), Tensor::from_slice(&items)),
            ("llm_env.rewards".into(), Tensor::from_slice(&rewards)),
        ]
    }

    pub fn load(&mut self, named: &BTreeMap<String, Tensor>) -> Result<(), String> {
        let get = |k: &str| named.get(k).ok_or_else(|| format!("the checkpoint's environment has no {k}")).map(|t| t.to_device(Device::Cpu));
        let ints = |k: &str| -> Result<Vec<i64>, String> { Vec::<i64>::try_from(get(k)?.to_kind(Kind::Int64)).map_err(|e| e.to_string()) };
        let (meta, user, steps, lens, items) = (ints("llm_env.meta")?, ints("llm_env.user")?, ints("llm_env.steps")?, ints("llm_env.lens")?, ints("llm_env.items")?);
        let rewards: Vec<f32> = Vec::try_from(get("llm_env.rewards")?).map_err(|e: tch::TchError| e.to_string())?;
        if user.len() != self.cfg.batch || steps.len() != user.len() || lens.len() != user.len() || meta.len() != 2 || lens.iter().any(|&n| n < 0) || lens.iter().sum::<i64>() as usize != items.len() || items.len() != rewards.len() {
            return Err(format!("the checkpoint's environment holds {} users; this job's batch is {}", user.len(), self.cfg.batch));
        }
        let (n_items, n_users) = (self.world.items() as i64, self.world.users() as i64);
        if items.iter().any(|&i| i < 1 || i > n_items) || user.iter().any(|&u| u < 0 || u >= n_users) {
            return Err(format!("the checkpoint's environment names items or users outside this world ({n_items} items, {n_users} users): was it saved with another [world]?"));
        }
        let mut at = 0usize;
        self.history = lens
            .iter()
            .map(|&n| {
                let h: Vec<(i64, f32)> = (at..at + n as usize).map(|j| (items[j], rewards[j])).collect();
                at += n as usize;
                h
            })
            .collect();
        self.user = user.iter().map(|&u| u as usize).collect();
        self.steps = steps.iter().map(|&s| s as usize).collect();
        self.t = meta[0] as u64;
        self.drawn = meta[1] as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three users, three items; items 1 and 2 analysed, item 3 not.
    fn world(dir: &std::path::Path) -> Rc<World> {
        let rows = "user_id,item_id,rating,timestamp\nu1,a,5,1\nu1,b,1,2\nu1,c,5,3\nu2,b,4,1\nu2,c,2,2\nu2,a,1,3\nu3,a,5,1\n";
        std::fs::write(dir.join("i.csv"), rows).unwrap();
        let analysis = [
            r#"{"item_id": "a", "pros": "tasty", "cons": "slow", "pros_keywords": ["tasty"], "cons_keywords": ["slow"], "category": "pizza"}"#,
            r#"{"item_id": "b", "pros": "cheap", "cons": "loud", "pros_keywords": ["cheap", "quick"], "cons_keywords": ["loud"], "category": "bar"}"#,
        ];
        std::fs::write(dir.join("a.jsonl"), analysis.join("\n")).unwrap();
        let spec = WorldSpec { interactions: dir.join("i.csv"), analysis: dir.join("a.jsonl"), embedder: None, sasrec: None, positive_at: 4.0 };
        Rc::new(World::load(&spec, 2, Device::Cpu).unwrap())
    }

    fn row(t: &Tensor, i: i64) -> Vec<f32> {
        Vec::try_from(t.get(i)).unwrap()
    }

    #[test]
    fn features_state_and_slates_follow_the_histories() {
        let dir = tempfile::tempdir().unwrap();
        let w = world(dir.path());
        let f = w.features();
        assert_eq!(f.size(), [4, WORD_BUCKETS as i64]);
        // Analysed items have unit rows; the padding item and item c (no analysis) are zero.
        for (i, norm) in [(0, 0.0), (1, 1.0), (2, 1.0), (3, 0.0)] {
            assert!((row(f, i).iter().map(|x| x * x).sum::<f32>().sqrt() - norm).abs() < 1e-6, "item {i}");
        }
        let cfg = LlmEnvConfig { batch: 2, slate: 2, ..Default::default() };
        let mut env = LlmEnv::new(w.clone(), cfg, 7);
        // The state: mean liked features, mean disliked, the last item's.
        let state = env.user_state();
        assert_eq!(state.size(), [2, 3 * WORD_BUCKETS as i64]);
        for k in 0..2 {
            let h = &env.history[k];
            let mean = |liked: bool| -> Vec<f32> {
                let picked: Vec<i64> = h.iter().filter(|x| (x.1 > 0.5) == liked).map(|x| x.0).collect();
                (0..WORD_BUCKETS).map(|j| picked.iter().map(|&i| row(f, i)[j]).sum::<f32>() / picked.len().max(1) as f32).collect()
            };
            let want: Vec<f32> = [mean(true), mean(false), row(f, h.last().unwrap().0)].concat();
            let got = row(&state, k as i64);
            assert!(want.iter().zip(&got).all(|(a, b)| (a - b).abs() < 1e-6), "slot {k}: {h:?}");
        }
        // A slate of 2 per user: both items join the history, judged on the history before.
        let before: Vec<usize> = env.history.iter().map(Vec::len).collect();
        let saved = env.to_named();
        let (r, done) = env.step(&[3, 1, 2, 3]).unwrap();
        assert_eq!((r.len(), done.len()), (4, 2));
        for k in 0..2 {
            if !done[k] {
                assert_eq!(env.history[k].len(), before[k] + 2);
                assert_eq!(env.history[k][before[k]..].iter().map(|x| x.0).collect::<Vec<_>>(), [[3, 1], [2, 3]][k]);
            }
        }
        // A restored environment takes the same step to the same outcome.
        let mut again = LlmEnv::new(w.clone(), cfg, 7);
        again.load(&saved.into_iter().collect()).unwrap();
        assert_eq!(again.step(&[3, 1, 2, 3]).unwrap(), (r, done));
        // A checkpoint naming items this world lacks is refused, not indexed.
        let mut bad: BTreeMap<String, Tensor> = env.to_named().into_iter().collect();
        let n = bad["llm_env.items"].size()[0];
        bad.insert("llm_env.items".into(), Tensor::full([n], 99i64, (Kind::Int64, Device::Cpu)));
        assert!(LlmEnv::new(w.clone(), cfg, 7).load(&bad).unwrap_err().contains("another [world]"));
        assert!(env.step(&[1, 2, 3]).unwrap_err().contains("2 users × 2 item ids in 1..=3"));
        assert!(env.step(&[1, 2, 3, 4]).is_err());
    }
}
