//! KINDLE's teacher and student as one tch model with two switches, following
//! the TRIGON blueprint (`../shared/reference/kindle.md` §1.2–1.3):
//!
//! x `[B, T, M]` (T pseudotime-ordered cells, M genes) → a per-gene scalar
//! embedding `[B, T, M, D]` and LayerNorm → `layers` blocks of
//! - (teacher only) **temporal attention** over the T cells of each gene, with
//!   a causal mask (a step sees itself and earlier steps), then
//! - **gene-to-gene attention** over the M genes at each step, restricted by
//!   the prior (teacher: a hard mask allowing only prior pairs and each gene
//!   itself, or TRIGON's soft mask scaling scores by 0.9 on prior pairs and
//!   0.1 elsewhere; student: no mask),
//!
//! each with residual, LayerNorm, GELU MLP, residual, LayerNorm → a learned
//! projection D → 1 (TRIGON averages over D instead, but after a LayerNorm
//! that average starts at exactly zero, so nothing reaches the output at
//! initialisation) → a linear map over time T → W → predictions `[B, W, M]`.
//!
//! The last block's gene attention, averaged over heads and steps, is the
//! model's network: row = target (query), column = regulator (key), so the
//! edge regulator → target scores A[target, regulator].

use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// How the prior restricts gene-to-gene attention.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PriorMask {
    /// All pairs (the student).
    None,
    /// Only prior pairs (and each gene with itself, so no row is empty).
    Hard,
    /// Scores scaled by `inside` on prior pairs and `outside` elsewhere (TRIGON's code).
    Soft { inside: f64, outside: f64 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub genes: i64,
    /// Input cells per window (T).
    pub window: i64,
    /// Predicted cells (W).
    pub horizon: i64,
    pub d_model: i64,
    pub d_ff: i64,
    pub heads: i64,
    pub layers: i64,
    /// Temporal attention (the teacher has it, the student not).
    pub temporal: bool,
    pub mask: PriorMask,
    /// A learned vector per gene added to its value embedding, so attention
    /// can depend on which gene is which, not only on the values (TRIGON has
    /// none; without it gene attention is a function of expression values alone).
    pub gene_identity: bool,
    /// A learned "hidden value" embedding, for training with genes masked
    /// out of the input (see `kindle.*`'s `input_mask`).
    pub masking: bool,
    /// Read only each input's sign (above, at or below the gene's mean once
    /// z-scored): a binarised view of expression that dropout and count noise
    /// disturb less.
    pub binarize: bool,
}

struct Attention {
    q: nn::Linear,
    k: nn::Linear,
    v: nn::Linear,
    o: nn::Linear,
    heads: i64,
}

impl Attention {
    fn new(p: nn::Path, d: i64, heads: i64) -> Attention {
        let lin = |name: &str| nn::linear(&p / name, d, d, Default::default());
        Attention { q: lin("q"), k: lin("k"), v: lin("v"), o: lin("o"), heads }
    }

    /// Self-attention over the middle axis of x `[N, L, D]`; `bias` is added to
    /// the scores `[.., L, L]` (or `scale` multiplies them). Returns the output
    /// and the attention probabilities `[N, heads, L, L]`.
    fn forward(&self, x: &Tensor, bias: Option<&Tensor>, scale: Option<&Tensor>) -> (Tensor, Tensor) {
        let (n, l, d) = (x.size()[0], x.size()[1], x.size()[2]);
        let hd = d / self.heads;
        let split = |t: Tensor| t.view([n, l, self.heads, hd]).transpose(1, 2);
        let (q, k, v) = (split(self.q.forward(x)), split(self.k.forward(x)), split(self.v.forward(x)));
        let mut scores = q.matmul(&k.transpose(2, 3)) / (hd as f64).sqrt();
        if let Some(s) = scale {
            scores *= s;
        }
        if let Some(b) = bias {
            scores += b;
        }
        let probs = scores.softmax(-1, Kind::Float);
        let out = probs.matmul(&v).transpose(1, 2).reshape([n, l, d]);
        (self.o.forward(&out), probs)
    }
}

