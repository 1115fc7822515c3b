//! What the request-level agents (`kuaisim.random`, `kuaisim.cf`,
//! `kuaisim.listcvae`) play against, whichever simulator answers: KuaiSim's
//! request level ([`Env`]) or the LLM-powered user simulator ([`LlmEnv`]).
//! The agents see only [`RequestEnv`] — the users' state, a step that shows
//! each user a slate — and the item features of the [`Simulated`] world
//! their scores are built on.
//!
//! A job names its simulator with `simulator` (a KuaiSim export) or
//! `[world]` (the LLM simulator); its `[env]` table holds that simulator's
//! settings ([`EnvConfig`] or [`LlmEnvConfig`]). [`Place`] reads the three.

use crate::env::{Action, Env, EnvConfig, Level, Simulator};
use crate::llm_env::{LlmEnv, LlmEnvConfig, World, WorldSpec};
use crate::NB;
use kiln_worker::{parse_config, ConfigError};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// An environment's per-rank checkpoint state.
pub trait EnvState {
    fn to_named(&self) -> Vec<(String, Tensor)>;
    fn load(&mut self, named: &BTreeMap<String, Tensor>) -> Result<(), String>;
}

/// A batch of users, each shown one slate per step.
pub trait RequestEnv: EnvState {
    /// `[B, state]`, on the world's device.
    fn user_state(&self) -> Tensor;
    /// Shows `slate` `[B, k]` (item ids 1..=items). A slot whose user's
    /// episode ended holds a new user afterwards.
    fn show(&mut self, slate: &Tensor) -> Result<Shown, String>;
}

/// What a shown slate earned.
pub struct Shown {
    /// `[B]` the slate's reward: its items' mean reward.
    pub reward: Tensor,
    /// `[B, k]` each item's reward.
    pub item_reward: Tensor,
    /// `[B, k]` what a pointwise scorer fits per item: KuaiSim, the item's
    /// positive behaviours (all but hate); the LLM simulator, engagement.
    pub feedback: Tensor,
    pub done: Vec<bool>,
    /// Distinct items shown over the batch.
    pub coverage: usize,
    /// 1 − the mean cosine similarity of a slate's items to each other (an
    /// LLM-world item without an analysis has zero features: unlike any other).
    pub ild: f64,
}

impl EnvState for Env {
    fn to_named(&self) -> Vec<(String, Tensor)> {
        Env::to_named(self)
    }
    fn load(&mut self, named: &BTreeMap<String, Tensor>) -> Result<(), String> {
        Env::load(self, named)
    }
}

impl RequestEnv for Env {
    fn user_state(&self) -> Tensor {
        Env::user_state(self)
    }

    fn show(&mut self, slate: &Tensor) -> Result<Shown, String> {
        let out = self.step(&Action::Slate(slate.shallow_clone()))?;
        let feedback = out.responses.narrow(2, 0, NB as i64 - 1).sum_dim_intlist([2i64].as_slice(), false, Kind::Float);
        // At the request level every user leaves after the same number of
        // requests, so the whole batch starts over together.
        if out.done.iter().all(|&d| d) {
            self.reset();
        }
        Ok(Shown { reward: out.reward, item_reward: out.item_reward, feedback, done: out.done, coverage: out.coverage, ild: out.ild })
    }
}

impl EnvState for LlmEnv {
    fn to_named(&self) -> Vec<(String, Tensor)> {
        LlmEnv::to_named(self)
    }
    fn load(&mut self, named: &BTreeMap<String, Tensor>) -> Result<(), String> {
        LlmEnv::load(self, named)
    }
}

impl RequestEnv for LlmEnv {
    fn user_state(&self) -> Tensor {
        LlmEnv::user_state(self)
    }

    fn show(&mut self, slate: &Tensor) -> Result<Shown, String> {
        let (b, k) = (self.config().batch as i64, self.config().slate as i64);
        if slate.size() != [b, k] {
            return Err(format!("the action is a slate of shape {:?}; this environment takes [{b}, {k}] (batch, slate) item ids", slate.size()));
        }
        let ids = slate.to_device(Device::Cpu).to_kind(Kind::Int64).contiguous();
        let items = Vec::<i64>::try_from(ids.reshape([-1])).map_err(|e| e.to_string())?;
        let (engaged, done) = self.step(&items)?;
        let features = self.world().features();
        let device = features.device();
        let item_reward = Tensor::from_slice(&engaged).view([b, k]).to_device(device);
        let coverage = items.iter().collect::<std::collections::BTreeSet<_>>().len();
        let ild = 1.0 - mean_similarity(&features.index_select(0, &ids.reshape([-1]).to_device(device)).view([b, k, -1]));
        Ok(Shown { reward: item_reward.mean_dim([1i64].as_slice(), false, Kind::Float), feedback: item_reward.shallow_clone(), item_reward, done, coverage, ild })
    }
}

