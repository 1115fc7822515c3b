//! GHPO's adaptive guidance for one batch of rollouts (the reference code's
//! schedule, `../shared/reference/ghpo.md` §1.3): generate G completions per
//! problem without a hint; every group whose accuracy rewards are all ≤ 0 is
//! generated again from a prompt carrying 25 % of the reference solution, then
//! 50 %, then 75 %, each round replacing that group's prompt, completions and
//! rewards. Groups still all wrong after the last stage keep their (zero
//! advantage) completions. Nothing is remembered across steps, so hints fade as
//! the policy improves.
//!
//! The batch is a list of completion slots (slot k answers group k / G) spread
//! over the ranks, so a group's completions may be generated on different
//! ranks. After each round every rank gathers every slot's rewards, so all
//! ranks see the same groups, take the same decisions and run the same number
//! of rounds (a rank with nothing to redo generates nothing but still
//! gathers). Written over closures so the schedule is independent of the
//! model and of the communicator.

use crate::grpo::too_hard;
use crate::tokenizer::with_hint;
use std::ops::Range;

/// The hint fractions of the reference schedule.
pub const HINT_STAGES: [f64; 3] = [0.25, 0.5, 0.75];

/// A problem with its gold answer and the worked solution hints are cut from.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub problem: String,
    pub answer: String,
    pub solution: String,
    /// Difficulty level (0: unknown).
    pub level: u8,
}

/// One of this rank's completion slots after the schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot<C> {
    /// The user message the completion answers (with the hint, if any).
    pub message: String,
    pub completion: C,
}

/// The outcome of the schedule for one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollouts<C> {
    /// This rank's slots, in slot order.
    pub slots: Vec<Slot<C>>,
    /// Every slot's (accuracy, format) rewards, gathered from all ranks.
    pub rewards: Vec<(f64, f64)>,
    /// Every group's final hint fraction (0: none).
    pub hints: Vec<f64>,
    /// Generation rounds run (1 + hint stages used).
    pub rounds: usize,
}

/// Runs the schedule. `problems` holds every group of the batch; `mine` the
/// slots this rank generates. `generate(&[(slot, message)])` returns one
/// completion per entry; `score(problem, completion)` its (accuracy, format)
/// rewards; `gather(mine)` all slots' rewards from the ranks' own.
pub fn adaptive_hints<C, E>(
    problems: &[Problem],
    g: usize,
    mine: Range<usize>,
    stages: &[f64],
    mut generate: impl FnMut(&[(usize, String)]) -> Result<Vec<C>, E>,
    mut score: impl FnMut(&Problem, &C) -> (f64, f64),
    mut gather: impl FnMut(&[(f64, f64)]) -> Result<Vec<(f64, f64)>, E>,
) -> Result<Rollouts<C>, E> {
    let mut hints = vec![0.0; problems.len()];
    let message = |k: usize, hint: f64| {
        let p = &problems[k / g];
        with_hint(&p.problem, &p.solution, hint)
    };
    let todo: Vec<(usize, String)> = mine.clone().map(|k| (k, message(k, 0.0))).collect();
    let completions = generate(&todo)?;
    let mut local: Vec<(f64, f64)> = mine.clone().zip(&completions).map(|(k, c)| score(&problems[k / g], c)).collect();
    let mut slots: Vec<Slot<C>> = todo.into_iter().zip(completions).map(|((_, message), completion)| Slot { message, completion }).collect();
    let mut rewards = gather(&local)?;
    let mut rounds = 1;
    for &ratio in stages {
        let accuracy: Vec<f64> = rewards.iter().map(|r| r.0).collect();
        let hard = too_hard(&accuracy, g);
        if !hard.iter().any(|h| *h) {
            break;
        }
        for (group, h) in hard.iter().enumerate() {
            if *h {
                hints[group] = ratio;
            }
        }
        let todo: Vec<(usize, String)> = mine.clone().filter(|k| hard[k / g]).map(|k| (k, message(k, ratio))).collect();
        let fresh = generate(&todo)?;
        for ((k, msg), completion) in todo.into_iter().zip(fresh) {
            let i = k - mine.start;
            local[i] = score(&problems[k / g], &completion);
            slots[i] = Slot { message: msg, completion };
        }
        rewards = gather(&local)?;
        rounds += 1;
    }
    Ok(Rollouts { slots, rewards, hints, rounds })
}

