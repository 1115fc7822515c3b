//! The simulator's environments, one batched API for KuaiSim's three levels:
//! `reset` → observation; `step(action)` → responses, rewards, user state,
//! done, coverage, ILD, return day.
//!
//! - **Request** ([`Level::Request`]): the action is a slate of item ids per
//!   user; the temper drops by 1 per step, every user leaves after
//!   `initial_temper` steps, all at once.
//! - **Whole session** ([`Level::WholeSession`]): the same action; the temper
//!   drops by clip(boost − 2, −2, 0) per step (boost: the slate's mean weighted
//!   response), a user leaves once it is below 1 and is replaced in the batch
//!   by a newly sampled user.
//! - **Cross session** ([`Level::CrossSession`]): the action is 7
//!   ranking-fusion weights per user — the environment scores every item by
//!   Σ_b w_b·P(b) and shows the top `slate` — or a slate itself, and each session lasts
//!   `initial_temper` steps; at a session's end the retention model draws the
//!   return day — the parametric one, or the learned one
//!   ([`crate::retention`]) over the user's past sessions (those in the log,
//!   then the episode's); a user-episode is `sessions` sessions.
//!
//! Responses are Bernoulli draws from the response model's probabilities
//! minus the item-correlation penalty ρ·(an item's mean cosine similarity to
//! the rest of its slate), clipped at 0. Every draw is a pure function of
//! (seed, step, slot), so a run is reproducible on any device.

use crate::log::Logs;
use crate::response::ResponseModel;
use crate::retention::{session_states, summary, RetentionModel, Sessions, SUMMARY};
use crate::NB;
use kiln_worker::rng::{splitmix, unit};
use std::collections::BTreeMap;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Level {
    Request,
    WholeSession,
    CrossSession,
}

/// Which return-day model the cross-session environment draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetentionModelKind {
    #[default]
    Parametric,
    /// A trained `kuaisim.retention` model exported to `retention.path`.
    Learned,
    /// GFN4Retention's cumulative-influence variant: the parametric model
    /// driven by an exponential moving average of the user's immediate
    /// rewards over the whole episode instead of the last session's mean.
    Cumulative,
}

/// The return-day model. Parametric: p = clamp(personal + feedback ·
/// session reward + next_day_bias, 0.001, 0.999), the return day a draw from
/// the geometric distribution truncated to 1..=max_return_day. Cumulative:
/// the same with `cumulative_influence` × (EMA − 0.01) in place of the
/// feedback term, the EMA (decay `ema_decay`) over every step's immediate
/// reward since the user arrived. Learned: a draw from the trained model's
/// distribution after the user's sessions.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    pub model: RetentionModelKind,
    /// Learned: the directory a `kuaisim.retention` job was exported to.
    pub path: Option<std::path::PathBuf>,
    pub max_return_day: usize,
    pub next_day_bias: f64,
    pub feedback_influence: f64,
    /// Scale of the fixed random linear map of the end-of-session user state
    /// that makes each user's personal bias.
    pub personal_scale: f64,
    /// Cumulative: the EMA's decay per step and its weight (the reference's
    /// 0.7 and 0.4).
    pub ema_decay: f64,
    pub cumulative_influence: f64,
}

