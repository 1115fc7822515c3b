//! Where a trainer's problems come from — the leveled arithmetic generator or
//! JSONL files — and in which order training meets them: mixed (levels
//! interleaved / a seeded shuffle per epoch) or a curriculum (easy to hard).
//! Problem q of a run is a pure function of (source, order, seed, q), so every
//! rank and every resumed run agree on it.

use crate::data::{load_jsonl, Arithmetic, JsonlFields};
use kiln_worker::rng::shuffled;
use crate::ghpo::Problem;
use kiln_worker::ConfigError;
use serde::Deserialize;
use std::path::PathBuf;

/// Generated problem indices at or above this are held out for evaluation.
pub const HELD_OUT: u64 = 1 << 40;

/// `[algorithm.data]`: problems from JSONL files instead of the generator.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JsonlSpec {
    /// Training problems.
    pub train: PathBuf,
    /// Held-out problems for evaluation (none: no evaluation).
    pub eval: Option<PathBuf>,
    /// "gsm8k" or "math" (the default): the field names of that layout.
    #[serde(default = "default_layout")]
    pub layout: String,
    /// Field-name overrides.
    pub problem: Option<String>,
    pub solution: Option<String>,
    /// The gold answer's field; "" takes the solution's final answer.
    pub answer: Option<String>,
    /// The difficulty level's field; "" for none.
    pub level: Option<String>,
}

fn default_layout() -> String {
    "math".into()
}

impl JsonlSpec {
    pub fn fields(&self) -> Result<JsonlFields, ConfigError> {
        let mut f = match self.layout.as_str() {
            "math" => JsonlFields::math(),
            "gsm8k" => JsonlFields::gsm8k(),
            other => return Err(ConfigError::new("data.layout", format!("'{other}' is not one of gsm8k, math"))),
        };
        let opt = |s: &String| (!s.is_empty()).then(|| s.clone());
        if let Some(p) = &self.problem {
            f.problem = p.clone();
        }
        if let Some(s) = &self.solution {
            f.solution = s.clone();
        }
        if let Some(a) = &self.answer {
            f.answer = opt(a);
        }
        if let Some(l) = &self.level {
            f.level = opt(l);
        }
        Ok(f)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Levels interleaved (generator) or a fresh seeded shuffle each epoch (files).
    Mixed,
    /// Easy to hard: the generator's levels in turn over the run, the file's
    /// problems sorted by level.
    Curriculum,
}

impl Order {
    pub fn parse(s: &str) -> Result<Order, ConfigError> {
        match s {
            "mixed" => Ok(Order::Mixed),
            "curriculum" => Ok(Order::Curriculum),
            other => Err(ConfigError::new("order", format!("'{other}' is not one of mixed, curriculum"))),
        }
    }
}

pub enum Problems {
    Generated { gen: Arithmetic, train_levels: Vec<u8>, eval_levels: Vec<u8>, eval_per_level: usize },
    Files { train: Vec<Problem>, eval: Vec<Problem> },
}

impl Problems {
    /// Loads the files of a JSONL spec (`eval_problems` > 0 keeps that many
    /// evaluation problems); refuses empty sets, and a curriculum over problems
    /// without levels.
    pub fn files(spec: &JsonlSpec, eval_problems: usize, order: Order) -> Result<Problems, String> {
        let fields = spec.fields().map_err(|e| e.to_string())?;
        let train = load_jsonl(&spec.train, &fields).map_err(|e| e.to_string())?;
        if train.is_empty() {
            return Err(format!("{}: no problems", spec.train.display()));
        }
        if order == Order::Curriculum {
            if let Some(i) = train.iter().position(|p| p.level == 0) {
                return Err(format!(
                    "order = \"curriculum\" needs a level for every problem, and problem {} of {} has none; set data.level to the level field",
                    i + 1,
                    spec.train.display()
                ));
            }
        }
        let mut eval = match &spec.eval {
            Some(path) => load_jsonl(path, &fields).map_err(|e| e.to_string())?,
            None => vec![],
        };
        if eval_problems > 0 {
            eval.truncate(eval_problems);
        }
        Ok(Problems::Files { train, eval })
    }

