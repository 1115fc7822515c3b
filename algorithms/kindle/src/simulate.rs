//! A SERGIO-style generator of single-cell expression with a known regulatory
//! network, written from the model's equations (`../shared/reference/kindle.md`
//! §4.2), so tests and benchmarks have data whose answer is known.
//!
//! - **Network**: genes in layers; the first layer are master regulators
//!   (MRs), every other gene has 1..=`max_regulators` regulators in earlier
//!   layers with signed strengths K (|K| in [1, 5], repression with probability
//!   `repression`) and Hill coefficient n.
//! - **Production**: an MR produces at its cell state's rate b; a target at
//!   P_i = Σ_j |K_ij| · H(x_j), H = xⁿ / (hⁿ + xⁿ) for activation and 1 − that
//!   for repression, with the half response h_ij the regulator's mean
//!   steady-state expression (computed layer by layer, MRs first).
//! - **Dynamics**: the chemical Langevin equation with independent production
//!   and decay noise, dx = (P − λx) dt + q (√P dW₁ + √(λx) dW₂), Euler steps
//!   of `dt`, x kept ≥ 0.
//! - **Differentiation**: each trajectory runs from a shared start state to its
//!   own end state: MR rates move linearly from the start's to the end's over
//!   the trajectory, the whole network following through the dynamics. Cells
//!   are sampled along it; a cell's pseudotime is its trajectory time (NA on
//!   the other trajectories), as BEELINE's layout has it.
//! - **Technical noise** (in SERGIO's order, each optional): outlier genes
//!   (a lognormal factor with probability π), library size (a lognormal total
//!   per cell the profile is rescaled to), dropout (keep with probability
//!   1 / (1 + exp(−k (log(x + 1) − q))), q the chosen percentile of
//!   log(x + 1)), then Poisson counts.
//!
//! Every draw comes from SplitMix64 keyed by (seed, purpose, indices), so a
//! dataset is a pure function of its settings.

use crate::beeline::{Edge, Expression, Network, PseudoTime, ScoredEdge, Sign};
use kiln_worker::rng::{splitmix, unit};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimSettings {
    pub genes: usize,
    pub master_regulators: usize,
    pub max_regulators: usize,
    /// Share of edges that repress.
    pub repression: f64,
    pub hill: f64,
    /// Decay rate λ.
    pub decay: f64,
    /// Noise amplitude q.
    pub noise: f64,
    pub dt: f64,
    /// Trajectories from the shared start (1: linear, 2: bifurcating, …).
    pub trajectories: usize,
    /// Cells sampled per trajectory.
    pub cells_per_trajectory: usize,
    /// Simulated time units per trajectory.
    pub duration: f64,
    /// Technical noise; `None` keeps clean concentrations.
    pub technical: Option<TechnicalNoise>,
    /// Prior network: share of true edges dropped, and false edges added as a
    /// share of the true edge count.
    pub prior_drop: f64,
    pub prior_add: f64,
    pub seed: u64,
}