/// Attention, then a GELU MLP, each with a residual and LayerNorm (post-norm,
/// as TRIGON).
struct Sublayer {
    attn: Attention,
    norm1: nn::LayerNorm,
    ff1: nn::Linear,
    ff2: nn::Linear,
    norm2: nn::LayerNorm,
}

impl Sublayer {
    fn new(p: nn::Path, d: i64, d_ff: i64, heads: i64) -> Sublayer {
        Sublayer {
            attn: Attention::new(&p / "attn", d, heads),
            norm1: nn::layer_norm(&p / "norm1", vec![d], Default::default()),
            ff1: nn::linear(&p / "ff1", d, d_ff, Default::default()),
            ff2: nn::linear(&p / "ff2", d_ff, d, Default::default()),
            norm2: nn::layer_norm(&p / "norm2", vec![d], Default::default()),
        }
    }

    fn forward(&self, x: &Tensor, bias: Option<&Tensor>, scale: Option<&Tensor>) -> (Tensor, Tensor) {
        let (a, probs) = self.attn.forward(x, bias, scale);
        let x = self.norm1.forward(&(x + a));
        let f = self.ff2.forward(&self.ff1.forward(&x).gelu("none"));
        (self.norm2.forward(&(&x + f)), probs)
    }
}

struct Block {
    time: Option<Sublayer>,
    space: Sublayer,
}

pub struct Model {
    pub cfg: ModelConfig,
    pub vs: nn::VarStore,
    embed_w: Tensor,
    embed_b: Tensor,
    gene_embed: Option<Tensor>,
    mask_embed: Option<Tensor>,
    in_norm: nn::LayerNorm,
    blocks: Vec<Block>,
    out: nn::Linear,
    head: nn::Linear,
    /// Additive (hard) or multiplicative (soft) gene-attention mask `[M, M]`.
    space_bias: Option<Tensor>,
    space_scale: Option<Tensor>,
}

impl Model {
    /// A fresh model; `prior[target][regulator]` (M × M) is required by the
    /// hard and soft masks. Weights come from torch's generator (seed it first).
    pub fn new(cfg: ModelConfig, prior: Option<&[Vec<bool>]>, device: Device) -> Result<Model, String> {
        if cfg.d_model % cfg.heads != 0 {
            return Err(format!("d_model ({}) must be a multiple of heads ({})", cfg.d_model, cfg.heads));
        }
        if cfg.genes < 2 || cfg.window < 1 || cfg.horizon < 1 || cfg.layers < 1 {
            return Err("genes >= 2, window >= 1, horizon >= 1 and layers >= 1 are needed".into());
        }
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let d = cfg.d_model;
        let embed_w = root.var("embed_w", &[d], nn::Init::Randn { mean: 0.0, stdev: 1.0 });
        // A random bias as torch's Linear(1, d) has: with a zero bias the
        // LayerNorm after it would map x·w to sign(x)·w/‖w‖, losing the value.
        let embed_b = root.var("embed_b", &[d], nn::Init::Uniform { lo: -1.0, up: 1.0 });
        let mask_embed = cfg.masking.then(|| root.var("mask_embed", &[d], nn::Init::Randn { mean: 0.0, stdev: 1.0 }));
        let gene_embed = cfg.gene_identity.then(|| root.var("gene_embed", &[cfg.genes, d], nn::Init::Randn { mean: 0.0, stdev: 1.0 }));
        let in_norm = nn::layer_norm(&root / "in_norm", vec![d], Default::default());
        let blocks = (0..cfg.layers)
            .map(|i| {
                let p = &root / "blocks" / i;
                Block {
                    time: cfg.temporal.then(|| Sublayer::new(&p / "time", d, cfg.d_ff, cfg.heads)),
                    space: Sublayer::new(&p / "space", d, cfg.d_ff, cfg.heads),
                }
            })
            .collect();
        let out = nn::linear(&root / "out", d, 1, Default::default());
        let head = nn::linear(&root / "head", cfg.window, cfg.horizon, Default::default());
        let m = cfg.genes as usize;
        let prior_tensor = || -> Result<Tensor, String> {
            let p = prior.ok_or("a prior mask needs a prior network")?;
            if p.len() != m || p.iter().any(|r| r.len() != m) {
                return Err(format!("the prior mask must be {m} × {m}"));
            }
            let flat: Vec<bool> = p.iter().flatten().copied().collect();
            Ok(Tensor::from_slice(&flat).view([cfg.genes, cfg.genes]).to_device(device))
        };
        let (space_bias, space_scale) = match cfg.mask {
            PriorMask::None => (None, None),
            PriorMask::Hard => {
                let allowed = prior_tensor()?.logical_or(&Tensor::eye(cfg.genes, (Kind::Bool, device)));
                let bias = Tensor::zeros([cfg.genes, cfg.genes], (Kind::Float, device)).masked_fill(&allowed.logical_not(), f64::NEG_INFINITY);
                (Some(bias), None)
            }
            PriorMask::Soft { inside, outside } => {
                let p = prior_tensor()?.to_kind(Kind::Float);
                (None, Some(&p * inside + (1.0 - &p) * outside))
            }
        };
        Ok(Model { cfg, vs, embed_w, embed_b, gene_embed, mask_embed, in_norm, blocks, out, head, space_bias, space_scale })
    }