    /// Training problems `first..first + count` of the run, for the batch that
    /// starts at `step` of `steps`.
    pub fn train(&self, first: u64, count: usize, step: u64, steps: u64, order: Order, seed: u64) -> Vec<Problem> {
        match self {
            Problems::Generated { gen, train_levels, .. } => {
                let l = train_levels.len() as u64;
                (first..first + count as u64)
                    .map(|q| match order {
                        Order::Mixed => gen.problem(train_levels[(q % l) as usize], q / l),
                        Order::Curriculum => {
                            let mut sorted = train_levels.clone();
                            sorted.sort_unstable();
                            let stage = ((step * l) / steps.max(1)).min(l - 1);
                            gen.problem(sorted[stage as usize], q)
                        }
                    })
                    .collect()
            }
            Problems::Files { train, .. } => {
                let n = train.len() as u64;
                let order_of = |epoch: u64| -> Vec<usize> {
                    match order {
                        // Stable: equal levels keep the file's order.
                        Order::Curriculum => {
                            let mut idx: Vec<usize> = (0..train.len()).collect();
                            idx.sort_by_key(|&i| train[i].level);
                            idx
                        }
                        Order::Mixed => shuffled(train.len(), seed, epoch),
                    }
                };
                let mut cached: Option<(u64, Vec<usize>)> = None;
                (first..first + count as u64)
                    .map(|q| {
                        let epoch = q / n;
                        if cached.as_ref().map(|c| c.0) != Some(epoch) {
                            cached = Some((epoch, order_of(epoch)));
                        }
                        let perm = cached.as_ref().map(|c| &c.1[..]).unwrap_or(&[]);
                        train[perm[(q % n) as usize]].clone()
                    })
                    .collect()
            }
        }
    }

    /// The held-out evaluation problems.
    pub fn eval(&self) -> Vec<Problem> {
        match self {
            Problems::Generated { gen, eval_levels, eval_per_level, .. } => eval_levels
                .iter()
                .flat_map(|&l| (0..*eval_per_level as u64).map(move |i| gen.problem(l, HELD_OUT + i)))
                .collect(),
            Problems::Files { eval, .. } => eval.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generated(levels: Vec<u8>) -> Problems {
        Problems::Generated { gen: Arithmetic { seed: 1 }, train_levels: levels, eval_levels: vec![1, 5], eval_per_level: 3 }
    }

    #[test]
    fn generated_problems_interleave_levels_or_climb_them_over_the_run() {
        let p = generated(vec![3, 1]);
        let mixed: Vec<u8> = p.train(0, 4, 0, 10, Order::Mixed, 0).iter().map(|p| p.level).collect();
        assert_eq!(mixed, vec![3, 1, 3, 1]);
        let at = |step| p.train(0, 2, step, 10, Order::Curriculum, 0).iter().map(|p| p.level).collect::<Vec<_>>();
        assert_eq!((at(0), at(4), at(5), at(9)), (vec![1, 1], vec![1, 1], vec![3, 3], vec![3, 3]));
        let eval = p.eval();
        assert_eq!(eval.iter().map(|p| p.level).collect::<Vec<_>>(), vec![1, 1, 1, 5, 5, 5]);
        assert!(!p.train(0, 64, 0, 10, Order::Mixed, 0).iter().any(|t| eval.contains(t)), "held-out problems are not trained on");
    }

    #[test]
    fn file_problems_are_shuffled_per_epoch_or_sorted_by_level() {
        let train: Vec<Problem> = (0..6)
            .map(|i| Problem { problem: format!("p{i}"), answer: "1".into(), solution: "s".into(), level: [3, 1, 2, 1, 3, 2][i] })
            .collect();
        let p = Problems::Files { train: train.clone(), eval: vec![] };
        let names = |ps: Vec<Problem>| ps.into_iter().map(|p| p.problem).collect::<Vec<_>>();
        let epoch0 = names(p.train(0, 6, 0, 1, Order::Mixed, 7));
        let mut sorted = epoch0.clone();
        sorted.sort();
        assert_eq!(sorted, names(train.clone()), "an epoch is a permutation");
        assert_ne!(epoch0, names(p.train(6, 6, 0, 1, Order::Mixed, 7)), "each epoch is shuffled afresh");
        assert_eq!(epoch0, names(p.train(0, 6, 0, 1, Order::Mixed, 7)), "and deterministically");
        assert_eq!(names(p.train(2, 2, 0, 1, Order::Mixed, 7)), epoch0[2..4].to_vec(), "any window of the stream");
        let levels: Vec<u8> = p.train(0, 6, 0, 1, Order::Curriculum, 7).iter().map(|p| p.level).collect();
        assert_eq!(levels, vec![1, 1, 2, 2, 3, 3]);
        assert_eq!(names(p.train(0, 2, 0, 1, Order::Curriculum, 7)), vec!["p1", "p3"], "stable within a level");
    }
}
