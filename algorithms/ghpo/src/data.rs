//! Problems to train and evaluate on: a JSONL loader with configurable field
//! names (GSM8K and MATH layouts built in), and a generator of arithmetic word
//! problems with worked solutions at five difficulty levels, so from-scratch
//! runs meet problems beyond what a small model learns easily.

use crate::ghpo::Problem;
use crate::reward::extract_answer;
use std::io::BufRead;
use std::path::Path;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io { path: String, #[source] source: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Line { path: String, line: usize, message: String },
}

/// Which JSON fields hold what.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonlFields {
    pub problem: String,
    /// The worked solution (hints are cut from it).
    pub solution: String,
    /// The gold answer; `None` takes the solution's final answer (`\boxed{}`
    /// or GSM8K's `#### N`).
    pub answer: Option<String>,
    /// A difficulty level (a number, or text such as "Level 3" whose digits
    /// are read), for curricula and per-level accuracy; `None`: unknown.
    pub level: Option<String>,
}

impl JsonlFields {
    /// GSM8K: `question`, and `answer` holding the worked solution ending in `#### N`.
    pub fn gsm8k() -> JsonlFields {
        JsonlFields { problem: "question".into(), solution: "answer".into(), answer: None, level: None }
    }

    /// MATH / MATH-500: `problem`, `solution`, `answer`, `level`.
    pub fn math() -> JsonlFields {
        JsonlFields { problem: "problem".into(), solution: "solution".into(), answer: Some("answer".into()), level: Some("level".into()) }
    }
}

/// Reads problems from a JSONL file (one object per line; blank lines skipped),
/// streaming it.
pub fn load_jsonl(path: &Path, fields: &JsonlFields) -> Result<Vec<Problem>, DataError> {
    let p = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| DataError::Io { path: p.clone(), source })?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| DataError::Io { path: p.clone(), source })?;
        if line.trim().is_empty() {
            continue;
        }
        let err = |message: String| DataError::Line { path: p.clone(), line: i + 1, message };
        let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| err(format!("not JSON: {e}")))?;
        let field = |name: &str| -> Result<String, DataError> {
            match v.get(name) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
                Some(_) => Err(err(format!("field '{name}' is not a string"))),
                None => {
                    let have: Vec<&str> = v.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
                    Err(err(format!("no field '{name}' (the line has: {}); set the field names in the spec", have.join(", "))))
                }
            }
        };
        let problem = field(&fields.problem)?;
        let solution = field(&fields.solution)?;
        let answer = match &fields.answer {
            Some(a) => field(a)?,
            None => extract_answer(&solution)
                .ok_or_else(|| err(format!("field '{}' states no final answer (\\boxed{{}} or ####)", fields.solution)))?,
        };
        let level = match &fields.level {
            None => 0,
            Some(name) => {
                let text = field(name)?;
                let digits: String = text.chars().filter(char::is_ascii_digit).collect();
                digits.parse::<u8>().ok().filter(|l| *l > 0).ok_or_else(|| err(format!("field '{name}' = {text:?} is not a level from 1 to 255")))?
            }
        };
        out.push(Problem { problem, answer, solution, level });
    }
    Ok(out)
}

pub use kiln_worker::rng::splitmix;

/// Arithmetic word problems; problem `index` of `level` is a pure function of
/// (seed, level, index). Levels: 1 one-digit sums; 2 two-digit sums and
/// differences; 3 products; 4 two steps ((a + b) × c); 5 three steps with a
/// division.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arithmetic {
    pub seed: u64,
}

pub const LEVELS: std::ops::RangeInclusive<u8> = 1..=5;

const NAMES: [&str; 6] = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima"];
const THINGS: [&str; 6] = ["apples", "books", "coins", "marbles", "stamps", "shells"];

