//! Divergences between embeddings: the fixed squared-Euclidean and cosine
//! baselines, and the learned Bregman divergence
//! D_φ(x, y) = φ(x) − φ(y) − ⟨∇φ(y), x − y⟩ of an input-convex network φ.
//!
//! Convention everywhere: the first argument is the sample or query, the
//! second the reference (anchor, proxy, searched item). A Bregman divergence
//! is not symmetric; fixing the order keeps training and retrieval the same
//! measure, and puts ∇φ on the references, computed once per reference.

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

/// Which divergence a job learns with.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DivergenceKind {
    /// Learned: D_φ of an input-convex network.
    #[default]
    Bregman,
    /// ‖x − y‖², the Bregman divergence of ‖x‖².
    SqEuclidean,
    /// 1 − cos(x, y).
    Cosine,
}

/// The settings of φ.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PhiConfig {
    /// Widths of the convex hidden layers.
    #[serde(default = "phi_hidden")]
    pub hidden: Vec<usize>,
    /// Weight of the ε‖x‖² term that makes φ strictly convex (D_φ = 0 only
    /// at x = y). With ε = 1, D_φ = ‖x − y‖² + the network's own divergence,
    /// so the learned divergence starts from the squared-Euclidean one.
    #[serde(default = "one")]
    pub epsilon: f64,
}

fn phi_hidden() -> Vec<usize> {
    vec![64, 64]
}

fn one() -> f64 {
    1.0
}

impl Default for PhiConfig {
    fn default() -> Self {
        PhiConfig { hidden: phi_hidden(), epsilon: 1.0 }
    }
}

impl PhiConfig {
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.hidden.is_empty() || self.hidden.contains(&0) {
            return Err(("hidden", "give one or more layer widths, each >= 1".into()));
        }
        if !(self.epsilon > 0.0 && self.epsilon.is_finite()) {
            return Err(("epsilon", format!("{} must be > 0: without it φ is only convex, and D_φ can be 0 between different points", self.epsilon)));
        }
        Ok(())
    }
}

/// An input-convex network (Amos et al., 2017):
/// z₁ = softplus(A₀x + b₀), z_{k+1} = softplus(W_k⁺ z_k + A_k x + b_k),
/// φ(x) = w⁺·z_L + ε‖x‖², where W⁺ = softplus(W)/fan-in ≥ 0.
/// Non-negative weights on the hidden path and a convex non-decreasing
/// activation keep every z convex in x; the ε term makes φ strictly convex.
pub struct Icnn {
    inputs: Vec<nn::Linear>,
    hidden: Vec<Tensor>,
    out: Tensor,
    epsilon: f64,
}

/// Non-negative through a smooth reparametrisation (a clamp would stop the
/// gradient of every weight it clips), divided by the fan-in so activations
/// keep their scale with depth.
fn positive(w: &Tensor) -> Tensor {
    let fan_in = *w.size().last().unwrap_or(&1) as f64;
    w.softplus() / fan_in
}

impl Icnn {
    pub fn new(p: &nn::Path, dim: usize, cfg: &PhiConfig) -> Icnn {
        let mut inputs = Vec::new();
        let mut hidden = Vec::new();
        for (k, &h) in cfg.hidden.iter().enumerate() {
            inputs.push(nn::linear(p / format!("a{k}"), dim as i64, h as i64, Default::default()));
            if k > 0 {
                hidden.push(p.randn(&format!("w{k}"), &[h as i64, cfg.hidden[k - 1] as i64], 0.0, 1.0));
            }
        }
        let last = *cfg.hidden.last().unwrap_or(&1) as i64;
        let out = p.randn("out", &[1, last], 0.0, 1.0);
        Icnn { inputs, hidden, out, epsilon: cfg.epsilon }
    }

    /// φ of each row: `[n, d]` → `[n]`.
    pub fn phi(&self, x: &Tensor) -> Tensor {
        let mut z = x.apply(&self.inputs[0]).softplus();
        for (a, w) in self.inputs[1..].iter().zip(&self.hidden) {
            z = (z.matmul(&positive(w).tr()) + x.apply(a)).softplus();
        }
        z.matmul(&positive(&self.out).tr()).squeeze_dim(1) + x.square().sum_dim_intlist(1i64, false, Kind::Float) * self.epsilon
    }

