//! Scoring a ranked edge list against a reference network, two ways, each
//! named where it is reported:
//!
//! - **BEELINE** (`BLEval`): the universe is every ordered pair of distinct
//!   reference genes (`AllPairs`), or only pairs whose source is a reference
//!   regulator — optionally also in a TF list — (`TfEdges`, BEELINE's
//!   `TFEdges` mode for experimental data). Every pair is scored by its
//!   |weight| (0 when not predicted). AUROC and AUPRC are the trapezoid areas
//!   under scikit-learn's ROC and precision–recall curves (tested against
//!   scikit-learn); AUPRC ratio = AUPRC / density; the early precision takes
//!   the top k = |true edges| predictions, ties at the cut-off included and
//!   zero weights never, and EPR = early precision / density.
//! - **top-k** (KINDLE's and TRIGON's protocol): the top k predictions only,
//!   k = |true edges|; precision among them, F1 as 2p / (1 + p) (what the
//!   paper's numbers imply), and AUROC / AUPRC computed within those k.
//!   It rewards a good prior far more than BEELINE's metrics do
//!   (`../shared/reference/kindle.md` §0, §3.3): report it only beside them.

use crate::beeline::{Network, ScoredEdge};
use std::collections::{BTreeSet, HashMap, HashSet};
use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
pub enum MetricError {
    #[error("the reference network has no edge in the evaluated universe ({0}); nothing to score against")]
    NoTrueEdges(String),
}

/// Which ordered pairs are candidates.
#[derive(Debug, Clone, PartialEq)]
pub enum Universe {
    /// Every ordered pair of distinct reference genes (BEELINE's default).
    AllPairs,
    /// Pairs whose source is a reference regulator (and in `tfs` when given).
    TfEdges { tfs: Option<BTreeSet<String>> },
}

impl Universe {
    pub fn name(&self) -> &'static str {
        match self {
            Universe::AllPairs => "all ordered pairs of reference genes",
            Universe::TfEdges { tfs: None } => "pairs from reference regulators",
            Universe::TfEdges { tfs: Some(_) } => "pairs from reference regulators in the TF list",
        }
    }
}

/// KINDLE's top-k protocol.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct TopK {
    pub k: usize,
    pub precision: f64,
    pub f1: f64,
    pub auroc: f64,
    pub auprc: f64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Evaluation {
    pub universe: String,
    pub universe_pairs: usize,
    pub true_edges: usize,
    /// Distinct non-self reference edges outside the universe (e.g. regulators
    /// not in the TF list): not counted as true edges.
    pub true_edges_outside: usize,
    pub density: f64,
    pub auroc: f64,
    pub auprc: f64,
    pub auprc_ratio: f64,
    pub early_precision: f64,
    pub epr: f64,
    pub topk: TopK,
}

/// Scores of positives and negatives as (score, positives, negatives) at
/// each distinct score, highest first.
fn tally(scored: impl Iterator<Item = (f64, bool)>, zero_pos: u64, zero_neg: u64) -> Vec<(f64, u64, u64)> {
    let mut v: Vec<(f64, bool)> = scored.collect();
    v.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut out: Vec<(f64, u64, u64)> = Vec::new();
    for (s, pos) in v {
        match out.last_mut() {
            Some(last) if last.0 == s => {
                if pos {
                    last.1 += 1
                } else {
                    last.2 += 1
                }
            }
            _ => out.push((s, u64::from(pos), u64::from(!pos))),
        }
    }
    if zero_pos + zero_neg > 0 {
        match out.last_mut() {
            Some(last) if last.0 == 0.0 => {
                last.1 += zero_pos;
                last.2 += zero_neg;
            }
            _ => out.push((0.0, zero_pos, zero_neg)),
        }
    }
    out
}

/// Trapezoid areas under the ROC curve (from (0, 0)) and the precision–recall
/// curve (from (recall 0, precision 1)), one point per distinct score, as
/// scikit-learn's `roc_curve`, `precision_recall_curve` and `auc` give them.
/// NaN when there are no negatives (ROC) or no positives (both).
fn areas(tally: &[(f64, u64, u64)]) -> (f64, f64) {
    let p: u64 = tally.iter().map(|t| t.1).sum();
    let n: u64 = tally.iter().map(|t| t.2).sum();
    if p == 0 {
        return (f64::NAN, f64::NAN);
    }
    let (mut tp, mut fp) = (0u64, 0u64);
    let (mut roc, mut pr) = (0.0, 0.0);
    let (mut prev_fpr, mut prev_tpr) = (0.0, 0.0);
    let (mut prev_recall, mut prev_precision) = (0.0, 1.0);
    for &(_, pos, neg) in tally {
        tp += pos;
        fp += neg;
        let tpr = tp as f64 / p as f64;
        if n > 0 {
            let fpr = fp as f64 / n as f64;
            roc += (fpr - prev_fpr) * (tpr + prev_tpr) / 2.0;
            prev_fpr = fpr;
        }
        prev_tpr = tpr;
        let precision = tp as f64 / (tp + fp) as f64;
        pr += (tpr - prev_recall) * (precision + prev_precision) / 2.0;
        prev_recall = tpr;
        prev_precision = precision;
    }
    (if n > 0 { roc } else { f64::NAN }, pr)
}