impl Arithmetic {
    pub fn problem(&self, level: u8, index: u64) -> Problem {
        // Chained, not XORed together: seed s must not be a relabelling of seed s ^ 1.
        let mut state = splitmix(splitmix(splitmix(self.seed) ^ u64::from(level)) ^ index);
        let mut next = |lo: i64, hi: i64| {
            state = splitmix(state);
            lo + (state % (hi - lo + 1) as u64) as i64
        };
        let who = NAMES[next(0, 5) as usize];
        let what = THINGS[next(0, 5) as usize];
        let (problem, steps, answer) = match level {
            1 => {
                let (a, b) = (next(1, 9), next(1, 9));
                (format!("{who} has {a} {what} and gets {b} more. How many {what} does {who} have?"), vec![format!("{a} + {b} = {}", a + b)], a + b)
            }
            2 => {
                let (a, b) = (next(10, 99), next(10, 99));
                if next(0, 1) == 0 {
                    (format!("{who} has {a} {what} and gets {b} more. How many {what} does {who} have?"), vec![format!("{a} + {b} = {}", a + b)], a + b)
                } else {
                    let (hi, lo) = (a.max(b), a.min(b));
                    (format!("{who} has {hi} {what} and gives away {lo}. How many {what} are left?"), vec![format!("{hi} - {lo} = {}", hi - lo)], hi - lo)
                }
            }
            3 => {
                let (a, b) = (next(3, 19), next(3, 12));
                (format!("{who} fills {a} boxes with {b} {what} each. How many {what} is that?"), vec![format!("{a} * {b} = {}", a * b)], a * b)
            }
            4 => {
                let (a, b, c) = (next(2, 30), next(2, 30), next(2, 9));
                (
                    format!("{who} has {a} {what} and finds {b} more, then collects {c} times as many as that. How many {what} in the end?"),
                    vec![format!("{a} + {b} = {}", a + b), format!("{} * {c} = {}", a + b, (a + b) * c)],
                    (a + b) * c,
                )
            }
            _ => {
                let (k, per, extra) = (next(2, 9), next(2, 12), next(1, 20));
                let total = k * per;
                (
                    format!("{who} shares {total} {what} equally among {k} friends, then each friend gets {extra} more and gives 1 away. How many {what} does each friend have?"),
                    vec![format!("{total} / {k} = {per}"), format!("{per} + {extra} = {}", per + extra), format!("{} - 1 = {}", per + extra, per + extra - 1)],
                    per + extra - 1,
                )
            }
        };
        let solution = format!("<think>\n{}\n</think>\n<answer>\n\\boxed{{{answer}}}\n</answer>", steps.join("\n"));
        Problem { problem, answer: answer.to_string(), solution, level }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reward::{accuracy_reward, format_reward};

    #[test]
    fn generated_problems_are_deterministic_verifiable_and_formatted() {
        let g = Arithmetic { seed: 3 };
        for level in LEVELS {
            for i in 0..50 {
                let p = g.problem(level, i);
                assert_eq!(p, g.problem(level, i));
                assert_eq!(accuracy_reward(&p.solution, &p.answer), Some(1.0), "{p:?}");
                assert_eq!(format_reward(&p.solution), 1.0);
            }
        }
        assert_ne!(g.problem(1, 0), g.problem(1, 1));
        assert_ne!(g.problem(1, 0), Arithmetic { seed: 4 }.problem(1, 0));
        // Another seed is another set, not the same problems at other indices.
        let set = |seed| (0..64).map(|i| Arithmetic { seed }.problem(1, i).problem).collect::<std::collections::BTreeSet<_>>();
        assert!(set(0).intersection(&set(1)).count() < 32);
        // Harder levels take more steps.
        let steps = |l| g.problem(l, 0).solution.lines().filter(|s| s.contains('=')).count();
        assert!(steps(1) < steps(4) && steps(4) < steps(5));
    }

    #[test]
    fn jsonl_loads_with_configured_fields_and_names_the_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.jsonl");
        std::fs::write(
            &f,
            "{\"question\": \"1+1?\", \"answer\": \"1+1=2\\n#### 2\"}\n\n{\"question\": \"2+3?\", \"answer\": \"#### 5\"}\n",
        )
        .unwrap();
        let ps = load_jsonl(&f, &JsonlFields::gsm8k()).unwrap();
        assert_eq!(ps.len(), 2);
        assert_eq!((ps[0].answer.as_str(), ps[1].answer.as_str()), ("2", "5"));
        assert_eq!(ps[0].level, 0, "GSM8K has no levels");
        let e = load_jsonl(&f, &JsonlFields::math()).unwrap_err().to_string();
        assert!(e.contains("p.jsonl:1:") && e.contains("no field 'problem'") && e.contains("question"), "{e}");
        std::fs::write(&f, "{\"question\": \"q\", \"answer\": \"#### 1\"}\n{oops\n").unwrap();
        let e = load_jsonl(&f, &JsonlFields::gsm8k()).unwrap_err().to_string();
        assert!(e.contains("p.jsonl:2:") && e.contains("not JSON"), "{e}");
        std::fs::write(&f, "{\"question\": \"q\", \"answer\": \"no final answer\"}\n").unwrap();
        let e = load_jsonl(&f, &JsonlFields::gsm8k()).unwrap_err().to_string();
        assert!(e.contains(":1:") && e.contains("no final answer"), "{e}");
        std::fs::write(&f, "{\"problem\": \"q\", \"solution\": \"s\", \"answer\": \"1\", \"level\": \"Level 4\"}\n{\"problem\": \"q\", \"solution\": \"s\", \"answer\": \"1\", \"level\": \"hard\"}\n").unwrap();
        let e = load_jsonl(&f, &JsonlFields::math()).unwrap_err().to_string();
        assert!(e.contains(":2:") && e.contains("'level'"), "{e}");
        std::fs::write(&f, "{\"problem\": \"q\", \"solution\": \"s\", \"answer\": \"1\", \"level\": \"Level 4\"}\n").unwrap();
        assert_eq!(load_jsonl(&f, &JsonlFields::math()).unwrap()[0].level, 4);
        assert!(load_jsonl(&dir.path().join("missing.jsonl"), &JsonlFields::gsm8k()).unwrap_err().to_string().contains("missing.jsonl"));
    }
}
