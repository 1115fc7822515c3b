//! The reference predictors every GRN method is compared with, scored by the
//! same metric code: random scores, random scores over a prior network's edges
//! only (what a prior alone is worth), and absolute Pearson and Spearman
//! correlation across cells (a strong baseline on BEELINE's data).

use crate::beeline::{Expression, Network, ScoredEdge};
use kiln_worker::rng::{splitmix, unit};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Correlation {
    Pearson,
    Spearman,
}

/// Ranks 1..n with ties given their average rank.
fn ranks(x: &[f32]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Every ordered pair of distinct genes with weight |r| (r = 0 for a constant gene).
pub fn correlation(expr: &Expression, kind: Correlation) -> Vec<ScoredEdge> {
    // Centred, unit-norm rows: r is then a dot product.
    let rows: Vec<Vec<f64>> = (0..expr.genes.len())
        .map(|g| {
            let x: Vec<f64> = match kind {
                Correlation::Pearson => expr.row(g).iter().map(|v| f64::from(*v)).collect(),
                Correlation::Spearman => ranks(expr.row(g)),
            };
            let mean = x.iter().sum::<f64>() / x.len().max(1) as f64;
            let c: Vec<f64> = x.iter().map(|v| v - mean).collect();
            let norm = c.iter().map(|v| v * v).sum::<f64>().sqrt();
            if norm > 0.0 {
                c.iter().map(|v| v / norm).collect()
            } else {
                vec![0.0; c.len()]
            }
        })
        .collect();
    let n = rows.len();
    let mut out = Vec::with_capacity(n * n.saturating_sub(1));
    for i in 0..n {
        for j in i + 1..n {
            let r: f64 = rows[i].iter().zip(&rows[j]).map(|(a, b)| a * b).sum();
            let w = r.abs().min(1.0);
            out.push(ScoredEdge { from: expr.genes[i].clone(), to: expr.genes[j].clone(), weight: w });
            out.push(ScoredEdge { from: expr.genes[j].clone(), to: expr.genes[i].clone(), weight: w });
        }
    }
    out
}

/// Uniform random scores for every ordered pair of distinct `genes`.
pub fn random(genes: &[String], seed: u64) -> Vec<ScoredEdge> {
    let mut out = Vec::new();
    for (i, a) in genes.iter().enumerate() {
        for (j, b) in genes.iter().enumerate() {
            if i != j {
                let w = unit(splitmix(splitmix(splitmix(seed) ^ i as u64) ^ j as u64));
                out.push(ScoredEdge { from: a.clone(), to: b.clone(), weight: w });
            }
        }
    }
    out
}

/// Uniform random scores for the prior's edges only (self-loops dropped).
pub fn prior_random(prior: &Network, seed: u64) -> Vec<ScoredEdge> {
    prior
        .edges
        .iter()
        .enumerate()
        .filter(|(_, e)| e.from != e.to)
        .map(|(i, e)| ScoredEdge { from: e.from.clone(), to: e.to.clone(), weight: unit(splitmix(splitmix(seed) ^ i as u64)).max(f64::MIN_POSITIVE) })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expr(rows: &[(&str, &[f32])]) -> Expression {
        Expression {
            genes: rows.iter().map(|r| r.0.to_string()).collect(),
            cells: (0..rows[0].1.len()).map(|c| format!("c{c}")).collect(),
            values: rows.iter().flat_map(|r| r.1.iter().copied()).collect(),
        }
    }

    fn weight(edges: &[ScoredEdge], a: &str, b: &str) -> f64 {
        edges.iter().find(|e| e.from == a && e.to == b).unwrap().weight
    }

    #[test]
    fn correlations_are_symmetric_absolute_and_rank_based_for_spearman() {
        let e = expr(&[("x", &[1.0, 2.0, 3.0, 4.0]), ("y", &[2.0, 4.0, 6.0, 8.5]), ("z", &[4.0, 3.0, 2.0, 1.0]), ("k", &[5.0, 5.0, 5.0, 5.0]), ("q", &[1.0, 8.0, 27.0, 64.0])]);
        let p = correlation(&e, Correlation::Pearson);
        assert_eq!(p.len(), 20);
        assert!((weight(&p, "x", "z") - 1.0).abs() < 1e-12, "anti-correlation counts fully");
        assert_eq!(weight(&p, "x", "y"), weight(&p, "y", "x"));
        assert_eq!(weight(&p, "x", "k"), 0.0, "a constant gene correlates with nothing");
        assert!(weight(&p, "x", "q") < 0.99, "cubic is not linear");
        let s = correlation(&e, Correlation::Spearman);
        assert!((weight(&s, "x", "q") - 1.0).abs() < 1e-12, "but it is monotone");
        assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0]), vec![3.5, 1.0, 3.5, 2.0]);
    }

    #[test]
    fn random_baselines_are_seeded_and_the_prior_one_stays_on_the_prior() {
        let genes: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let r = random(&genes, 1);
        assert_eq!(r.len(), 6);
        assert_eq!(r, random(&genes, 1));
        assert_ne!(r, random(&genes, 2));
        let prior = Network {
            edges: vec![
                crate::beeline::Edge { from: "a".into(), to: "b".into(), sign: None },
                crate::beeline::Edge { from: "c".into(), to: "c".into(), sign: None },
            ],
        };
        let pr = prior_random(&prior, 3);
        assert_eq!(pr.len(), 1);
        assert!(pr[0].weight > 0.0 && pr[0].weight < 1.0);
    }
}
