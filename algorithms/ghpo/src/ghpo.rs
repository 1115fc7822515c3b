//! GHPO's adaptive guidance for one optimizer step (the reference code's
//! schedule, `../shared/reference/ghpo.md` §1.3): generate G completions per
//! problem without a hint; every group whose accuracy rewards are all ≤ 0 is
//! generated again from a prompt carrying 25 % of the reference solution, then
//! 50 %, then 75 %, each round replacing that group's prompt, completions and
//! rewards. Groups still all wrong after the last stage keep their (zero
//! advantage) completions. Nothing is remembered across steps, so hints fade as
//! the policy improves.
//!
//! Written over closures so the schedule is independent of the model: the
//! trainer passes generation, scoring and a cross-rank vote. Every rank must
//! take part in every round (generation and the vote are collective): a rank
//! with nothing to redo still calls `generate` with no prompts, and a round
//! happens only when some rank needs it.

use crate::grpo::too_hard;
use crate::tokenizer::with_hint;

/// The hint fractions of the reference schedule.
pub const HINT_STAGES: [f64; 3] = [0.25, 0.5, 0.75];

/// A problem with its gold answer and the worked solution hints are cut from.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub problem: String,
    pub answer: String,
    pub solution: String,
}

/// One problem's final group.
#[derive(Debug, Clone, PartialEq)]
pub struct Group<C> {
    /// The user message the completions answer (with the hint, if any).
    pub message: String,
    /// The hint fraction used (0 for none).
    pub hint: f64,
    pub completions: Vec<C>,
    /// Per completion: (accuracy, format) rewards.
    pub rewards: Vec<(f64, f64)>,
}

/// Runs the schedule. `generate(messages)` returns `g` completions for each
/// message; `score(problem, completion)` the (accuracy, format) rewards;
/// `any_rank(local_need)` is true when any rank has a group to redo.
pub fn adaptive_hints<C>(
    problems: &[Problem],
    g: usize,
    stages: &[f64],
    mut generate: impl FnMut(&[String]) -> Vec<Vec<C>>,
    mut score: impl FnMut(&Problem, &C) -> (f64, f64),
    mut any_rank: impl FnMut(bool) -> bool,
) -> Vec<Group<C>> {
    let messages: Vec<String> = problems.iter().map(|p| p.problem.clone()).collect();
    let first = generate(&messages);
    let mut groups: Vec<Group<C>> = problems
        .iter()
        .zip(messages)
        .zip(first)
        .map(|((p, message), completions)| {
            let rewards = completions.iter().map(|c| score(p, c)).collect();
            Group { message, hint: 0.0, completions, rewards }
        })
        .collect();
    for &ratio in stages {
        let accuracy: Vec<f64> = groups.iter().flat_map(|gr| gr.rewards.iter().map(|r| r.0)).collect();
        let hard: Vec<usize> = too_hard(&accuracy, g).iter().enumerate().filter(|(_, h)| **h).map(|(i, _)| i).collect();
        if !any_rank(!hard.is_empty()) {
            break;
        }
        let retry: Vec<String> = hard.iter().map(|&i| with_hint(&problems[i].problem, &problems[i].solution, ratio)).collect();
        let fresh = generate(&retry);
        for ((&i, message), completions) in hard.iter().zip(retry).zip(fresh) {
            let rewards = completions.iter().map(|c| score(&problems[i], c)).collect();
            groups[i] = Group { message, hint: ratio, completions, rewards };
        }
    }
    groups
}

/// Fraction of groups at each hint level (0, then each stage): the headline
/// diagnostic of a GHPO step.
pub fn hint_fractions<C>(groups: &[Group<C>], stages: &[f64]) -> Vec<f64> {
    let n = groups.len().max(1) as f64;
    std::iter::once(0.0)
        .chain(stages.iter().copied())
        .map(|level| groups.iter().filter(|gr| gr.hint == level).count() as f64 / n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(name: &str) -> Problem {
        Problem { problem: name.into(), answer: "42".into(), solution: "abcdefghij".into() }
    }

    /// A fake policy: solves "easy" at once; solves "hard" once the hint holds
    /// at least half the solution; never solves "impossible".
    fn solves(message: &str) -> bool {
        let hint = message.split_once("refer to for solving the problem:\n").map(|(_, h)| h.len()).unwrap_or(0);
        message.starts_with("easy") || (message.starts_with("hard") && hint >= 5)
    }

    fn run(problems: &[Problem], others_need: bool) -> (Vec<Group<bool>>, Vec<usize>) {
        let mut calls = Vec::new();
        let groups = adaptive_hints(
            problems,
            2,
            &HINT_STAGES,
            |msgs| {
                calls.push(msgs.len());
                msgs.iter().map(|m| vec![solves(m); 2]).collect()
            },
            |_, ok| (if *ok { 1.0 } else { 0.0 }, 1.0),
            |mine| mine || others_need,
        );
        (groups, calls)
    }

    #[test]
    fn hard_groups_get_growing_hints_until_they_are_solved() {
        let (groups, calls) = run(&[problem("easy"), problem("hard"), problem("impossible")], false);
        assert_eq!(groups[0].hint, 0.0);
        assert_eq!(groups[1].hint, 0.5, "solved with half the solution");
        assert!(groups[1].message.ends_with("abcde") && groups[1].rewards.iter().all(|r| r.0 == 1.0));
        assert_eq!(groups[2].hint, 0.75, "still wrong after the last stage");
        assert!(groups[2].rewards.iter().all(|r| r.0 == 0.0));
        // No hint: all three; 25 %: both unsolved; 50 %: both again (only
        // "hard" is solved); 75 %: "impossible" alone.
        assert_eq!(calls, vec![3, 2, 2, 1]);
        assert_eq!(hint_fractions(&groups, &HINT_STAGES), vec![1.0 / 3.0, 0.0, 1.0 / 3.0, 1.0 / 3.0]);
    }

    #[test]
    fn rounds_stop_when_no_rank_needs_them_and_a_rank_with_nothing_to_redo_still_takes_part() {
        let (groups, calls) = run(&[problem("easy")], false);
        assert_eq!(calls, vec![1], "nobody needs a hint round");
        assert_eq!(groups[0].hint, 0.0);
        let (groups, calls) = run(&[problem("easy")], true);
        assert_eq!(calls, vec![1, 0, 0, 0], "another rank redoes groups: join every round with nothing");
        assert_eq!(groups[0].hint, 0.0);
    }

    #[test]
    fn a_group_with_an_unreadable_gold_answer_is_never_hinted() {
        let groups = adaptive_hints(
            &[problem("hard")],
            2,
            &HINT_STAGES,
            |msgs| msgs.iter().map(|_| vec![(); 2]).collect(),
            |_, _| (f64::NAN, 0.0),
            |mine| mine,
        );
        assert_eq!(groups[0].hint, 0.0);
    }
}