/// AUROC and BEELINE's AUPRC of binary `labels` under `scores`.
pub fn auroc_auprc(scores: &[f64], labels: &[bool]) -> (f64, f64) {
    areas(&tally(scores.iter().copied().zip(labels.iter().copied()), 0, 0))
}

/// Scores `predictions` against `truth` over `universe`.
pub fn evaluate(truth: &Network, predictions: &[ScoredEdge], universe: &Universe) -> Result<Evaluation, MetricError> {
    let genes: BTreeSet<&str> = truth.genes();
    let sources: BTreeSet<&str> = match universe {
        Universe::AllPairs => genes.clone(),
        Universe::TfEdges { tfs } => truth.regulators().into_iter().filter(|r| tfs.as_ref().is_none_or(|t| t.contains(*r))).collect(),
    };
    let in_universe = |a: &str, b: &str| a != b && sources.contains(a) && genes.contains(b);
    let mut true_set: HashSet<(&str, &str)> = HashSet::new();
    let mut outside: HashSet<(&str, &str)> = HashSet::new();
    for e in &truth.edges {
        let pair = (e.from.as_str(), e.to.as_str());
        if pair.0 == pair.1 {
            continue;
        }
        if in_universe(pair.0, pair.1) {
            true_set.insert(pair);
        } else {
            outside.insert(pair);
        }
    }
    let positives = true_set.len();
    if positives == 0 {
        return Err(MetricError::NoTrueEdges(universe.name().into()));
    }
    let universe_pairs = sources.len() * (genes.len() - 1);
    let density = positives as f64 / universe_pairs as f64;

    // |weight| per predicted pair in the universe; the first occurrence wins
    // (BEELINE drops later duplicates).
    let mut scored: HashMap<(&str, &str), f64> = HashMap::new();
    let mut order: Vec<((&str, &str), f64)> = Vec::new();
    for e in predictions {
        let pair = (e.from.as_str(), e.to.as_str());
        if in_universe(pair.0, pair.1) && !scored.contains_key(&pair) {
            scored.insert(pair, e.weight.abs());
            order.push((pair, e.weight.abs()));
        }
    }
    let predicted_pos = scored.keys().filter(|k| true_set.contains(*k)).count() as u64;
    let predicted_neg = scored.len() as u64 - predicted_pos;
    let t = tally(
        scored.iter().map(|(k, s)| (*s, true_set.contains(k))),
        positives as u64 - predicted_pos,
        (universe_pairs - positives) as u64 - predicted_neg,
    );
    let (auroc, auprc) = areas(&t);

    // Early precision, as BEELINE's EarlyPrecision.py: in all-pairs mode the
    // candidate list is every non-self prediction (not only reference genes).
    let candidates: Vec<((&str, &str), f64)> = match universe {
        Universe::TfEdges { .. } => order.clone(),
        Universe::AllPairs => {
            let mut seen = HashSet::new();
            predictions
                .iter()
                .map(|e| ((e.from.as_str(), e.to.as_str()), e.weight.abs()))
                .filter(|(p, _)| p.0 != p.1 && seen.insert(*p))
                .collect()
        }
    };
    let early_precision = early_precision(&candidates, &true_set);

    // Top-k within the universe.
    let mut ranked = order;
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let k = positives;
    let top = &ranked[..ranked.len().min(k)];
    let labels: Vec<bool> = top.iter().map(|(p, _)| true_set.contains(p)).collect();
    let scores: Vec<f64> = top.iter().map(|(_, s)| *s).collect();
    let hits = labels.iter().filter(|l| **l).count();
    let precision = hits as f64 / k as f64;
    let (tk_auroc, tk_auprc) = auroc_auprc(&scores, &labels);
    Ok(Evaluation {
        universe: universe.name().into(),
        universe_pairs,
        true_edges: positives,
        true_edges_outside: outside.len(),
        density,
        auroc,
        auprc,
        auprc_ratio: auprc / density,
        early_precision,
        epr: early_precision / density,
        topk: TopK { k, precision, f1: 2.0 * precision / (1.0 + precision), auroc: tk_auroc, auprc: tk_auprc },
    })
}