    /// φ(y) and ∇φ(y) for each row, by autograd. With `create_graph` the
    /// gradient is itself differentiable (double backward), so a loss on
    /// D_φ trains φ through ∇φ and the embeddings through both.
    pub fn phi_and_grad(&self, y: &Tensor, create_graph: bool) -> Result<(Tensor, Tensor), tch::TchError> {
        tch::with_grad(|| {
            // A reference that carries no graph (evaluation) becomes a leaf to differentiate at.
            let y = if y.requires_grad() { y.shallow_clone() } else { y.detach().set_requires_grad(true) };
            let phi = self.phi(&y);
            let g = Tensor::f_run_backward(&[phi.sum(Kind::Float)], &[&y], true, create_graph)?.remove(0);
            Ok((phi, g))
        })
    }
}

/// A divergence with what it needs to be computed.
pub enum Divergence {
    SqEuclidean,
    Cosine,
    Bregman(Icnn),
}

impl Divergence {
    pub fn new(kind: DivergenceKind, p: &nn::Path, dim: usize, phi: &PhiConfig) -> Divergence {
        match kind {
            DivergenceKind::SqEuclidean => Divergence::SqEuclidean,
            DivergenceKind::Cosine => Divergence::Cosine,
            DivergenceKind::Bregman => Divergence::Bregman(Icnn::new(&(p / "phi"), dim, phi)),
        }
    }

    /// D(x_i, y_j) for every pair: `[n, d]`, `[m, d]` → `[n, m]`.
    /// `train`: keep the graph through ∇φ (double backward).
    pub fn pairwise(&self, x: &Tensor, y: &Tensor, train: bool) -> Result<Tensor, tch::TchError> {
        Ok(match self {
            Divergence::SqEuclidean => {
                let xx = x.square().sum_dim_intlist(1i64, true, Kind::Float);
                let yy = y.square().sum_dim_intlist(1i64, true, Kind::Float).tr();
                (xx + yy - x.matmul(&y.tr()) * 2.0).clamp_min(0.0)
            }
            Divergence::Cosine => {
                let (xn, yn) = (unit(x), unit(y));
                xn.matmul(&yn.tr()).neg() + 1.0
            }
            Divergence::Bregman(icnn) => {
                let phi_x = icnn.phi(x);
                let (phi_y, g) = icnn.phi_and_grad(y, train)?;
                // φ(x_i) − [φ(y_j) − ⟨g_j, y_j⟩] − ⟨g_j, x_i⟩
                let offset = phi_y - (&g * y).sum_dim_intlist(1i64, false, Kind::Float);
                phi_x.unsqueeze(1) - offset.unsqueeze(0) - x.matmul(&g.tr())
            }
        })
    }

    pub fn icnn(&self) -> Option<&Icnn> {
        match self {
            Divergence::Bregman(i) => Some(i),
            _ => None,
        }
    }
}