/// Fraction of groups at each hint level (0, then each stage): the headline
/// diagnostic of a GHPO step.
pub fn hint_fractions(hints: &[f64], stages: &[f64]) -> Vec<f64> {
    let n = hints.len().max(1) as f64;
    std::iter::once(0.0).chain(stages.iter().copied()).map(|level| hints.iter().filter(|h| **h == level).count() as f64 / n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(name: &str) -> Problem {
        Problem { problem: name.into(), answer: "42".into(), solution: "abcdefghij".into(), level: 0 }
    }

    /// A fake policy: solves "easy" at once; solves "hard" once the hint holds
    /// at least half the solution; never solves "impossible".
    fn solves(message: &str) -> bool {
        let hint = message.split_once("refer to for solving the problem:\n").map(|(_, h)| h.len()).unwrap_or(0);
        message.starts_with("easy") || (message.starts_with("hard") && hint >= 5)
    }

    fn score(_: &Problem, ok: &bool) -> (f64, f64) {
        (if *ok { 1.0 } else { 0.0 }, 1.0)
    }

    /// One rank holding every slot.
    fn run(problems: &[Problem], g: usize) -> (Rollouts<bool>, Vec<usize>) {
        let mut calls = Vec::new();
        let out = adaptive_hints(
            problems,
            g,
            0..problems.len() * g,
            &HINT_STAGES,
            |todo| {
                calls.push(todo.len());
                Ok::<_, ()>(todo.iter().map(|(_, m)| solves(m)).collect())
            },
            score,
            |mine| Ok(mine.to_vec()),
        )
        .unwrap();
        (out, calls)
    }

    #[test]
    fn hard_groups_get_growing_hints_until_they_are_solved() {
        let (out, calls) = run(&[problem("easy"), problem("hard"), problem("impossible")], 2);
        assert_eq!(out.hints, vec![0.0, 0.5, 0.75], "hard solved with half the solution; impossible never");
        assert!(out.slots[2].message.ends_with("abcde") && out.rewards[2..4].iter().all(|r| r.0 == 1.0));
        assert!(out.rewards[4..].iter().all(|r| r.0 == 0.0));
        // No hint: 6 slots; 25 %: both unsolved groups; 50 %: both again (only
        // "hard" is solved); 75 %: "impossible" alone.
        assert_eq!(calls, vec![6, 4, 4, 2]);
        assert_eq!(out.rounds, 4);
        assert_eq!(hint_fractions(&out.hints, &HINT_STAGES), vec![1.0 / 3.0, 0.0, 1.0 / 3.0, 1.0 / 3.0]);
        let (out, calls) = run(&[problem("easy")], 2);
        assert_eq!((calls, out.rounds, out.hints), (vec![2], 1, vec![0.0]), "nobody needs a hint round");
    }

    #[test]
    fn a_group_split_over_ranks_is_judged_on_all_its_completions() {
        // One "hard" group of 4 completions; this rank holds slots 0 and 1 and
        // gets them wrong, the other rank (slots 2 and 3) gets one right.
        let others = [(1.0, 1.0), (0.0, 1.0)];
        let mut calls = Vec::new();
        let out = adaptive_hints(
            &[problem("hard")],
            4,
            0..2,
            &HINT_STAGES,
            |todo| {
                calls.push(todo.iter().map(|t| t.0).collect::<Vec<_>>());
                Ok::<_, ()>(todo.iter().map(|(_, m)| solves(m)).collect())
            },
            score,
            |mine| Ok(mine.iter().copied().chain(others).collect()),
        )
        .unwrap();
        assert_eq!(calls, vec![vec![0, 1]], "the group has a correct answer on the other rank: no hint");
        assert_eq!(out.hints, vec![0.0]);
        assert_eq!(out.rewards.len(), 4);

        // All four wrong: this rank redoes its own two slots, the other rank its two.
        let mut calls = Vec::new();
        let out = adaptive_hints(
            &[problem("impossible"), problem("easy")],
            2,
            2..4,
            &HINT_STAGES,
            |todo| {
                calls.push(todo.iter().map(|t| t.0).collect::<Vec<_>>());
                Ok::<_, ()>(todo.iter().map(|(_, m)| solves(m)).collect())
            },
            score,
            |mine| Ok([(0.0, 0.0), (0.0, 0.0)].into_iter().chain(mine.iter().copied()).collect()),
        )
        .unwrap();
        assert_eq!(calls, vec![vec![2, 3], vec![], vec![], vec![]], "nothing of mine to redo, but every round is joined");
        assert_eq!(out.hints, vec![0.75, 0.0]);
    }

    #[test]
    fn a_group_with_an_unreadable_gold_answer_is_never_hinted() {
        let out = adaptive_hints(
            &[problem("hard")],
            2,
            0..2,
            &HINT_STAGES,
            |todo| Ok::<_, ()>(vec![(); todo.len()]),
            |_, _| (f64::NAN, 0.0),
            |mine| Ok(mine.to_vec()),
        )
        .unwrap();
        assert_eq!(out.hints, vec![0.0]);
    }
}
