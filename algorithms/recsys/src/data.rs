//! A multi-domain, multi-task CTR generator with a known ground truth.
//!
//! Each sample is (user, item, domain, dense features) with two binary labels —
//! task 0 "click" and task 1 "conversion-like" — drawn from logistic models whose
//! parameters the generator knows. Users and items have latent vectors; each domain
//! scales and shifts each task differently, and the two tasks share part of their
//! signal (the setting MMoE targets). Two options make the data harder in the ways
//! the other models target: `domain_shift` gives each domain its own view of the
//! items (the affinity is u · (v + shift · R_d v), R_d a random matrix per domain),
//! so one shared network cannot fit every domain (STAR, M3oE); `funnel` makes task
//! 1 a conversion that needs a click (y1 = y0 · Bernoulli(q), p1 = p0 · q), as ESMM
//! and AITM assume. Because the true probabilities are known, the oracle AUC
//! bounds what any model can reach.
//!
//! Sample `i` is a pure function of (seed, i), via a counter-based hash, so any
//! rank can produce any slice of any batch: N-rank and resumed runs see exactly
//! the samples of an uninterrupted 1-rank run.

use crate::batch::{Batch, Schema};
use tch::{Device, Kind, Tensor};

pub const TASKS: usize = 2;
const LATENT: usize = 8;
/// Eval samples come from a separate index range that training never reaches,
/// and validation samples (M3oE's structure search) from another.
const EVAL_BASE: u64 = 1 << 48;
const VAL_BASE: u64 = 1 << 47;

/// SplitMix64: the counter-based hash behind every draw.
use kiln_worker::rng::splitmix as mix;