/// Rows scaled to unit length (zero rows stay zero).
pub fn unit(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2.0, [1i64].as_slice(), true).clamp_min(1e-12)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tch::Device;

    /// A φ with weights drawn at scale `scale` from `seed`: larger scales
    /// give strongly curved, far-from-quadratic φ.
    fn icnn(seed: u64, dim: usize, scale: f64, epsilon: f64) -> (nn::VarStore, Divergence) {
        tch::manual_seed(seed as i64);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = PhiConfig { hidden: vec![16, 16, 8], epsilon };
        let d = Divergence::new(DivergenceKind::Bregman, &vs.root(), dim, &cfg);
        tch::no_grad(|| {
            for (_, mut v) in vs.variables() {
                let r = v.randn_like() * scale;
                v.copy_(&r);
            }
        });
        (vs, d)
    }

    fn rows(seed: u64, n: i64, dim: i64, scale: f64) -> Tensor {
        tch::manual_seed(seed as i64 + 1_000_003);
        Tensor::randn([n, dim], (Kind::Double, Device::Cpu)).to_kind(Kind::Float) * scale
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// φ is convex along any segment, and D_φ ≥ 0 with D_φ(x, x) = 0 —
        /// for random networks and random points, far from the origin too.
        #[test]
        fn phi_is_convex_and_d_phi_is_non_negative(seed in 0u64..10_000, scale in 0.1f64..3.0, spread in 0.1f64..20.0, t in 0.0f64..1.0) {
            let (_vs, d) = icnn(seed, 5, scale, 1e-3);
            let phi = d.icnn().unwrap();
            let (x, y) = (rows(seed, 32, 5, spread), rows(seed + 7, 32, 5, spread));
            let mid = &x * t + &y * (1.0 - t);
            let gap = phi.phi(&x) * t + phi.phi(&y) * (1.0 - t) - phi.phi(&mid);
            let tol = 1e-5 * (1.0 + phi.phi(&x).abs().max().double_value(&[]));
            prop_assert!(gap.min().double_value(&[]) >= -tol, "convexity gap {}", gap.min().double_value(&[]));
            let dxy = d.pairwise(&x, &y, false).unwrap();
            prop_assert!(dxy.min().double_value(&[]) >= -tol, "D_φ = {}", dxy.min().double_value(&[]));
            let dxx = d.pairwise(&x, &x, false).unwrap().diagonal(0, 0, 1);
            prop_assert!(dxx.abs().max().double_value(&[]) <= tol, "D_φ(x, x) = {}", dxx.abs().max().double_value(&[]));
            // The pairwise form agrees with the definition φ(x) − φ(y) − ⟨∇φ(y), x − y⟩ row by row.
            let (phi_y, g) = phi.phi_and_grad(&y, false).unwrap();
            let diag = phi.phi(&x) - phi_y - (g * (&x - &y)).sum_dim_intlist(1i64, false, Kind::Float);
            prop_assert!((dxy.diagonal(0, 0, 1) - diag).abs().max().double_value(&[]) <= tol);
        }

        /// ∇φ from autograd matches central finite differences.
        #[test]
        fn the_autograd_gradient_matches_finite_differences(seed in 0u64..10_000) {
            let (_vs, d) = icnn(seed, 4, 1.0, 0.5);
            let phi = d.icnn().unwrap();
            let y = rows(seed, 3, 4, 1.5).to_kind(Kind::Double);
            let (_, g) = phi.phi_and_grad(&y.to_kind(Kind::Float), false).unwrap();
            for k in 0..4 {
                let h = 1e-3;
                let e = Tensor::zeros([3, 4], (Kind::Double, Device::Cpu)).index_fill(1, &Tensor::from_slice(&[k]), h);
                let fd = (phi.phi(&(&y + &e).to_kind(Kind::Float)).to_kind(Kind::Double) - phi.phi(&(&y - &e).to_kind(Kind::Float)).to_kind(Kind::Double)) / (2.0 * h);
                let err = (fd - g.select(1, k).to_kind(Kind::Double)).abs().max().double_value(&[]);
                prop_assert!(err < 2e-2, "coordinate {k}: {err}");
            }
        }
    }

    #[test]
    fn the_fixed_divergences_and_a_quadratic_phi() {
        let x = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 2.0]).view([2, 2]);
        let y = Tensor::from_slice(&[0.0f32, 1.0]).view([1, 2]);
        let sq = Divergence::SqEuclidean.pairwise(&x, &y, false).unwrap();
        assert_eq!(Vec::<f32>::try_from(sq.reshape([-1])).unwrap(), [2.0, 1.0]);
        let cos = Divergence::Cosine.pairwise(&x, &y, false).unwrap();
        assert_eq!(Vec::<f32>::try_from(cos.reshape([-1])).unwrap(), [1.0, 0.0]);
        // With the network's output weights driven to zero, φ = ε‖x‖² and D_φ = ε‖x − y‖².
        let (vs, d) = icnn(3, 2, 1.0, 0.5);
        let _ = tch::no_grad(|| vs.variables()["phi.out"].shallow_clone().fill_(-60.0));
        let b = d.pairwise(&x, &y, false).unwrap();
        assert!((b - sq * 0.5).abs().max().double_value(&[]) < 1e-5);
    }

    #[test]
    fn a_loss_on_d_phi_trains_phi_through_its_gradient() {
        // D_φ(x, y) depends on φ's weights only through φ and ∇φ; the
        // gradient reaching the hidden-path weights proves double backward.
        let (vs, d) = icnn(5, 3, 1.0, 0.1);
        let x = rows(1, 8, 3, 1.0).set_requires_grad(true);
        let y = rows(2, 8, 3, 1.0).set_requires_grad(true);
        d.pairwise(&x, &y, true).unwrap().sum(Kind::Float).backward();
        for (name, v) in vs.variables() {
            assert!(v.grad().defined() && v.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0, "{name} got no gradient");
        }
        assert!(y.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }
}