    /// Per-cell, per-gene hidden states `[B, T, M, D]` for x `[B, T, M]`, and
    /// the last block's gene attention averaged over heads and steps
    /// `[B, M, M]` (target × regulator). Step s depends on steps ≤ s only.
    pub fn encode(&self, x: &Tensor) -> (Tensor, Tensor) {
        self.encode_masked(x, None)
    }

    /// [`Model::encode`] with the genes where `hidden` `[B, M]` is true masked
    /// out: their values replaced by the learned mask embedding at every step.
    pub fn encode_masked(&self, x: &Tensor, hidden: Option<&Tensor>) -> (Tensor, Tensor) {
        let (b, t, m) = (x.size()[0], x.size()[1], x.size()[2]);
        let d = self.cfg.d_model;
        let dev = x.device();
        let x = if self.cfg.binarize { x.sign() } else { x.shallow_clone() };
        let mut e = x.unsqueeze(-1) * &self.embed_w + &self.embed_b;
        if let (Some(h), Some(me)) = (hidden, &self.mask_embed) {
            e = e.where_self(&h.view([b, 1, m, 1]).logical_not(), &me.view([1, 1, 1, d]).expand_as(&e));
        }
        if let Some(g) = &self.gene_embed {
            e += g;
        }
        let mut h = self.in_norm.forward(&e);
        let future = Tensor::ones([t, t], (Kind::Float, dev)).triu(1).gt(0.5);
        let causal = Tensor::zeros([t, t], (Kind::Float, dev)).masked_fill(&future, f64::NEG_INFINITY);
        let mut attention = Tensor::zeros([b, m, m], (Kind::Float, dev));
        for block in &self.blocks {
            if let Some(time) = &block.time {
                let seq = h.permute([0, 2, 1, 3]).reshape([b * m, t, d]);
                let (out, _) = time.forward(&seq, Some(&causal), None);
                h = out.view([b, m, t, d]).permute([0, 2, 1, 3]);
            }
            let genes = h.reshape([b * t, m, d]);
            let (out, probs) = block.space.forward(&genes, self.space_bias.as_ref(), self.space_scale.as_ref());
            h = out.view([b, t, m, d]);
            attention = probs.view([b, t, self.cfg.heads, m, m]).mean_dim(&[1i64, 2][..], false, Kind::Float);
        }
        (h, attention)
    }