fn uniform(seed: u64, a: u64, b: u64) -> f64 {
    let h = mix(seed ^ mix(a ^ mix(b)));
    ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

fn normal(seed: u64, a: u64, b: u64) -> f64 {
    let u1 = uniform(seed, a, b.wrapping_mul(2));
    let u2 = uniform(seed, a, b.wrapping_mul(2) + 1);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

pub struct Generator {
    seed: u64,
    users: usize,
    items: usize,
    domains: usize,
    dense: usize,
    /// Per task, per dense feature.
    dense_w: Vec<Vec<f64>>,
    /// Per domain, per task: (scale, bias).
    domain_tb: Vec<[(f64, f64); TASKS]>,
    /// Per domain: its view of item vectors, v + shift · R_d v (`None`: no shift).
    domain_view: Option<Vec<[[f64; LATENT]; LATENT]>>,
    funnel: bool,
}

/// How the generated data is made harder (both off by default).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Shape {
    pub domain_shift: f64,
    pub funnel: bool,
}

impl Generator {
    pub fn new(seed: u64, users: usize, items: usize, domains: usize, dense: usize) -> Self {
        Self::with_shape(seed, users, items, domains, dense, Shape::default())
    }

    pub fn with_shape(seed: u64, users: usize, items: usize, domains: usize, dense: usize, shape: Shape) -> Self {
        let s = mix(seed ^ 0x5EED);
        let dense_w = (0..TASKS)
            .map(|t| (0..dense).map(|j| normal(s, 3 << 40, (t * 1000 + j) as u64) * 0.5).collect())
            .collect();
        let domain_tb = (0..domains)
            .map(|d| {
                let mut tb = [(0.0, 0.0); TASKS];
                for (t, x) in tb.iter_mut().enumerate() {
                    let scale = 0.6 + 0.8 * uniform(s, 4 << 40, (d * 10 + t) as u64);
                    let bias = -0.5 - 1.0 * t as f64 + 0.8 * normal(s, 5 << 40, (d * 10 + t) as u64);
                    *x = (scale, bias);
                }
                tb
            })
            .collect();
        let domain_view = (shape.domain_shift != 0.0).then(|| {
            (0..domains)
                .map(|d| {
                    let mut m = [[0.0; LATENT]; LATENT];
                    for (a, row) in m.iter_mut().enumerate() {
                        for (b, x) in row.iter_mut().enumerate() {
                            let r = normal(s, 6 << 40, (d * LATENT * LATENT + a * LATENT + b) as u64) / (LATENT as f64).sqrt();
                            *x = if a == b { 1.0 } else { 0.0 } + shape.domain_shift * r;
                        }
                    }
                    m
                })
                .collect()
        });
        Generator { seed: s, users, items, domains, dense, dense_w, domain_tb, domain_view, funnel: shape.funnel }
    }

    /// User `i`'s (tag 1) or item `i`'s (tag 2) latent vector, drawn when
    /// needed rather than stored, so a table of millions of ids costs the
    /// generator nothing.
    fn latent(&self, tag: u64, i: usize) -> [f64; LATENT] {
        let mut v = [0.0; LATENT];
        for (k, x) in v.iter_mut().enumerate() {
            *x = normal(self.seed, (tag << 40) + i as u64 * 64, k as u64) / (LATENT as f64).sqrt() * 1.6;
        }
        v
    }

    pub fn dense_features(&self) -> usize {
        self.dense
    }

    /// Two sparse fields (user, item), the dense features, the domains and
    /// the two tasks.
    pub fn schema(&self) -> Schema {
        Schema {
            sparse: vec![("user".into(), self.users as i64), ("item".into(), self.items as i64)],
            multi_hot: Vec::new(),
            dense: self.dense as i64,
            domains: self.domains as i64,
            tasks: (0..TASKS).map(|t| format!("task{t}")).collect(),
        }
    }

    /// True task probabilities and features of sample `i`.
    fn sample(&self, i: u64) -> (usize, usize, usize, Vec<f64>, [f64; TASKS], [f32; TASKS]) {
        let s = self.seed;
        let u = (mix(s ^ mix(i.wrapping_mul(3))) % self.users as u64) as usize;
        let v = (mix(s ^ mix(i.wrapping_mul(3) + 1)) % self.items as u64) as usize;
        let d = (mix(s ^ mix(i.wrapping_mul(3) + 2)) % self.domains as u64) as usize;
        let x: Vec<f64> = (0..self.dense).map(|j| normal(s, i, 1000 + j as u64)).collect();
        let item_vec = self.latent(2, v);
        let item: [f64; LATENT] = match &self.domain_view {
            None => item_vec,
            Some(views) => {
                let mut out = [0.0; LATENT];
                for (a, o) in out.iter_mut().enumerate() {
                    *o = views[d][a].iter().zip(&item_vec).map(|(m, x)| m * x).sum();
                }
                out
            }
        };
        let affinity: f64 = self.latent(1, u).iter().zip(&item).map(|(a, b)| a * b).sum();
        let mut p = [0.0; TASKS];
        let mut y = [0.0f32; TASKS];
        let mut shared = 0.0;
        for t in 0..TASKS {
            let lin: f64 = self.dense_w[t].iter().zip(&x).map(|(w, xi)| w * xi).sum();
            let (scale, bias) = self.domain_tb[d][t];
            // Task 1 reuses part of task 0's signal: related but not identical tasks.
            let own = scale * (affinity * (1.5 - t as f64 * 0.5)) + lin + bias;
            let logit = if t == 0 { own } else { 0.5 * shared + own };
            if t == 0 {
                shared = own;
            }
            let draw = uniform(s, i, 5000 + t as u64);
            if self.funnel && t > 0 {
                // A conversion needs the step before it: p_t = p_{t-1} · q.
                let q = sigmoid(logit);
                p[t] = p[t - 1] * q;
                y[t] = if y[t - 1] > 0.5 && draw < q { 1.0 } else { 0.0 };
            } else {
                p[t] = sigmoid(logit);
                y[t] = (draw < p[t]) as u8 as f32;
            }
        }
        (u, v, d, x, p, y)
    }

    /// The domains of training samples `[start, start + n)`, without the rest
    /// of the samples (for losses normalised over a whole step's domains).
    pub fn train_domains(&self, start: u64, n: usize) -> Vec<usize> {
        (start..start + n as u64).map(|i| (mix(self.seed ^ mix(i.wrapping_mul(3) + 2)) % self.domains as u64) as usize).collect()
    }

    /// Samples `[start, start + n)` of the training stream.
    pub fn train_batch(&self, start: u64, n: usize, device: Device) -> Batch {
        self.batch(start, n, device)
    }

    /// Samples `[start, start + n)` of the validation stream (not the eval stream).
    pub fn val_batch(&self, start: u64, n: usize, device: Device) -> Batch {
        self.batch(VAL_BASE + start, n, device)
    }

    /// Samples `[start, start + n)` of the held-out stream.
    pub fn eval_batch(&self, start: u64, n: usize, device: Device) -> Batch {
        self.batch(EVAL_BASE + start, n, device)
    }

    fn batch(&self, start: u64, n: usize, device: Device) -> Batch {
        let mut ids = Vec::with_capacity(2 * n);
        let mut domain = Vec::with_capacity(n);
        let mut dense = Vec::with_capacity(n * self.dense);
        let mut labels = Vec::with_capacity(n * TASKS);
        let mut truth = Vec::with_capacity(n * TASKS);
        for i in 0..n as u64 {
            let (u, v, d, x, p, y) = self.sample(start + i);
            ids.extend([u as i64, v as i64]);
            domain.push(d as i64);
            dense.extend(x.iter().map(|&f| f as f32));
            labels.extend_from_slice(&y);
            truth.extend(p.iter().map(|&f| f as f32));
        }
        let n = n as i64;
        Batch {
            sparse: Tensor::from_slice(&ids).reshape([n, 2]).to_device(device),
            multi_hot: Vec::new(),
            domain: Tensor::from_slice(&domain).to_device(device),
            dense: Tensor::from_slice(&dense).reshape([n, self.dense as i64]).to_device(device),
            labels: Tensor::from_slice(&labels).reshape([n, TASKS as i64]).to_device(device),
            truth: Some(Tensor::from_slice(&truth).reshape([n, TASKS as i64]).to_kind(Kind::Float).to_device(device)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_a_pure_function_of_seed_and_index() {
        let g = Generator::new(7, 100, 50, 3, 4);
        let a = g.train_batch(1000, 16, Device::Cpu);
        let b = g.train_batch(1008, 8, Device::Cpu);
        let domains: Vec<i64> = g.train_domains(1000, 16).into_iter().map(|d| d as i64).collect();
        assert_eq!(Vec::<i64>::try_from(&a.domain).unwrap(), domains, "train_domains agrees with the samples");
        assert!(a.labels.narrow(0, 8, 8).equal(&b.labels));
        assert!(a.dense.narrow(0, 8, 8).equal(&b.dense));
        let other = Generator::new(8, 100, 50, 3, 4).train_batch(1000, 16, Device::Cpu);
        assert!(!a.dense.equal(&other.dense));
    }

    #[test]
    fn labels_follow_the_true_probabilities() {
        let g = Generator::new(1, 500, 300, 3, 8);
        let b = g.train_batch(0, 20000, Device::Cpu);
        let mean_y = b.labels.mean_dim(0, false, Kind::Float);
        let mean_p = b.truth.as_ref().unwrap().mean_dim(0, false, Kind::Float);
        let diff = (mean_y - mean_p).abs().max().double_value(&[]);
        assert!(diff < 0.02, "label rate differs from probability by {diff}");
        let rates = Vec::<f32>::try_from(b.labels.mean_dim(0, false, Kind::Float)).unwrap();
        assert!(rates.iter().all(|&r| r > 0.05 && r < 0.7), "{rates:?}");
    }

    #[test]
    fn a_funnel_converts_only_after_a_click_and_shifted_domains_see_items_differently() {
        let shape = Shape { funnel: true, domain_shift: 0.0 };
        let b = Generator::with_shape(1, 200, 100, 3, 4, shape).train_batch(0, 5000, Device::Cpu);
        let y = Vec::<f32>::try_from(b.labels.reshape([-1])).unwrap();
        let p = Vec::<f32>::try_from(b.truth.as_ref().unwrap().reshape([-1])).unwrap();
        assert!(y.chunks(2).all(|r| r[1] <= r[0]), "no conversion without a click");
        assert!(p.chunks(2).all(|r| r[1] <= r[0] + 1e-6), "p(convert) <= p(click)");
        assert!(y.chunks(2).any(|r| r[1] > 0.5));
        // Same users, items and draws; a shift changes the click probabilities.
        let plain = Generator::new(1, 200, 100, 3, 4).train_batch(0, 500, Device::Cpu);
        let shifted = Generator::with_shape(1, 200, 100, 3, 4, Shape { funnel: false, domain_shift: 1.0 }).train_batch(0, 500, Device::Cpu);
        assert!(plain.sparse.equal(&shifted.sparse) && plain.domain.equal(&shifted.domain));
        let (p0, p1) = (plain.truth.unwrap(), shifted.truth.unwrap());
        assert!((p0 - p1).abs().max().double_value(&[]) > 0.05);
    }
}