/// BEELINE's early precision of `candidates` (pair, |weight|) in input order.
fn early_precision(candidates: &[((&str, &str), f64)], truth: &HashSet<(&str, &str)>) -> f64 {
    let mut sorted: Vec<&((&str, &str), f64)> = candidates.iter().collect();
    sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
    let k = sorted.len().min(truth.len());
    let Some(nonzero_min) = sorted.iter().map(|c| c.1).filter(|w| *w > 0.0).reduce(f64::min) else { return 0.0 };
    if k == 0 {
        return 0.0;
    }
    let cut = sorted[k - 1].1.max(nonzero_min);
    let selected: Vec<&&((&str, &str), f64)> = sorted.iter().filter(|c| c.1 >= cut).collect();
    let hits = selected.iter().filter(|c| truth.contains(&c.0)).count();
    hits as f64 / selected.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::beeline::Edge;

    fn net(edges: &[(&str, &str)]) -> Network {
        Network { edges: edges.iter().map(|(a, b)| Edge { from: a.to_string(), to: b.to_string(), sign: None }).collect() }
    }

    fn pred(edges: &[(&str, &str, f64)]) -> Vec<ScoredEdge> {
        edges.iter().map(|(a, b, w)| ScoredEdge { from: a.to_string(), to: b.to_string(), weight: *w }).collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn a_perfect_ranking_scores_one_and_an_empty_one_scores_beelines_floor() {
        // Genes A, B, C: 6 ordered pairs, 2 true.
        let truth = net(&[("A", "B"), ("B", "C")]);
        let perfect = evaluate(&truth, &pred(&[("A", "B", 0.9), ("B", "C", -0.8), ("C", "A", 0.1)]), &Universe::AllPairs).unwrap();
        assert_eq!((perfect.universe_pairs, perfect.true_edges), (6, 2));
        assert!(close(perfect.density, 1.0 / 3.0));
        assert!(close(perfect.auroc, 1.0) && close(perfect.auprc, 1.0), "{perfect:?}");
        assert!(close(perfect.epr, 3.0) && close(perfect.topk.precision, 1.0) && close(perfect.topk.f1, 1.0));
        // Nothing predicted: every pair scores 0 — AUROC 0.5, AUPRC (1 + density) / 2, EPR 0.
        let empty = evaluate(&truth, &[], &Universe::AllPairs).unwrap();
        assert!(close(empty.auroc, 0.5) && close(empty.auprc, (1.0 + 1.0 / 3.0) / 2.0), "{empty:?}");
        assert_eq!((empty.early_precision, empty.topk.precision), (0.0, 0.0));
    }

    #[test]
    fn hand_computed_curves_with_ties() {
        // Scores 0.9 (pos), 0.5 (pos, neg tied), 0.2 (neg), rest 0: 1 neg unscored.
        let (roc, pr) = auroc_auprc(&[0.9, 0.5, 0.5, 0.2, 0.0], &[true, true, false, false, false]);
        // ROC points: (0, .5), (1/3, 1), (2/3, 1), (1, 1) → 0 + (1/3)(.75) + 1/3 + 1/3.
        assert!(close(roc, 0.25 + 2.0 / 3.0), "{roc}");
        // PR points: (0,1), (.5, 1), (1, 2/3), (1, .5), (1, .4).
        assert!(close(pr, 0.5 + 0.5 * (1.0 + 2.0 / 3.0) / 2.0), "{pr}");
    }

    #[test]
    fn early_precision_counts_ties_at_the_cut_and_never_zero_weights() {
        let truth = net(&[("A", "B"), ("B", "C")]);
        // k = 2; the 2nd weight (0.5) ties with a false edge: 3 selected, 2 true.
        let e = evaluate(&truth, &pred(&[("A", "B", 0.9), ("C", "A", 0.5), ("B", "C", 0.5), ("A", "C", 0.1)]), &Universe::AllPairs).unwrap();
        assert!(close(e.early_precision, 2.0 / 3.0), "{e:?}");
        // Zero weights never count: only A→B is selected.
        let e = evaluate(&truth, &pred(&[("A", "B", 0.9), ("C", "A", 0.0), ("B", "C", 0.0)]), &Universe::AllPairs).unwrap();
        assert!(close(e.early_precision, 1.0));
        // Self-loops and duplicate predictions are ignored (the first counts).
        let e = evaluate(&truth, &pred(&[("A", "A", 5.0), ("C", "A", 0.9), ("C", "A", 0.1), ("A", "B", 0.8), ("B", "C", 0.7)]), &Universe::AllPairs).unwrap();
        assert!(close(e.early_precision, 0.5) && close(e.topk.precision, 0.5));
    }

    #[test]
    fn tf_edges_restrict_sources_to_reference_regulators_in_the_tf_list() {
        // Regulators A and B; genes A, B, C, D.
        let truth = net(&[("A", "B"), ("A", "C"), ("B", "D")]);
        let all = evaluate(&truth, &[], &Universe::AllPairs).unwrap();
        assert_eq!(all.universe_pairs, 12);
        let tf = evaluate(&truth, &[], &Universe::TfEdges { tfs: None }).unwrap();
        assert_eq!((tf.universe_pairs, tf.true_edges), (6, 3));
        let listed = evaluate(&truth, &pred(&[("C", "D", 1.0), ("A", "C", 0.5)]), &Universe::TfEdges { tfs: Some(["A".to_string()].into()) }).unwrap();
        assert_eq!((listed.universe_pairs, listed.true_edges, listed.true_edges_outside), (3, 2, 1));
        // C→D lies outside the universe: ignored, so A→C leads.
        assert!(close(listed.early_precision, 1.0), "{listed:?}");
        assert!(matches!(evaluate(&net(&[("A", "A")]), &[], &Universe::AllPairs), Err(MetricError::NoTrueEdges(_))));
    }
}