    /// Predictions `[B, W, M]` for x `[B, T, M]`, and the gene attention of
    /// [`Model::encode`].
    pub fn forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        self.forward_masked(x, None)
    }

    /// [`Model::forward`] with genes masked out of the input ([`Model::encode_masked`]).
    pub fn forward_masked(&self, x: &Tensor, hidden: Option<&Tensor>) -> (Tensor, Tensor) {
        let (h, attention) = self.encode_masked(x, hidden);
        let series = self.out.forward(&h).squeeze_dim(-1).permute([0, 2, 1]); // [B, M, T]
        let pred = self.head.forward(&series).permute([0, 2, 1]); // [B, W, M]
        (pred, attention)
    }

    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        kiln_worker::sorted_variables(&self.vs)
    }
}

/// MSE on the entries whose target is non-zero (dropout zeros carry no signal).
pub fn masked_mse(pred: &Tensor, target: &Tensor) -> Tensor {
    let mask = target.ne(0.0).to_kind(Kind::Float);
    ((pred - target).square() * &mask).sum(Kind::Float) / mask.sum(Kind::Float).clamp_min(1.0)
}

/// The four distillation losses between student and teacher predictions `[B, W, M]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Distill {
    /// Mean squared difference of the predictions.
    Hard,
    /// KL(softmax(teacher/τ) ‖ softmax(student/τ)) over genes, × τ².
    Soft { tau: f64 },
    /// Mean squared difference of the batch's inner-product similarity matrices
    /// of unit-normalised flattened predictions.
    Bilinear,
    /// Mean squared difference of the batch's Gaussian RBF similarity matrices,
    /// exp(−‖a − b‖² / (2 λ² n)), n the flattened size (so λ does not depend on W·M).
    Rbf { lambda: f64 },
}

fn flat(x: &Tensor) -> Tensor {
    x.reshape([x.size()[0], -1])
}