impl Default for SimSettings {
    fn default() -> Self {
        SimSettings {
            genes: 20,
            master_regulators: 3,
            max_regulators: 2,
            repression: 0.3,
            hill: 2.0,
            decay: 0.8,
            noise: 0.5,
            dt: 0.01,
            trajectories: 1,
            cells_per_trajectory: 300,
            duration: 20.0,
            technical: None,
            prior_drop: 0.3,
            prior_add: 0.5,
            seed: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TechnicalNoise {
    pub outlier_probability: f64,
    pub outlier_mu: f64,
    pub outlier_sigma: f64,
    pub library_mu: f64,
    pub library_sigma: f64,
    pub dropout_k: f64,
    /// Percentile (0–100) of log(x + 1) at which a value is kept with probability 1/2.
    pub dropout_percentile: f64,
    pub poisson: bool,
}

impl Default for TechnicalNoise {
    fn default() -> Self {
        TechnicalNoise {
            outlier_probability: 0.01,
            outlier_mu: 0.8,
            outlier_sigma: 1.0,
            library_mu: 4.5,
            library_sigma: 0.4,
            dropout_k: 8.0,
            dropout_percentile: 45.0,
            poisson: true,
        }
    }
}

impl SimSettings {
    /// Settings that cannot give a dataset, with the key and why.
    pub fn check(&self) -> Result<(), String> {
        let bad = |key: &str, why: &str| Err(format!("{key}: {why}"));
        if self.genes < 2 || self.master_regulators == 0 || self.master_regulators >= self.genes {
            return bad("master_regulators", "need at least one master regulator and at least one target (1 <= master_regulators < genes)");
        }
        if self.max_regulators == 0 {
            return bad("max_regulators", "must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.repression) || !(0.0..=1.0).contains(&self.prior_drop) || !(0.0..=10.0).contains(&self.prior_add) {
            return bad("repression", "repression and prior_drop must be in [0, 1], prior_add in [0, 10]");
        }
        if self.hill <= 0.0 || self.decay <= 0.0 || self.noise < 0.0 || self.dt <= 0.0 || self.duration <= 0.0 {
            return bad("hill", "hill, decay, dt and duration must be positive, noise >= 0");
        }
        if self.trajectories == 0 || self.cells_per_trajectory == 0 {
            return bad("trajectories", "need at least one trajectory with at least one cell");
        }
        if let Some(t) = &self.technical {
            if !(0.0..=100.0).contains(&t.dropout_percentile) || !(0.0..=1.0).contains(&t.outlier_probability) {
                return bad("technical", "dropout_percentile must be in [0, 100] and outlier_probability in [0, 1]");
            }
        }
        Ok(())
    }
}

/// A simulated dataset in BEELINE's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub expression: Expression,
    pub pseudotime: PseudoTime,
    pub truth: Network,
    /// A noisy copy of the truth, for methods that take a prior.
    pub prior: Network,
}

/// Draws keyed by (seed, stream, a, b).
struct Draws {
    seed: u64,
}

impl Draws {
    fn u(&self, stream: u64, a: u64, b: u64) -> f64 {
        unit(splitmix(splitmix(splitmix(splitmix(self.seed) ^ stream) ^ a) ^ b))
    }

    /// Standard normal (Box–Muller).
    fn normal(&self, stream: u64, a: u64, b: u64) -> f64 {
        let u1 = self.u(stream, a, 2 * b).max(1e-300);
        let u2 = self.u(stream, a, 2 * b + 1);
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Poisson(mean): Knuth's product method for small means, a rounded
    /// normal approximation above 30 (its error is below the counts' noise).
    fn poisson(&self, stream: u64, a: u64, b: u64, mean: f64) -> f64 {
        if mean <= 0.0 {
            return 0.0;
        }
        if mean > 30.0 {
            return (mean + mean.sqrt() * self.normal(stream, a, b)).round().max(0.0);
        }
        let limit = (-mean).exp();
        let (mut k, mut p) = (0u64, 1.0);
        loop {
            p *= self.u(stream ^ 0x5eed, a, b.wrapping_mul(64).wrapping_add(k));
            if p <= limit {
                return k as f64;
            }
            k += 1;
        }
    }
}

const NET: u64 = 1;
const RATES: u64 = 2;
const DYN: u64 = 3;
const SAMPLE: u64 = 4;
const TECH: u64 = 5;
const PRIOR: u64 = 6;

/// One regulation: regulator index, signed strength, half response per state
/// (filled once the regulator's steady state is known).
#[derive(Debug, Clone)]
struct Reg {
    from: usize,
    k: f64,
}

fn hill(x: f64, h: f64, n: f64, k: f64) -> f64 {
    let a = if x <= 0.0 { 0.0 } else { x.powf(n) / (h.powf(n) + x.powf(n)) };
    k.abs() * if k >= 0.0 { a } else { 1.0 - a }
}

pub fn simulate(s: &SimSettings) -> Result<Dataset, String> {
    s.check()?;
    let d = Draws { seed: s.seed };
    let g = s.genes;
    let mr = s.master_regulators;
    // Layers: MRs are genes 0..mr; target i draws regulators among genes < i,
    // so the network is a DAG in index order.
    let mut regs: Vec<Vec<Reg>> = vec![Vec::new(); g];
    for i in mr..g {
        let want = 1 + (d.u(NET, i as u64, 0) * s.max_regulators as f64) as usize;
        let want = want.min(s.max_regulators).min(i);
        let mut chosen: Vec<usize> = Vec::new();
        let mut t = 1u64;
        while chosen.len() < want {
            let j = (d.u(NET, i as u64, t) * i as f64) as usize;
            t += 1;
            if !chosen.contains(&j) {
                chosen.push(j);
            }
        }
        for (r, &j) in chosen.iter().enumerate() {
            let magnitude = 1.0 + 4.0 * d.u(NET, i as u64, 1000 + r as u64);
            let sign = if d.u(NET, i as u64, 2000 + r as u64) < s.repression { -1.0 } else { 1.0 };
            regs[i].push(Reg { from: j, k: sign * magnitude });
        }
    }
    // MR production rates: one start state, one end state per trajectory.
    let states = 1 + s.trajectories;
    let rate = |state: usize, m: usize| 0.5 + 2.5 * d.u(RATES, state as u64, m as u64);
    // Half responses per (state, gene): mean steady-state expression, layer by layer.
    let steady = |rates: &dyn Fn(usize) -> f64| -> Vec<f64> {
        let mut x = vec![0.0; g];
        for i in 0..g {
            x[i] = if i < mr {
                rates(i) / s.decay
            } else {
                regs[i].iter().map(|r| hill(x[r.from], x[r.from].max(1e-3), s.hill, r.k)).sum::<f64>() / s.decay
            };
        }
        x
    };
    let half: Vec<Vec<f64>> = (0..states).map(|st| steady(&|m| rate(st, m)).iter().map(|v| v.max(1e-3)).collect()).collect();

    let steps = (s.duration / s.dt).ceil() as usize;
    let total_cells = s.trajectories * s.cells_per_trajectory;
    let mut values = vec![0f32; g * total_cells];
    let mut cells = Vec::with_capacity(total_cells);
    let mut times = Vec::with_capacity(total_cells);
    for traj in 0..s.trajectories {
        // Sampled steps, sorted, so one pass of the dynamics serves them all.
        let mut at: Vec<usize> = (0..s.cells_per_trajectory).map(|c| (d.u(SAMPLE, traj as u64, c as u64) * steps as f64) as usize).collect();
        at.sort_unstable();
        let end = 1 + traj;
        let mut x = half[0].clone();
        let mut next = 0;
        let sq_dt = s.dt.sqrt();
        for step in 0..steps {
            let frac = step as f64 / steps as f64;
            // Half responses and MR rates move from the start state to the end state.
            let mut p = vec![0.0; g];
            for i in 0..g {
                p[i] = if i < mr {
                    (1.0 - frac) * rate(0, i) + frac * rate(end, i)
                } else {
                    regs[i].iter().map(|r| hill(x[r.from], (1.0 - frac) * half[0][r.from] + frac * half[end][r.from], s.hill, r.k)).sum()
                };
            }
            for i in 0..g {
                let key = (traj * steps + step) as u64;
                let noise = s.noise * (p[i].sqrt() * d.normal(DYN, key, 2 * i as u64) + (s.decay * x[i]).sqrt() * d.normal(DYN, key, 2 * i as u64 + 1)) * sq_dt;
                x[i] = (x[i] + (p[i] - s.decay * x[i]) * s.dt + noise).max(0.0);
            }
            while next < at.len() && at[next] == step {
                let c = traj * s.cells_per_trajectory + next;
                for i in 0..g {
                    values[i * total_cells + c] = x[i] as f32;
                }
                let mut t = vec![None; s.trajectories];
                t[traj] = Some(step as f64 / steps as f64);
                times.push(t);
                cells.push(format!("T{}_C{}", traj + 1, next + 1));
                next += 1;
            }
        }
        // Cells drawn at the very last step index never met it: add them at the end state.
        while next < at.len() {
            let c = traj * s.cells_per_trajectory + next;
            for i in 0..g {
                values[i * total_cells + c] = x[i] as f32;
            }
            let mut t = vec![None; s.trajectories];
            t[traj] = Some(1.0);
            times.push(t);
            cells.push(format!("T{}_C{}", traj + 1, next + 1));
            next += 1;
        }
    }
    if let Some(t) = &s.technical {
        technical_noise(&mut values, g, total_cells, t, &d);
    }

    let genes: Vec<String> = (0..g).map(|i| format!("G{}", i + 1)).collect();
    let truth = Network {
        edges: regs
            .iter()
            .enumerate()
            .flat_map(|(i, rs)| {
                let genes = &genes;
                rs.iter().map(move |r| Edge {
                    from: genes[r.from].clone(),
                    to: genes[i].clone(),
                    sign: Some(if r.k >= 0.0 { Sign::Activation } else { Sign::Repression }),
                })
            })
            .collect(),
    };
    let prior = noisy_prior(&truth, &genes, s.prior_drop, s.prior_add, &d);
    let trajectories = (1..=s.trajectories).map(|t| if s.trajectories == 1 { "PseudoTime".to_string() } else { format!("PseudoTime{t}") }).collect();
    Ok(Dataset {
        expression: Expression { genes, cells: cells.clone(), values },
        pseudotime: PseudoTime { trajectories, cells, times },
        truth,
        prior,
    })
}

fn technical_noise(values: &mut [f32], genes: usize, cells: usize, t: &TechnicalNoise, d: &Draws) {
    // Outlier genes.
    for gi in 0..genes {
        if d.u(TECH, 1, gi as u64) < t.outlier_probability {
            let f = (t.outlier_mu + t.outlier_sigma * d.normal(TECH, 2, gi as u64)).exp() as f32;
            values[gi * cells..(gi + 1) * cells].iter_mut().for_each(|v| *v *= f);
        }
    }
    // Library size: each cell's profile rescaled to a lognormal total.
    for c in 0..cells {
        let total: f64 = (0..genes).map(|gi| f64::from(values[gi * cells + c])).sum();
        if total > 0.0 {
            let target = (t.library_mu + t.library_sigma * d.normal(TECH, 3, c as u64)).exp();
            let f = (target / total) as f32;
            (0..genes).for_each(|gi| values[gi * cells + c] *= f);
        }
    }
    // Dropout around the chosen percentile of log(x + 1).
    let mut logs: Vec<f64> = values.iter().map(|v| f64::from(*v).ln_1p()).collect();
    logs.sort_by(f64::total_cmp);
    let q = logs[((t.dropout_percentile / 100.0) * (logs.len() - 1) as f64).round() as usize];
    for (i, v) in values.iter_mut().enumerate() {
        let keep = 1.0 / (1.0 + (-t.dropout_k * (f64::from(*v).ln_1p() - q)).exp());
        if d.u(TECH, 4, i as u64) >= keep {
            *v = 0.0;
        }
    }
    if t.poisson {
        for (i, v) in values.iter_mut().enumerate() {
            *v = d.poisson(TECH + 16, 5, i as u64, f64::from(*v)) as f32;
        }
    }
}

/// A prior for data that comes with a reference network only (BEELINE's
/// synthetic and curated sets): the reference with `drop` of its edges removed
/// and `add` × |reference| false edges among `genes` added, unsigned; seeded.
/// A teacher given it starts from part of the answer, so a report must say so.
pub fn prior_from_truth(truth: &Network, genes: &[String], drop: f64, add: f64, seed: u64) -> Result<Network, String> {
    if !(0.0..=1.0).contains(&drop) || !(0.0..=10.0).contains(&add) {
        return Err(format!("drop must be in [0, 1] and add in [0, 10] (got {drop} and {add})"));
    }
    if genes.len() < 2 {
        return Err("a prior needs at least 2 genes".into());
    }
    Ok(noisy_prior(truth, genes, drop, add, &Draws { seed }))
}

/// The truth with `drop` of its edges removed and `add` × |truth| false edges
/// added (unsigned, as real priors are).
fn noisy_prior(truth: &Network, genes: &[String], drop: f64, add: f64, d: &Draws) -> Network {
    let mut edges: Vec<Edge> = truth
        .edges
        .iter()
        .enumerate()
        .filter(|(i, _)| d.u(PRIOR, 1, *i as u64) >= drop)
        .map(|(_, e)| Edge { from: e.from.clone(), to: e.to.clone(), sign: None })
        .collect();
    let true_pairs: std::collections::HashSet<(&str, &str)> = truth.edges.iter().map(|e| (e.from.as_str(), e.to.as_str())).collect();
    let want = (add * truth.edges.len() as f64).round() as usize;
    let (mut added, mut t) = (0, 0u64);
    while added < want && t < 100 * (want as u64 + 1) {
        let a = (d.u(PRIOR, 2, t) * genes.len() as f64) as usize;
        let b = (d.u(PRIOR, 3, t) * genes.len() as f64) as usize;
        t += 1;
        let pair = (genes[a].as_str(), genes[b].as_str());
        if a != b && !true_pairs.contains(&pair) && !edges.iter().any(|e| (e.from.as_str(), e.to.as_str()) == pair) {
            edges.push(Edge { from: genes[a].clone(), to: genes[b].clone(), sign: None });
            added += 1;
        }
    }
    Network { edges }
}

/// Writes `ExpressionData.csv`, `PseudoTime.csv`, `refNetwork.csv` and
/// `prior.csv` into `dir` (created), each through a renamed temporary file.
pub fn write_dataset(ds: &Dataset, dir: &std::path::Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let write = |name: &str, text: String| -> Result<(), String> {
        let path = dir.join(name);
        let tmp = dir.join(format!("{name}.partial"));
        std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &path)).map_err(|e| format!("{}: {e}", path.display()))
    };
    let e = &ds.expression;
    let mut text = String::new();
    for c in &e.cells {
        text.push(',');
        text.push_str(c);
    }
    text.push('\n');
    for (gi, gene) in e.genes.iter().enumerate() {
        text.push_str(gene);
        for v in e.row(gi) {
            text.push_str(&format!(",{v}"));
        }
        text.push('\n');
    }
    write("ExpressionData.csv", text)?;
    let p = &ds.pseudotime;
    let mut text = format!(",{}\n", p.trajectories.join(","));
    for (c, t) in p.cells.iter().zip(&p.times) {
        text.push_str(c);
        for v in t {
            text.push_str(&v.map(|x| format!(",{x}")).unwrap_or_else(|| ",NA".into()));
        }
        text.push('\n');
    }
    write("PseudoTime.csv", text)?;
    write("refNetwork.csv", network_csv(&ds.truth, true))?;
    write("prior.csv", network_csv(&ds.prior, false))
}

/// A network in BEELINE's layout: `Gene1,Gene2[,Type]`.
pub fn network_csv(n: &Network, typed: bool) -> String {
    let mut text = String::from(if typed { "Gene1,Gene2,Type\n" } else { "Gene1,Gene2\n" });
    for e in &n.edges {
        text.push_str(&format!("{},{}", e.from, e.to));
        if typed {
            text.push_str(if e.sign == Some(Sign::Repression) { ",-" } else { ",+" });
        }
        text.push('\n');
    }
    text
}

/// The truth as a scored list (weight 1 per edge): an oracle for tests.
pub fn oracle(truth: &Network) -> Vec<ScoredEdge> {
    truth.edges.iter().map(|e| ScoredEdge { from: e.from.clone(), to: e.to.clone(), weight: 1.0 }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baselines::{correlation, Correlation};
    use crate::metrics::{evaluate, Universe};

    #[test]
    fn datasets_are_deterministic_acyclic_and_round_trip_through_beeline_files() {
        let s = SimSettings { genes: 12, cells_per_trajectory: 50, trajectories: 2, duration: 5.0, ..Default::default() };
        let a = simulate(&s).unwrap();
        assert_eq!(a, simulate(&s).unwrap(), "a pure function of the settings");
        assert_ne!(a.expression.values, simulate(&SimSettings { seed: 1, ..s.clone() }).unwrap().expression.values);
        assert_eq!(a.expression.cells.len(), 100);
        // MRs G1..G3 have no regulators; every edge goes from a lower index.
        let idx = |g: &str| g[1..].parse::<usize>().unwrap();
        assert!(a.truth.edges.iter().all(|e| idx(&e.from) < idx(&e.to) && idx(&e.to) > 3));
        assert!(a.expression.values.iter().all(|v| v.is_finite() && *v >= 0.0));
        // Each cell is on exactly one trajectory.
        assert!(a.pseudotime.times.iter().all(|t| t.iter().filter(|v| v.is_some()).count() == 1));
        let dir = tempfile::tempdir().unwrap();
        write_dataset(&a, dir.path()).unwrap();
        let e = crate::beeline::read_expression(&dir.path().join("ExpressionData.csv")).unwrap();
        assert_eq!(e.genes, a.expression.genes);
        let pt = crate::beeline::read_pseudotime(&dir.path().join("PseudoTime.csv")).unwrap();
        assert_eq!(pt.trajectories, vec!["PseudoTime1", "PseudoTime2"]);
        pt.check_cells(&e, &dir.path().join("PseudoTime.csv")).unwrap();
        assert_eq!(crate::beeline::read_network(&dir.path().join("refNetwork.csv")).unwrap(), a.truth);
        assert!(SimSettings { master_regulators: 12, genes: 12, ..Default::default() }.check().is_err());
    }

    #[test]
    fn regulation_leaves_a_signal_correlation_can_find_and_noise_weakens_it() {
        let s = SimSettings { genes: 15, cells_per_trajectory: 400, seed: 3, ..Default::default() };
        let clean = simulate(&s).unwrap();
        let oracle = evaluate(&clean.truth, &oracle(&clean.truth), &Universe::AllPairs).unwrap();
        assert!((oracle.auroc - 1.0).abs() < 1e-12);
        let p = evaluate(&clean.truth, &correlation(&clean.expression, Correlation::Pearson), &Universe::AllPairs).unwrap();
        assert!(p.auroc > 0.6 && p.epr > 1.5, "clean data carries the network: {p:?}");
        let noisy = simulate(&SimSettings { technical: Some(TechnicalNoise::default()), ..s }).unwrap();
        let zeros = noisy.expression.values.iter().filter(|v| **v == 0.0).count() as f64 / noisy.expression.values.len() as f64;
        assert!(zeros > 0.2, "dropout zeroes values: {zeros}");
        assert!(noisy.expression.values.iter().all(|v| v.fract() == 0.0), "Poisson counts are integers");
        // The prior keeps some true edges and adds false ones.
        let truth: std::collections::HashSet<_> = clean.truth.edges.iter().map(|e| (&e.from, &e.to)).collect();
        let kept = clean.prior.edges.iter().filter(|e| truth.contains(&(&e.from, &e.to))).count();
        assert!(kept > 0 && kept < clean.prior.edges.len());
    }
}