impl Default for Retention {
    /// The reference's benchmark values.
    fn default() -> Self {
        Retention { model: RetentionModelKind::Parametric, path: None, max_return_day: 10, next_day_bias: 0.4, feedback_influence: 0.1, personal_scale: 0.1, ema_decay: 0.7, cumulative_influence: 0.4 }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvConfig {
    pub level: Level,
    /// Users simulated at once.
    #[serde(default = "default_batch")]
    pub batch: usize,
    #[serde(default = "default_slate")]
    pub slate: usize,
    /// Request and cross-session: steps per session; whole session: the
    /// starting temper (the reference: 5, 20 and 5).
    pub initial_temper: Option<f64>,
    /// The item-correlation penalty ρ (the reference: 0.1 request, 0.2 otherwise).
    pub rho: Option<f64>,
    /// Weight of each behaviour in the immediate reward (default per level:
    /// request 1 for all but hate 0; whole session click only; cross session
    /// each behaviour's positive/negative ratio, hate negative).
    pub reward_weights: Option<[f64; NB]>,
    /// Cross session: sessions per user-episode.
    #[serde(default = "default_sessions")]
    pub sessions: usize,
    #[serde(default)]
    pub retention: Retention,
}

fn default_batch() -> usize {
    32
}
fn default_slate() -> usize {
    6
}
fn default_sessions() -> usize {
    6
}

impl EnvConfig {
    pub fn new(level: Level) -> EnvConfig {
        EnvConfig { level, batch: default_batch(), slate: default_slate(), initial_temper: None, rho: None, reward_weights: None, sessions: default_sessions(), retention: Retention::default() }
    }

    pub fn temper(&self) -> f64 {
        self.initial_temper.unwrap_or(match self.level {
            Level::WholeSession => 20.0,
            _ => 5.0,
        })
    }

    pub fn rho(&self) -> f64 {
        self.rho.unwrap_or(match self.level {
            Level::Request => 0.1,
            _ => 0.2,
        })
    }

    pub fn check(&self) -> Result<(), String> {
        if self.batch == 0 || self.slate == 0 || self.sessions == 0 {
            return Err("batch, slate and sessions must be at least 1".into());
        }
        if !(self.temper() >= 1.0 && self.temper() <= 1e4) {
            return Err("initial_temper must be in [1, 10000]".into());
        }
        if !(0.0..=1.0).contains(&self.rho()) {
            return Err("rho must be in [0, 1]".into());
        }
        let r = &self.retention;
        if !(0.0..1.0).contains(&r.ema_decay) || !r.cumulative_influence.is_finite() {
            return Err("retention: ema_decay must be in [0, 1) and cumulative_influence finite".into());
        }
        if r.max_return_day == 0 || !(r.next_day_bias.is_finite() && r.feedback_influence.is_finite() && r.personal_scale.is_finite()) {
            return Err("retention: max_return_day must be at least 1 and the biases finite".into());
        }
        if r.model == RetentionModelKind::Learned && r.path.is_none() {
            return Err("retention: model = \"learned\" needs path = the directory a kuaisim.retention job was exported to".into());
        }
        Ok(())
    }
}

/// What a user looks like to an agent: their id and history.
pub struct Observation {
    /// `[B]` re-indexed user ids.
    pub user: Tensor,
    /// `[B, H]` item ids, left-padded with 0; `[B, H, 7]` responses; `[B, H]` real.
    pub history: Tensor,
    pub history_response: Tensor,
    pub real: Tensor,
}

/// An agent's action.
pub enum Action {
    /// Request and whole session: `[B, slate]` item ids (1..=items).
    Slate(Tensor),
    /// Cross session: `[B, 7]` ranking-fusion weights (the level also takes a slate).
    Fusion(Tensor),
}

/// What one step returns.
pub struct Step {
    /// `[B, slate]` the items shown (the action's, or the fusion's top).
    pub slate: Tensor,
    /// `[B, slate, 7]` sampled responses in {0, 1}.
    pub responses: Tensor,
    /// `[B, slate, 7]` the response model's probabilities for the shown
    /// items (before the item-correlation penalty).
    pub probs: Tensor,
    /// `[B, slate]` each shown item's weighted response sum.
    pub item_reward: Tensor,
    /// `[B]` the immediate reward: the slate's mean item reward.
    pub reward: Tensor,
    /// `[B, 3·enc]` the users' state after this step (before replacements).
    pub user_state: Tensor,
    /// `[B]` whether the slot's user left (whole session), or its episode ended.
    pub done: Vec<bool>,
    /// Distinct items shown in this step over the batch.
    pub coverage: usize,
    /// 1 − mean pairwise cosine similarity within slates.
    pub ild: f64,
    /// Cross session: the return day of users whose session ended (else 0).
    pub return_day: Vec<usize>,
}

/// Files of an exported simulator (`kiln export` of a `kuaisim.response` job).
pub const WEIGHTS: &str = "response.safetensors";
pub const META: &str = "simulator.json";

/// The shared part: the response model and the log it was trained on.
pub struct Simulator {
    pub logs: Logs,
    pub model: ResponseModel,
    /// The variables behind `model` when it was loaded here.
    _vars: Option<tch::nn::VarStore>,
    /// The learned return-day model, when one was attached (and its variables).
    pub retention: Option<RetentionModel>,
    _retention_vars: Option<tch::nn::VarStore>,
    /// `[items + 1, enc]` every item's encoding (row 0: padding).
    pub items: Tensor,
    pub history: usize,
    pub device: Device,
}

impl Simulator {
    pub fn new(logs: Logs, model: ResponseModel, history: usize, device: Device) -> Simulator {
        let n = logs.items.len() as i64 + 1;
        let items = tch::no_grad(|| model.encode_items(&Tensor::arange(n, (Kind::Int64, device))));
        Simulator { logs, model, _vars: None, retention: None, _retention_vars: None, items, history, device }
    }

    /// The simulator exported to `dir` by `kiln export` of a
    /// `kuaisim.response` job: its log is processed again (the same spec, so
    /// the same ids) and the trained weights loaded.
    pub fn load(dir: &std::path::Path, device: Device) -> Result<Simulator, String> {
        let meta_path = dir.join(META);
        let text = std::fs::read_to_string(&meta_path).map_err(|e| format!("{}: {e} (export a trained kuaisim.response job there with kiln export)", meta_path.display()))?;
        #[derive(serde::Deserialize)]
        struct Meta {
            model: crate::response::ResponseConfig,
            data: crate::log::LogSpec,
        }
        let meta: Meta = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", meta_path.display()))?;
        let logs = crate::log::load(&meta.data).map_err(|e| format!("the simulator's log: {e}"))?;
        let mut vs = tch::nn::VarStore::new(device);
        let model = ResponseModel::new(&vs.root(), &logs, &meta.model);
        vs.load(dir.join(WEIGHTS)).map_err(|e| format!("{}: {e}", dir.join(WEIGHTS).display()))?;
        vs.freeze();
        let mut sim = Simulator::new(logs, model, meta.model.history, device);
        sim._vars = Some(vs);
        Ok(sim)
    }

    /// [`Simulator::load`], plus the learned retention model when `env` asks for it.
    pub fn load_for(dir: &std::path::Path, env: &EnvConfig, device: Device) -> Result<Simulator, String> {
        let mut sim = Simulator::load(dir, device)?;
        if let (RetentionModelKind::Learned, Some(path)) = (env.retention.model, &env.retention.path) {
            let (model, vs) = RetentionModel::load(path, 3 * sim.model.enc_dim(), device).map_err(|e| format!("retention: {e}"))?;
            sim.attach_retention(model, Some(vs));
        }
        Ok(sim)
    }

    /// Makes `model` the learned return-day model (`vars`: its variables, kept alive).
    pub fn attach_retention(&mut self, model: RetentionModel, vars: Option<tch::nn::VarStore>) {
        self.retention = Some(model);
        self._retention_vars = vars;
    }

    pub fn item_count(&self) -> usize {
        self.logs.items.len()
    }
}

pub struct Env {
    sim: Arc<Simulator>,
    cfg: EnvConfig,
    seed: u64,
    /// Steps taken (keys the draws).
    t: u64,
    /// Users sampled so far (keys the user draws).
    drawn: u64,
    user: Vec<i64>,
    history: Vec<i64>,
    response: Vec<f32>,
    real: Vec<bool>,
    temper: Vec<f64>,
    /// Cross session: steps into the current session, sessions finished,
    /// and the session's summed immediate reward.
    in_session: Vec<usize>,
    sessions: Vec<usize>,
    session_reward: Vec<f64>,
    weights: Tensor,
    personal: Tensor,
    /// Learned retention: each slot's last `context` sessions (left-padded):
    /// end-of-session encodings, the gap before each, real flags; and the
    /// gap before the slot's next session (0: unknown).
    past_enc: Vec<f32>,
    past_gap: Vec<i64>,
    past_real: Vec<bool>,
    next_gap: Vec<i64>,
    /// Learned retention: the current session's summed responses and impressions per slot.
    session_resp: Vec<[f64; NB]>,
    session_items: Vec<usize>,
    /// Cumulative retention: each slot's EMA of immediate rewards.
    ema: Vec<f64>,
    /// Users' logged sessions as the learned model's context (a pure
    /// function of the user, cached).
    log_context: std::collections::HashMap<i64, (Vec<f32>, Vec<i64>)>,
}

impl Env {
    pub fn new(sim: Arc<Simulator>, cfg: EnvConfig, seed: u64) -> Result<Env, String> {
        cfg.check()?;
        let weights = match (cfg.reward_weights, cfg.level) {
            (Some(w), _) => w,
            (None, Level::Request) => [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
            (None, Level::WholeSession) => [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            (None, Level::CrossSession) => {
                let r = sim.logs.positive_rates();
                let mut w = r.map(|p| if p > 0.0 && p < 1.0 { p / (1.0 - p) } else { 1.0 });
                w[NB - 1] = -w[NB - 1];
                w
            }
        };
        let dim = 3 * sim.model.enc_dim();
        let personal: Vec<f32> = (0..dim as u64).map(|k| (normal(seed ^ 0x9e5, k) * cfg.retention.personal_scale / (dim as f64).sqrt()) as f32).collect();
        let b = cfg.batch;
        let h = sim.history;
        let weights = Tensor::from_slice(&weights.map(|x| x as f32)).to_device(sim.device);
        let personal = Tensor::from_slice(&personal).to_device(sim.device);
        let learned = cfg.level == Level::CrossSession && cfg.retention.model == RetentionModelKind::Learned;
        let (context, state_dim) = match (&sim.retention, learned) {
            (Some(m), true) => {
                if m.config().max_return_day != cfg.retention.max_return_day {
                    return Err(format!("retention: max_return_day is {} but the learned model predicts 1..={} days; set max_return_day = {}", cfg.retention.max_return_day, m.config().max_return_day, m.config().max_return_day));
                }
                (m.config().context, dim as usize + SUMMARY)
            }
            (None, true) => return Err("retention: model = \"learned\" but the simulator has no retention model attached (load it with Simulator::load_for)".into()),
            _ => (0, 0),
        };
        let mut env = Env {
            past_enc: vec![0.0; b * context * state_dim],
            past_gap: vec![0; b * context],
            past_real: vec![false; b * context],
            next_gap: vec![0; if learned { b } else { 0 }],
            session_resp: vec![[0.0; NB]; if learned { b } else { 0 }],
            session_items: vec![0; if learned { b } else { 0 }],
            ema: vec![0.0; b],
            log_context: Default::default(),
            seed,
            t: 0,
            drawn: 0,
            user: vec![0; b],
            history: vec![0; b * h],
            response: vec![0.0; b * h * NB],
            real: vec![false; b * h],
            temper: vec![cfg.temper(); b],
            in_session: vec![0; b],
            sessions: vec![0; b],
            session_reward: vec![0.0; b],
            weights,
            personal,
            sim,
            cfg,
        };
        for slot in 0..b {
            env.new_user(slot);
        }
        Ok(env)
    }

    pub fn config(&self) -> &EnvConfig {
        &self.cfg
    }

    /// Everything that changes as the environment steps, for checkpoints (a
    /// resumed run continues with the same users, histories and draws).
    pub fn to_named(&self) -> Vec<(String, Tensor)> {
        let i = |v: &[i64]| Tensor::from_slice(v);
        let f = |v: &[f64]| Tensor::from_slice(v);
        let sizes: Vec<i64> = self.in_session.iter().chain(&self.sessions).map(|&x| x as i64).collect();
        let mut named = vec![
            ("env.counters".into(), i(&[self.t as i64, self.drawn as i64])),
            ("env.user".into(), i(&self.user)),
            ("env.history".into(), i(&self.history)),
            ("env.response".into(), Tensor::from_slice(&self.response)),
            ("env.real".into(), Tensor::from_slice(&self.real.iter().map(|&r| r as u8).collect::<Vec<_>>())),
            ("env.temper".into(), f(&self.temper)),
            ("env.sessions".into(), i(&sizes)),
            ("env.session_reward".into(), f(&self.session_reward)),
        ];
        if !self.next_gap.is_empty() {
            named.push(("env.past_enc".into(), Tensor::from_slice(&self.past_enc)));
            named.push(("env.past_gap".into(), i(&self.past_gap)));
            named.push(("env.past_real".into(), Tensor::from_slice(&self.past_real.iter().map(|&r| r as u8).collect::<Vec<_>>())));
            named.push(("env.next_gap".into(), i(&self.next_gap)));
            named.push(("env.session_resp".into(), f(&self.session_resp.concat())));
            named.push(("env.session_items".into(), i(&self.session_items.iter().map(|&x| x as i64).collect::<Vec<_>>())));
        }
        if self.cfg.retention.model == RetentionModelKind::Cumulative {
            named.push(("env.ema".into(), f(&self.ema)));
        }
        named
    }

    /// Takes back what [`Env::to_named`] wrote (for the same batch and history).
    pub fn load(&mut self, named: &BTreeMap<String, Tensor>) -> Result<(), String> {
        let get = |k: &str| named.get(k).ok_or_else(|| format!("the checkpoint's environment has no {k}"));
        let ints = |k: &str| -> Result<Vec<i64>, String> { Vec::<i64>::try_from(get(k)?).map_err(|e| format!("{k}: {e}")) };
        let floats = |k: &str| -> Result<Vec<f64>, String> { Vec::<f64>::try_from(get(k)?).map_err(|e| format!("{k}: {e}")) };
        let (user, history, temper) = (ints("env.user")?, ints("env.history")?, floats("env.temper")?);
        if user.len() != self.user.len() || history.len() != self.history.len() {
            return Err(format!("the checkpoint's environment has {} users and {} history slots; this job has {} and {} (batch or history changed)", user.len(), history.len(), self.user.len(), self.history.len()));
        }
        let c = ints("env.counters")?;
        let sizes = ints("env.sessions")?;
        let b = self.user.len();
        (self.t, self.drawn) = (c[0] as u64, c[1] as u64);
        self.user = user;
        self.history = history;
        self.response = Vec::<f32>::try_from(get("env.response")?).map_err(|e| e.to_string())?;
        self.real = Vec::<u8>::try_from(get("env.real")?).map_err(|e| e.to_string())?.into_iter().map(|x| x != 0).collect();
        self.temper = temper;
        self.in_session = sizes[..b].iter().map(|&x| x as usize).collect();
        self.sessions = sizes[b..].iter().map(|&x| x as usize).collect();
        self.session_reward = floats("env.session_reward")?;
        if self.cfg.retention.model == RetentionModelKind::Cumulative {
            self.ema = floats("env.ema")?;
        }
        if !self.next_gap.is_empty() {
            let enc = Vec::<f32>::try_from(get("env.past_enc")?).map_err(|e| e.to_string())?;
            if enc.len() != self.past_enc.len() {
                return Err("the checkpoint's environment holds another retention context (context or simulator changed)".into());
            }
            self.past_enc = enc;
            self.past_gap = ints("env.past_gap")?;
            self.past_real = Vec::<u8>::try_from(get("env.past_real")?).map_err(|e| e.to_string())?.into_iter().map(|x| x != 0).collect();
            self.next_gap = ints("env.next_gap")?;
            self.session_resp = floats("env.session_resp")?.chunks_exact(NB).map(|c| std::array::from_fn(|k| c[k])).collect();
            self.session_items = ints("env.session_items")?.into_iter().map(|x| x as usize).collect();
        }
        Ok(())
    }

    /// Each slot's temper (whole session: the user leaves below 1).
    pub fn temper(&self) -> &[f64] {
        &self.temper
    }

    /// Puts a newly drawn user (uniform over the log's users) in `slot`, with
    /// their last training records as history.
    fn new_user(&mut self, slot: usize) {
        let logs = &self.sim.logs;
        let u = 1 + (splitmix(self.seed ^ splitmix(0xA11CE ^ self.drawn)) % logs.users.len() as u64) as usize;
        self.drawn += 1;
        let h = self.sim.history;
        let recs: Vec<usize> = (logs.starts[u - 1]..logs.starts[u]).filter(|&r| logs.split[r] == 0).collect();
        let recent = &recs[recs.len().saturating_sub(h)..];
        let offset = h - recent.len();
        self.user[slot] = u as i64;
        for j in 0..h {
            let (item, resp, real) = match j.checked_sub(offset) {
                Some(k) => (logs.item[recent[k]] as i64, logs.response[recent[k]].map(|x| x as f32), true),
                None => (0, [0.0; NB], false),
            };
            self.history[slot * h + j] = item;
            self.response[(slot * h + j) * NB..][..NB].copy_from_slice(&resp);
            self.real[slot * h + j] = real;
        }
        if !self.next_gap.is_empty() {
            self.start_context(slot);
        }
        self.temper[slot] = self.cfg.temper();
        self.in_session[slot] = 0;
        self.sessions[slot] = 0;
        self.session_reward[slot] = 0.0;
        self.ema[slot] = 0.0;
    }

    /// Learned retention: the slot's context becomes its user's logged
    /// sessions (training records only, as the history), the next gap unknown.
    fn start_context(&mut self, slot: usize) {
        let Some(model) = &self.sim.retention else { return };
        let l = model.config().context;
        let u = self.user[slot];
        if !self.log_context.contains_key(&u) {
            let logs = &self.sim.logs;
            let s = Sessions::of_users(logs, [u as usize], model.config().max_return_day, |r| logs.split[r] == 0);
            let ks: Vec<usize> = (s.len().saturating_sub(l)..s.len()).collect();
            let enc = session_states(&self.sim.model, logs, &s, &ks, self.sim.history, Device::Cpu).reshape([-1]);
            let enc = Vec::<f32>::try_from(enc.to_device(Device::Cpu)).unwrap_or_default();
            self.log_context.insert(u, (enc, ks.iter().map(|&k| s.gap_before[k]).collect()));
        }
        let (enc, gaps) = &self.log_context[&u];
        let d = self.past_enc.len() / (self.cfg.batch * l);
        let off = l - gaps.len();
        self.past_enc[slot * l * d..(slot + 1) * l * d].fill(0.0);
        self.past_enc[(slot * l + off) * d..(slot + 1) * l * d].copy_from_slice(enc);
        for j in 0..l {
            self.past_gap[slot * l + j] = if j >= off { gaps[j - off] } else { 0 };
            self.past_real[slot * l + j] = j >= off;
        }
        self.next_gap[slot] = 0;
        self.session_resp[slot] = [0.0; NB];
        self.session_items[slot] = 0;
    }

    /// Learned retention: appends the ended sessions (`slots`, their
    /// encodings the rows of `state`) to their contexts and draws each
    /// return day from the model.
    fn learned_return_days(&mut self, slots: &[usize], state: &Tensor) -> Result<Vec<usize>, String> {
        let Some(model) = &self.sim.retention else { return Err("no retention model attached".into()) };
        let l = model.config().context;
        let d = self.past_enc.len() / (self.cfg.batch * l);
        let rows = Vec::<f32>::try_from(state.to_device(Device::Cpu).contiguous().reshape([-1])).map_err(|e| e.to_string())?;
        let s = d - SUMMARY;
        for &slot in slots {
            let (e, g) = (slot * l * d, slot * l);
            self.past_enc.copy_within(e + d..e + l * d, e);
            self.past_enc[e + (l - 1) * d..e + (l - 1) * d + s].copy_from_slice(&rows[slot * s..(slot + 1) * s]);
            self.past_enc[e + (l - 1) * d + s..e + l * d].copy_from_slice(&summary(&self.session_resp[slot], self.session_items[slot]));
            self.session_resp[slot] = [0.0; NB];
            self.session_items[slot] = 0;
            self.past_gap.copy_within(g + 1..g + l, g);
            self.past_gap[g + l - 1] = self.next_gap[slot];
            self.past_real.copy_within(g + 1..g + l, g);
            self.past_real[g + l - 1] = true;
        }
        let n = slots.len() as i64;
        let pick = |v: &[f32], w: usize| -> Vec<f32> { slots.iter().flat_map(|&s| v[s * w..(s + 1) * w].iter().copied()).collect() };
        let dev = self.sim.device;
        let enc = Tensor::from_slice(&pick(&self.past_enc, l * d)).view([n, l as i64, d as i64]).to_device(dev);
        let gap: Vec<i64> = slots.iter().flat_map(|&s| self.past_gap[s * l..(s + 1) * l].iter().copied()).collect();
        let real: Vec<bool> = slots.iter().flat_map(|&s| self.past_real[s * l..(s + 1) * l].iter().copied()).collect();
        let gap = Tensor::from_slice(&gap).view([n, l as i64]).to_device(dev);
        let real = Tensor::from_slice(&real).view([n, l as i64]).to_device(dev);
        let p = tch::no_grad(|| model.logits(&enc, &gap, &real, false).softmax(-1, Kind::Float));
        let p = Vec::<f32>::try_from(p.to_device(Device::Cpu).reshape([-1])).map_err(|e| e.to_string())?;
        let days = model.config().max_return_day;
        let mut out = Vec::with_capacity(slots.len());
        for (i, &slot) in slots.iter().enumerate() {
            let w: Vec<f64> = p[i * days..(i + 1) * days].iter().map(|&x| x as f64).collect();
            let day = self.draw_day(&w, slot);
            self.next_gap[slot] = day as i64;
            out.push(day);
        }
        Ok(out)
    }

    pub fn observation(&self) -> Observation {
        let (b, h, d) = (self.cfg.batch as i64, self.sim.history as i64, self.sim.device);
        Observation {
            user: Tensor::from_slice(&self.user).to_device(d),
            history: Tensor::from_slice(&self.history).view([b, h]).to_device(d),
            history_response: Tensor::from_slice(&self.response).view([b, h, NB as i64]).to_device(d),
            real: Tensor::from_slice(&self.real).view([b, h]).to_device(d),
        }
    }

    /// The users' current state `[B, 3·enc]` under the response model.
    pub fn user_state(&self) -> Tensor {
        let o = self.observation();
        tch::no_grad(|| self.sim.model.state(&o.user, &o.history, &o.history_response, &o.real, false))
    }

    /// Every item's probability of each behaviour for the current users,
    /// `[B, items, 7]` (item k at index k − 1).
    pub fn item_probabilities(&self) -> Tensor {
        let s = self.user_state();
        tch::no_grad(|| self.sim.model.logits(&s, &self.sim.items.narrow(0, 1, self.sim.item_count() as i64), false).sigmoid())
    }

    /// Starts every slot with a new user.
    pub fn reset(&mut self) -> Observation {
        for slot in 0..self.cfg.batch {
            self.new_user(slot);
        }
        self.observation()
    }

    pub fn step(&mut self, action: &Action) -> Result<Step, String> {
        let (b, k) = (self.cfg.batch as i64, self.cfg.slate as i64);
        let n = self.sim.item_count() as i64;
        let state = self.user_state();
        let slate = match (action, self.cfg.level) {
            // Cross session too: a slate is shown as given (for agents that
            // generate lists, such as DT4IER).
            (Action::Slate(s), _) => {
                if s.size() != [b, k] {
                    return Err(format!("the action is a slate of shape {:?}; this environment takes [{b}, {k}] (batch, slate) item ids", s.size()));
                }
                let ids = s.to_device(Device::Cpu).to_kind(Kind::Int64);
                let (lo, hi) = (ids.min().int64_value(&[]), ids.max().int64_value(&[]));
                if lo < 1 || hi > n {
                    return Err(format!("the slate holds item id {} outside the candidate pool 1..={n}", if lo < 1 { lo } else { hi }));
                }
                ids.to_device(self.sim.device)
            }
            (Action::Fusion(w), Level::CrossSession) => {
                if w.size() != [b, NB as i64] {
                    return Err(format!("the action is fusion weights of shape {:?}; this environment takes [{b}, {NB}] (batch, behaviours)", w.size()));
                }
                let p = self.item_probabilities(); // [B, N, 7]
                let score = p.matmul(&w.to_device(self.sim.device).to_kind(Kind::Float).unsqueeze(-1)).squeeze_dim(-1);
                score.topk(k.min(n), -1, true, true).1 + 1
            }
            (Action::Fusion(_), _) => return Err("this environment takes a slate of item ids ([batch, slate]), not fusion weights".into()),
        };
        let k = slate.size()[1];
        let enc = self.sim.items.index_select(0, &slate.reshape([-1])).view([b, k, -1]);
        let probs = tch::no_grad(|| self.sim.model.logits(&state, &enc, false).sigmoid()); // [B, k, 7]
        // Item-correlation penalty on L2-normalised encodings.
        let unit_enc = &enc / enc.norm_scalaropt_dim(2.0, [-1i64].as_slice(), true).clamp_min(1e-12);
        let sim = unit_enc.matmul(&unit_enc.transpose(1, 2)); // [B, k, k]
        let others = if k > 1 { (sim.sum_dim_intlist([-1i64].as_slice(), false, Kind::Float) - 1.0) / (k - 1) as f64 } else { sim.zeros_like().select(2, 0) };
        let p = (&probs - others.unsqueeze(-1) * self.cfg.rho()).clamp_min(0.0);
        let draws: Vec<f32> = (0..(b * k * NB as i64) as u64).map(|i| unit(splitmix(self.seed ^ splitmix(self.t.wrapping_mul(0x1_0000_0001) ^ splitmix(i)))) as f32).collect();
        let draws = Tensor::from_slice(&draws).view([b, k, NB as i64]).to_device(self.sim.device);
        let responses = draws.lt_tensor(&p).to_kind(Kind::Float);
        let item_reward = responses.matmul(&self.weights.unsqueeze(-1)).squeeze_dim(-1); // [B, k]
        let reward = item_reward.mean_dim([1i64].as_slice(), false, Kind::Float); // [B]
        let ild = 1.0 - if k > 1 { others.mean(Kind::Float).double_value(&[]) } else { 1.0 };
        let mut shown: Vec<i64> = Vec::<i64>::try_from(slate.reshape([-1]).to_device(Device::Cpu)).map_err(|e| e.to_string())?;
        let flat_resp = Vec::<f32>::try_from(responses.reshape([-1]).to_device(Device::Cpu)).map_err(|e| e.to_string())?;
        let rewards = Vec::<f32>::try_from(reward.to_device(Device::Cpu)).map_err(|e| e.to_string())?;
        self.t += 1;

        // The history takes the slate and its responses, most recent last.
        let h = self.sim.history;
        let ku = k as usize;
        for slot in 0..self.cfg.batch {
            for j in 0..ku {
                let base = slot * h;
                self.history.copy_within(base + 1..base + h, base);
                self.real.copy_within(base + 1..base + h, base);
                self.response.copy_within((base + 1) * NB..(base + h) * NB, base * NB);
                self.history[base + h - 1] = shown[slot * ku + j];
                self.real[base + h - 1] = true;
                self.response[(base + h - 1) * NB..][..NB].copy_from_slice(&flat_resp[(slot * ku + j) * NB..][..NB]);
            }
        }
        let user_state = self.user_state();
        let mut done = vec![false; self.cfg.batch];
        let mut return_day = vec![0usize; self.cfg.batch];
        match self.cfg.level {
            Level::Request => {
                for (slot, d) in done.iter_mut().enumerate() {
                    self.temper[slot] -= 1.0;
                    *d = self.temper[slot] < 1.0;
                }
            }
            Level::WholeSession => {
                // boost: the slate's mean weighted response sum, the same as the reward.
                for (slot, d) in done.iter_mut().enumerate() {
                    self.temper[slot] += (rewards[slot] as f64 - 2.0).clamp(-2.0, 0.0);
                    *d = self.temper[slot] < 1.0;
                }
            }
            Level::CrossSession => {
                let personal = Vec::<f32>::try_from(user_state.matmul(&self.personal).to_device(Device::Cpu)).map_err(|e| e.to_string())?;
                let ending: Vec<usize> = (0..self.cfg.batch).filter(|&s| (self.in_session[s] + 1) as f64 >= self.cfg.temper()).collect();
                for slot in 0..self.session_items.len() {
                    for j in 0..ku {
                        for (a, &x) in self.session_resp[slot].iter_mut().zip(&flat_resp[(slot * ku + j) * NB..][..NB]) {
                            *a += x as f64;
                        }
                    }
                    self.session_items[slot] += ku;
                }
                let learned = if self.next_gap.is_empty() || ending.is_empty() { Vec::new() } else { self.learned_return_days(&ending, &user_state)? };
                for slot in 0..self.cfg.batch {
                    self.in_session[slot] += 1;
                    self.session_reward[slot] += rewards[slot] as f64;
                    let decay = self.cfg.retention.ema_decay;
                    self.ema[slot] = decay * self.ema[slot] + (1.0 - decay) * rewards[slot] as f64;
                    if (self.in_session[slot] as f64) < self.cfg.temper() {
                        continue;
                    }
                    let r = &self.cfg.retention;
                    return_day[slot] = match ending.iter().position(|&s| s == slot).and_then(|i| learned.get(i)) {
                        Some(&day) => day,
                        None => {
                            let feedback = match r.model {
                                RetentionModelKind::Cumulative => r.cumulative_influence * (self.ema[slot] - 0.01),
                                _ => r.feedback_influence * self.session_reward[slot] / self.in_session[slot] as f64,
                            };
                            let p = (personal[slot] as f64 + feedback + r.next_day_bias).clamp(0.001, 0.999);
                            let max = r.max_return_day;
                            let weights: Vec<f64> = (0..max).map(|d| p * (1.0 - p).powi(d as i32)).collect();
                            self.draw_day(&weights, slot)
                        }
                    };
                    self.sessions[slot] += 1;
                    self.in_session[slot] = 0;
                    self.session_reward[slot] = 0.0;
                    done[slot] = self.sessions[slot] >= self.cfg.sessions;
                }
            }
        }
        // Whole session: leavers are replaced at once; other levels end all
        // users together (the caller resets).
        if self.cfg.level == Level::WholeSession {
            for slot in 0..self.cfg.batch {
                if done[slot] {
                    self.new_user(slot);
                }
            }
        }
        shown.sort_unstable();
        shown.dedup();
        Ok(Step { slate, responses, probs, item_reward, reward, user_state, done, coverage: shown.len(), ild, return_day })
    }

    /// A return day d in 1..=weights.len() drawn with P(d) ∝ weights[d − 1]
    /// (parametric: p·(1 − p)^(d − 1)), keyed by (seed, step, slot).
    fn draw_day(&self, weights: &[f64], slot: usize) -> usize {
        let max = weights.len();
        let total: f64 = weights.iter().sum();
        let mut x = unit(splitmix(self.seed ^ splitmix(0xDA7 ^ self.t.wrapping_mul(7919) ^ splitmix(slot as u64)))) * total;
        for (d, w) in weights.iter().enumerate() {
            if x < *w {
                return d + 1;
            }
            x -= w;
        }
        max
    }
}

fn normal(seed: u64, k: u64) -> f64 {
    let u1 = unit(splitmix(seed ^ splitmix(2 * k))).max(1e-12);
    let u2 = unit(splitmix(seed ^ splitmix(2 * k + 1)));
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{load, LogSpec};
    use crate::response::ResponseConfig;
    use crate::synth;
    use tch::nn;

    fn simulator() -> (Arc<Simulator>, nn::VarStore) {
        let d = tempfile::tempdir().unwrap();
        let (log, _) = synth::write(d.path(), synth::Shape { users: 40, items: 30, days: 6, ..Default::default() }).unwrap();
        let spec = LogSpec { log: vec![log], user_features: Some(d.path().join("user_features_pure.csv")), video_features: Some(d.path().join("video_features_basic_pure.csv")), core: 2, ..LogSpec::default() };
        let logs = load(&spec).unwrap();
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ResponseConfig { id_dim: 8, enc_dim: 16, history: 8, dropout: 0.0, ..ResponseConfig::default() };
        let model = ResponseModel::new(&vs.root(), &logs, &cfg);
        (Arc::new(Simulator::new(logs, model, cfg.history, Device::Cpu)), vs)
    }

    fn random_slate(env: &Env, t: u64) -> Action {
        let (b, k, n) = (env.cfg.batch, env.cfg.slate, env.sim.item_count() as u64);
        let ids: Vec<i64> = (0..(b * k) as u64).map(|i| 1 + (splitmix(t * 1000 + i) % n) as i64).collect();
        Action::Slate(Tensor::from_slice(&ids).view([b as i64, k as i64]))
    }

    #[test]
    fn steps_have_the_documented_shapes_and_replay_under_a_seed() {
        let (sim, _vs) = simulator();
        let run = |seed| {
            let mut env = Env::new(sim.clone(), EnvConfig { batch: 4, ..EnvConfig::new(Level::Request) }, seed).unwrap();
            let s = env.step(&random_slate(&env, 1)).unwrap();
            assert_eq!(s.responses.size(), [4, 6, 7]);
            assert_eq!(s.reward.size(), [4]);
            assert_eq!(s.user_state.size(), [4, 48]);
            assert!(s.coverage >= 1 && s.coverage <= 24 && (0.0..=2.0).contains(&s.ild));
            // The history now ends with the slate.
            let o = env.observation();
            assert!(o.history.narrow(1, 2, 6).equal(&s.slate));
            s.responses
        };
        assert!(run(5).equal(&run(5)), "same seed, same draws");
        assert!(!run(5).equal(&run(6)));
    }

    #[test]
    fn done_semantics_temper_and_return_days() {
        let (sim, _vs) = simulator();
        // Request level: everyone leaves after initial_temper steps, together.
        let mut env = Env::new(sim.clone(), EnvConfig { batch: 3, initial_temper: Some(3.0), ..EnvConfig::new(Level::Request) }, 1).unwrap();
        for t in 0..3 {
            let s = env.step(&random_slate(&env, t)).unwrap();
            assert!(s.done.iter().all(|&d| d == (t == 2)), "step {t}: {:?}", s.done);
        }
        // Whole session: the temper never rises for a user; leavers are replaced.
        let mut env = Env::new(sim.clone(), EnvConfig { batch: 8, initial_temper: Some(4.0), ..EnvConfig::new(Level::WholeSession) }, 2).unwrap();
        let mut left = 0;
        for t in 0..30 {
            let before = env.temper().to_vec();
            let users = env.user.clone();
            let s = env.step(&random_slate(&env, t)).unwrap();
            for slot in 0..8 {
                if s.done[slot] {
                    left += 1;
                    assert_eq!(env.temper()[slot], 4.0, "a new user starts with the initial temper");
                } else {
                    assert!(env.temper()[slot] <= before[slot] && env.temper()[slot] >= before[slot] - 2.0);
                    assert_eq!(env.user[slot], users[slot]);
                }
            }
        }
        assert!(left > 0, "with a click-only reward below 2, every user's temper falls");
        // Cross session: return days in 1..=max at each session's end; the
        // episode ends after `sessions` sessions.
        let cfg = EnvConfig { batch: 5, initial_temper: Some(2.0), sessions: 3, ..EnvConfig::new(Level::CrossSession) };
        let mut env = Env::new(sim.clone(), cfg, 3).unwrap();
        let w = Action::Fusion(Tensor::ones([5, 7], (Kind::Float, Device::Cpu)));
        for t in 1..=6 {
            let s = env.step(&w).unwrap();
            let ends = t % 2 == 0;
            assert!(s.return_day.iter().all(|&d| if ends { (1..=10).contains(&d) } else { d == 0 }), "step {t}: {:?}", s.return_day);
            assert!(s.done.iter().all(|&d| d == (t == 6)));
            assert_eq!(s.slate.size(), [5, 6]);
        }
    }

    #[test]
    fn a_greedy_slate_earns_more_than_a_random_one_and_bad_actions_are_refused() {
        let (sim, _vs) = simulator();
        let cfg = EnvConfig { batch: 16, rho: Some(0.0), ..EnvConfig::new(Level::Request) };
        let (mut greedy_total, mut random_total) = (0.0, 0.0);
        let mut env = Env::new(sim.clone(), cfg.clone(), 4).unwrap();
        let mut other = Env::new(sim.clone(), cfg, 4).unwrap();
        for t in 0..4 {
            // The simulator's own expected reward per item: a greedy top 6.
            let p = env.item_probabilities();
            let value = p.matmul(&env.weights.unsqueeze(-1)).squeeze_dim(-1);
            let top = value.topk(6, -1, true, true).1 + 1;
            greedy_total += env.step(&Action::Slate(top)).unwrap().reward.sum(Kind::Float).double_value(&[]);
            random_total += other.step(&random_slate(&other, t)).unwrap().reward.sum(Kind::Float).double_value(&[]);
        }
        assert!(greedy_total > random_total, "greedy {greedy_total} vs random {random_total}");
        let e = env.step(&Action::Slate(Tensor::ones([16, 5], (Kind::Int64, Device::Cpu)))).err().unwrap();
        assert!(e.contains("[16, 6] (batch, slate)"), "{e}");
        let e = env.step(&Action::Slate(Tensor::full([16, 6], 999, (Kind::Int64, Device::Cpu)))).err().unwrap();
        assert!(e.contains("item id 999 outside the candidate pool 1..="), "{e}");
        let e = env.step(&Action::Fusion(Tensor::ones([16, 7], (Kind::Float, Device::Cpu)))).err().unwrap();
        assert!(e.contains("takes a slate"), "{e}");
    }

    #[test]
    fn learned_retention_draws_from_the_model_over_the_users_sessions_and_resumes() {
        use crate::retention::RetentionConfig;
        // A simulator with a learned model; `favour` makes it return on day 3 almost surely.
        let with_model = |favour: bool| {
            let (sim, vs) = simulator();
            let mut sim = Arc::try_unwrap(sim).ok().unwrap();
            let rvs = nn::VarStore::new(Device::Cpu);
            let model = RetentionModel::new(&rvs.root(), 48, &RetentionConfig { context: 4, max_return_day: 5, dropout: 0.0, ..Default::default() });
            if favour {
                let mut vars = rvs.variables();
                tch::no_grad(|| {
                    let _ = vars.get_mut("head.out.weight").map(|t| t.zero_());
                    let _ = vars.get_mut("head.out.bias").map(|t| t.copy_(&Tensor::from_slice(&[0f32, 0.0, 12.0, 0.0, 0.0])));
                });
            }
            sim.attach_retention(model, Some(rvs));
            (Arc::new(sim), vs)
        };
        let retention = Retention { model: RetentionModelKind::Learned, path: Some("exported".into()), max_return_day: 5, ..Retention::default() };
        let cfg = EnvConfig { batch: 3, initial_temper: Some(2.0), sessions: 4, retention, ..EnvConfig::new(Level::CrossSession) };
        let w = Action::Fusion(Tensor::ones([3, 7], (Kind::Float, Device::Cpu)));

        let (sim, _vs) = with_model(true);
        let mut env = Env::new(sim.clone(), cfg.clone(), 1).unwrap();
        // The context starts with the user's logged sessions, the next gap unknown.
        for slot in 0..3 {
            let real = env.past_real[slot * 4..(slot + 1) * 4].iter().filter(|&&r| r).count();
            assert!(real >= 1, "slot {slot}: the log gave no sessions");
            assert_eq!(env.next_gap[slot], 0);
        }
        for t in 1..=8 {
            let s = env.step(&w).unwrap();
            if t % 2 == 0 {
                assert!(s.return_day.iter().all(|&d| d == 3), "step {t}: {:?}", s.return_day);
                // The ended session is the context's last, after the gap drawn before it.
                for slot in 0..3 {
                    assert!(env.past_real[slot * 4 + 3]);
                    assert_eq!(env.past_gap[slot * 4 + 3], if t == 2 { 0 } else { 3 });
                    assert_eq!(env.next_gap[slot], 3);
                }
            } else {
                assert!(s.return_day.iter().all(|&d| d == 0));
            }
        }

        // Replays under a seed and resumes from its checkpoint mid-episode.
        let (sim, _vs2) = with_model(false);
        let days = |env: &mut Env, steps: usize| -> Vec<usize> { (0..steps).flat_map(|_| env.step(&w).unwrap().return_day).collect() };
        let mut whole = Env::new(sim.clone(), cfg.clone(), 7).unwrap();
        let all = days(&mut whole, 8);
        assert!(all.iter().filter(|&&d| d > 0).all(|d| (1..=5).contains(d)));
        let mut first = Env::new(sim.clone(), cfg.clone(), 7).unwrap();
        let mut head = days(&mut first, 3);
        let saved: BTreeMap<String, Tensor> = first.to_named().into_iter().collect();
        assert!(saved.contains_key("env.past_enc") && saved.contains_key("env.next_gap"));
        let mut resumed = Env::new(sim.clone(), cfg.clone(), 7).unwrap();
        resumed.step(&w).unwrap(); // moved on, then restored
        resumed.load(&saved).unwrap();
        head.extend(days(&mut resumed, 5));
        assert_eq!(head, all);

        // A model for other days, or none, is refused with the fix.
        let e = Env::new(sim.clone(), EnvConfig { retention: Retention { max_return_day: 10, ..cfg.retention.clone() }, ..cfg.clone() }, 1).err().unwrap();
        assert!(e.contains("set max_return_day = 5"), "{e}");
        let (plain, _vs3) = simulator();
        let e = Env::new(plain, cfg.clone(), 1).err().unwrap();
        assert!(e.contains("no retention model attached"), "{e}");
        let e = EnvConfig { retention: Retention { path: None, ..cfg.retention.clone() }, ..cfg }.check().err().unwrap();
        assert!(e.contains("needs path"), "{e}");
    }

    #[test]
    fn cumulative_retention_follows_an_ema_of_the_rewards_and_resumes() {
        let (sim, _vs) = simulator();
        let retention = Retention { model: RetentionModelKind::Cumulative, ema_decay: 0.5, ..Retention::default() };
        let cfg = EnvConfig { batch: 4, initial_temper: Some(2.0), sessions: 3, retention, ..EnvConfig::new(Level::CrossSession) };
        let w = Action::Fusion(Tensor::ones([4, 7], (Kind::Float, Device::Cpu)));
        let mut env = Env::new(sim.clone(), cfg.clone(), 3).unwrap();
        let mut want = [0f64; 4];
        for _ in 0..3 {
            let r = Vec::<f32>::try_from(env.step(&w).unwrap().reward).unwrap();
            for (e, x) in want.iter_mut().zip(r) {
                *e = 0.5 * *e + 0.5 * x as f64;
            }
        }
        let named: BTreeMap<String, Tensor> = env.to_named().into_iter().collect();
        let ema = Vec::<f64>::try_from(&named["env.ema"]).unwrap();
        assert!(ema.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6), "{ema:?} vs {want:?}");
        // A resumed environment draws the same return days.
        let mut other = Env::new(sim.clone(), cfg, 3).unwrap();
        other.load(&named).unwrap();
        for _ in 0..3 {
            assert_eq!(env.step(&w).unwrap().return_day, other.step(&w).unwrap().return_day);
        }
    }
}