pub fn distill_loss(student: &Tensor, teacher: &Tensor, kind: Distill) -> Tensor {
    let teacher = teacher.detach();
    match kind {
        Distill::Hard => (student - &teacher).square().mean(Kind::Float),
        Distill::Soft { tau } => {
            let p = (&teacher / tau).softmax(-1, Kind::Float);
            let log_q = (student / tau).log_softmax(-1, Kind::Float);
            let kl = (&p * (p.clamp_min(1e-12).log() - log_q)).sum_dim_intlist(-1, false, Kind::Float);
            kl.mean(Kind::Float) * (tau * tau)
        }
        Distill::Bilinear => {
            let unit = |x: &Tensor| {
                let f = flat(x);
                let n = f.norm_scalaropt_dim(2.0, [1i64], true).clamp_min(1e-12);
                f / n
            };
            let (s, t) = (unit(student), unit(&teacher));
            (s.matmul(&s.tr()) - t.matmul(&t.tr())).square().mean(Kind::Float)
        }
        Distill::Rbf { lambda } => {
            let kernel = |x: &Tensor| {
                let f = flat(x);
                let n = f.size()[1] as f64;
                let d2 = (f.unsqueeze(1) - f.unsqueeze(0)).square().sum_dim_intlist(-1, false, Kind::Float);
                (-d2 / (2.0 * lambda * lambda * n)).exp()
            };
            (kernel(student) - kernel(&teacher)).square().mean(Kind::Float)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(temporal: bool, mask: PriorMask) -> ModelConfig {
        ModelConfig { genes: 5, window: 4, horizon: 2, d_model: 8, d_ff: 16, heads: 2, layers: 2, temporal, mask, gene_identity: true, masking: true, binarize: false }
    }

    fn prior() -> Vec<Vec<bool>> {
        // Regulator 0 → targets 1 and 2; regulator 3 → target 4.
        let mut p = vec![vec![false; 5]; 5];
        p[1][0] = true;
        p[2][0] = true;
        p[4][3] = true;
        p
    }

    #[test]
    fn shapes_and_the_hard_mask_confine_attention_to_prior_pairs() {
        tch::manual_seed(0);
        let m = Model::new(cfg(true, PriorMask::Hard), Some(&prior()), Device::Cpu).unwrap();
        let x = Tensor::randn([3, 4, 5], (Kind::Float, Device::Cpu));
        let (pred, attn) = m.forward(&x);
        assert_eq!(pred.size(), vec![3, 2, 5]);
        assert_eq!(attn.size(), vec![3, 5, 5]);
        let a = Vec::<f32>::try_from(attn.get(0).reshape([-1])).unwrap();
        let p = prior();
        for target in 0..5 {
            let row: f32 = a[target * 5..(target + 1) * 5].iter().sum();
            assert!((row - 1.0).abs() < 1e-5, "rows are distributions");
            for reg in 0..5 {
                if !p[target][reg] && target != reg {
                    assert_eq!(a[target * 5 + reg], 0.0, "no attention outside the prior ({target}, {reg})");
                }
            }
        }
        assert!(a[5] > 0.0, "target 1 attends to its regulator 0");
    }

    #[test]
    fn temporal_attention_is_causal_and_the_student_attends_everywhere() {
        tch::manual_seed(1);
        let m = Model::new(cfg(true, PriorMask::Soft { inside: 0.9, outside: 0.1 }), Some(&prior()), Device::Cpu).unwrap();
        let x = Tensor::randn([1, 4, 5], (Kind::Float, Device::Cpu));
        // Perturbing the last cell leaves the hidden states of earlier cells as
        // they were, and changes the prediction.
        let y = x.copy();
        let _ = y.get(0).get(3).fill_(5.0);
        let ((h1, _), (h2, _)) = (m.encode(&x), m.encode(&y));
        let early = |h: &Tensor| h.narrow(1, 0, 3);
        assert!((early(&h1) - early(&h2)).abs().max().double_value(&[]) < 1e-6, "steps 0..3 must not see step 3");
        assert!((m.forward(&x).0 - m.forward(&y).0).abs().max().double_value(&[]) > 1e-6);
        let student = Model::new(cfg(false, PriorMask::None), None, Device::Cpu).unwrap();
        let (_, attn) = student.forward(&x);
        assert!(attn.gt(0.0).all().int64_value(&[]) == 1, "no mask: every pair gets weight");
        assert!(student.named_parameters().iter().all(|(n, _)| !n.contains("time")), "the student has no temporal layer");
        assert!(Model::new(cfg(true, PriorMask::Hard), None, Device::Cpu).is_err(), "a mask needs a prior");
    }

    #[test]
    fn the_masked_mse_ignores_zero_targets_and_the_distillation_losses_vanish_on_agreement() {
        let pred = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([1, 2, 2]);
        let target = Tensor::from_slice(&[0.0f32, 2.0, 1.0, 0.0]).view([1, 2, 2]);
        // Only entries 1 (error 0) and 2 (error 2) count: (0 + 4) / 2.
        assert!((masked_mse(&pred, &target).double_value(&[]) - 2.0).abs() < 1e-6);
        let s = Tensor::randn([4, 2, 5], (Kind::Float, Device::Cpu));
        for kind in [Distill::Hard, Distill::Soft { tau: 2.0 }, Distill::Bilinear, Distill::Rbf { lambda: 1.0 }] {
            let same = distill_loss(&s, &s, kind).double_value(&[]);
            assert!(same.abs() < 1e-6, "{kind:?}: {same}");
            let other = distill_loss(&s, &(&s * 2.0 + 1.0), kind).double_value(&[]);
            assert!(other > 1e-4, "{kind:?} sees a difference: {other}");
        }
        // Hard is a plain MSE: a constant offset of 1 costs 1.
        assert!((distill_loss(&s, &(&s + 1.0), Distill::Hard).double_value(&[]) - 1.0).abs() < 1e-5);
    }
}