/// The mean cosine similarity between different items of the slates of
/// `enc` `[B, k, d]` (1 for slates of one item, as KuaiSim's ILD counts
/// them: no diversity).
fn mean_similarity(enc: &Tensor) -> f64 {
    let k = enc.size()[1];
    if k < 2 {
        return 1.0;
    }
    let unit = enc / enc.norm_scalaropt_dim(2.0, [-1i64].as_slice(), true).clamp_min(1e-12);
    let sim = unit.matmul(&unit.transpose(1, 2));
    let off = sim.sum(Kind::Float) - sim.diagonal(0, 1, 2).sum(Kind::Float);
    off.double_value(&[]) / (enc.size()[0] * k * (k - 1)) as f64
}

/// Where a request-level job plays, as its `[algorithm]` table names it.
#[derive(Debug, Clone, PartialEq)]
pub enum Place {
    KuaiSim { simulator: PathBuf, env: EnvConfig },
    Llm { world: WorldSpec, env: LlmEnvConfig },
}

impl Place {
    /// From a job's `simulator`, `world` and `env` keys (exactly one of the
    /// first two). A KuaiSim job without an `[env]` table plays at `level`
    /// (`None`: the table is required, to name its level).
    pub fn parse(simulator: &Option<PathBuf>, world: &Option<WorldSpec>, env: &Option<toml::Value>, level: Option<Level>) -> Result<Place, ConfigError> {
        let in_env = |e: ConfigError| ConfigError::new(if e.path.is_empty() { "env".to_string() } else { format!("env.{}", e.path) }, e.message);
        match (simulator, world) {
            (Some(simulator), None) => {
                let env: EnvConfig = match (env, level) {
                    (Some(v), _) => parse_config(v).map_err(in_env)?,
                    (None, Some(level)) => EnvConfig::new(level),
                    (None, None) => return Err(ConfigError::new("env", "a KuaiSim simulator needs an [algorithm.env] table naming its level (\"request\", \"whole-session\" or \"cross-session\")")),
                };
                env.check().map_err(|m| ConfigError::new("env", m))?;
                Ok(Place::KuaiSim { simulator: simulator.clone(), env })
            }
            (None, Some(world)) => {
                // serde's message lists the keys LlmEnvConfig takes ("expected one of ...").
                let kuaisim_key = |e: ConfigError| match (e.message.starts_with("unknown field `level`"), e.message.split_once("expected ")) {
                    (true, Some((_, keys))) => ConfigError::new(e.path.clone(), format!("`level` is a KuaiSim setting; the LLM simulator's [algorithm.env] takes {keys}")),
                    _ => e,
                };
                let env: LlmEnvConfig = env.as_ref().map(parse_config).transpose().map_err(|e| in_env(kuaisim_key(e)))?.unwrap_or_default();
                env.check().map_err(|m| ConfigError::new("env", m))?;
                Ok(Place::Llm { world: world.clone(), env })
            }
            (Some(_), Some(_)) => Err(ConfigError::new("simulator", "both simulator (KuaiSim) and [algorithm.world] (the LLM-powered user simulator) are given; keep one")),
            (None, None) => Err(ConfigError::new("simulator", "no simulator: give simulator = \"<a kuaisim.response export>\" (KuaiSim) or an [algorithm.world] table (the LLM-powered user simulator)")),
        }
    }

    /// [`Place::parse`] for agents that only play single requests: a KuaiSim
    /// `[env]` must be at the request level (`what` says why).
    pub fn request(simulator: &Option<PathBuf>, world: &Option<WorldSpec>, env: &Option<toml::Value>, what: &str) -> Result<Place, ConfigError> {
        let place = Place::parse(simulator, world, env, Some(Level::Request))?;
        if let Place::KuaiSim { env, .. } = &place {
            if env.level != Level::Request {
                return Err(ConfigError::new("env.level", format!("{what}: level = \"request\"")));
            }
        }
        Ok(place)
    }
}

/// A loaded [`Place`]: the simulator, shared by the environments a rank makes.
pub enum Simulated {
    KuaiSim { sim: Arc<Simulator>, env: EnvConfig },
    Llm { world: Rc<World>, env: LlmEnvConfig },
}

impl Simulated {
    pub fn load(place: &Place, device: Device) -> Result<Simulated, String> {
        let loaded = match place {
            Place::KuaiSim { simulator, env } => Simulated::KuaiSim { sim: Arc::new(Simulator::load_for(simulator, env, device).map_err(|e| format!("simulator: {e}"))?), env: env.clone() },
            Place::Llm { world, env } => Simulated::Llm { world: Rc::new(World::load(world, env.start, device).map_err(|e| format!("world: {e}"))?), env: *env },
        };
        if loaded.slate() > loaded.item_count() {
            return Err(format!("env.slate is {} but the simulator has only {} items; set slate <= {}", loaded.slate(), loaded.item_count(), loaded.item_count()));
        }
        Ok(loaded)
    }

    /// A training environment of this rank (`seed` keys its users and draws).
    pub fn env(&self, seed: u64) -> Result<Box<dyn RequestEnv>, String> {
        Ok(match self {
            Simulated::KuaiSim { sim, env } => Box::new(Env::new(sim.clone(), env.clone(), seed)?),
            Simulated::Llm { world, env } => Box::new(LlmEnv::new(world.clone(), *env, seed)),
        })
    }

    /// An evaluation environment: KuaiSim's as configured; the LLM
    /// simulator's with episodes of exactly `eval_steps` steps.
    pub fn eval_env(&self, seed: u64) -> Result<Box<dyn RequestEnv>, String> {
        Ok(match self {
            Simulated::KuaiSim { .. } => self.env(seed)?,
            Simulated::Llm { world, env } => Box::new(LlmEnv::new(world.clone(), env.evaluation(env.batch), seed)),
        })
    }

    /// `[items + 1, d]` item features (row 0 the padding item): KuaiSim's
    /// item encodings, or the LLM world's analysis features.
    pub fn items(&self) -> &Tensor {
        match self {
            Simulated::KuaiSim { sim, .. } => &sim.items,
            Simulated::Llm { world, .. } => world.features(),
        }
    }

    pub fn item_count(&self) -> usize {
        match self {
            Simulated::KuaiSim { sim, .. } => sim.item_count(),
            Simulated::Llm { world, .. } => world.items(),
        }
    }

    pub fn item_dim(&self) -> i64 {
        self.items().size()[1]
    }

    /// The width of [`RequestEnv::user_state`]: three item features.
    pub fn state_dim(&self) -> i64 {
        3 * self.item_dim()
    }

    pub fn batch(&self) -> usize {
        match self {
            Simulated::KuaiSim { env, .. } => env.batch,
            Simulated::Llm { env, .. } => env.batch,
        }
    }

    pub fn slate(&self) -> usize {
        match self {
            Simulated::KuaiSim { env, .. } => env.slate,
            Simulated::Llm { env, .. } => env.slate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str) -> Option<toml::Value> {
        Some(toml::from_str(text).unwrap())
    }

    #[test]
    fn a_job_names_exactly_one_simulator_and_its_env_table_is_read_for_it() {
        let sim = Some(PathBuf::from("sim"));
        let world: Option<WorldSpec> = Some(toml::from_str("interactions = \"i.csv\"\nanalysis = \"a.jsonl\"").unwrap());
        assert!(Place::parse(&None, &None, &None, None).unwrap_err().message.starts_with("no simulator"));
        assert!(Place::parse(&sim, &world, &None, None).unwrap_err().message.starts_with("both simulator"));
        // KuaiSim: the level is required unless the agent has a default.
        assert_eq!(Place::parse(&sim, &None, &None, None).unwrap_err().path, "env");
        assert!(matches!(Place::parse(&sim, &None, &None, Some(Level::Request)).unwrap(), Place::KuaiSim { env, .. } if env.level == Level::Request));
        let e = Place::request(&sim, &None, &value("level = \"whole-session\""), "CF recommends single requests").unwrap_err();
        assert_eq!((e.path.as_str(), e.message.as_str()), ("env.level", "CF recommends single requests: level = \"request\""));
        // The LLM world reads [env] as its own settings, and names a bad key inside it.
        assert!(matches!(Place::parse(&None, &world, &value("batch = 4\nslate = 3"), None).unwrap(), Place::Llm { env, .. } if env.batch == 4 && env.slate == 3 && env.start == 2));
        let e = Place::parse(&None, &world, &value("level = \"request\""), None).unwrap_err();
        assert_eq!((e.path.as_str(), e.message.as_str()), ("env.level", "`level` is a KuaiSim setting; the LLM simulator's [algorithm.env] takes one of `batch`, `slate`, `start`, `terminate`, `max_steps`, `eval_steps`"));
        assert!(Place::parse(&None, &world, &value("slates = 2"), None).unwrap_err().message.starts_with("unknown field `slates`"));
        assert_eq!(Place::parse(&None, &world, &value("slate = 0"), None).unwrap_err().path, "env");
        assert_eq!(Place::parse(&None, &world, &value("batch = \"x\""), None).unwrap_err().path, "env.batch");
    }

    #[test]
    fn slates_of_one_item_have_no_diversity_and_orthogonal_items_full_diversity() {
        let one = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0]).view([2, 1, 2]);
        assert_eq!(mean_similarity(&one), 1.0);
        let orthogonal = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 2.0]).view([1, 2, 2]);
        assert!(mean_similarity(&orthogonal).abs() < 1e-6);
        let same = Tensor::from_slice(&[1.0f32, 1.0, 2.0, 2.0, 3.0, 3.0]).view([1, 3, 2]);
        assert!((mean_similarity(&same) - 1.0).abs() < 1e-6);
    }
}
