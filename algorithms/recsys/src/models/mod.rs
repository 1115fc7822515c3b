//! Multi-task (MTL) and multi-domain multi-task (MDMT) CTR models over the
//! same input layer, each in its own module:
//!
//! - [`shared`]: Shared-Bottom (Caruana, 1997), MMoE (Ma et al., KDD 2018) and
//!   PLE (Tang et al., RecSys 2020) — experts shared across tasks.
//! - [`cascade`]: ESMM (Ma et al., SIGIR 2018) and AITM (Xi et al., KDD 2021) —
//!   tasks in a funnel (click, then conversion).
//! - [`domain`]: STAR (Sheng et al., CIKM 2021) and M3oE (Zhang et al., SIGIR
//!   2024) — parameters per domain as well as per task.
//!
//! Every model maps a [`Batch`] to logits `[n, TASKS]`, a sample's prediction
//! for task t coming from its own domain's parameters where the model has them,
//! plus an optional auxiliary loss (AITM's calibrator).

pub mod cascade;
pub mod domain;
pub mod shared;

use crate::data::{Batch, TASKS};
use tch::nn::{self, Module};
use tch::Tensor;

/// Which architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    SharedBottom,
    Mmoe,
    Ple,
    Esmm,
    Aitm,
    Star,
    M3oe,
}

/// Sizes of a model.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    pub users: i64,
    pub items: i64,
    pub domains: i64,
    pub dense: i64,
    pub embedding: i64,
    pub hidden: i64,
    pub tower_hidden: i64,
    /// Shared experts (MMoE, PLE, M3oE).
    pub experts: i64,
    /// PLE: experts per task per level.
    pub task_experts: i64,
    /// PLE: extraction levels.
    pub levels: i64,
}

/// An MLP: Linear (+ LayerNorm) + ReLU per layer, widths `dims[0] → … → dims[k]`.
pub(crate) fn mlp(p: &nn::Path, dims: &[i64], norm: bool) -> nn::Sequential {
    let mut s = nn::seq();
    for (i, w) in dims.windows(2).enumerate() {
        s = s.add(nn::linear(p / format!("l{}", i + 1), w[0], w[1], Default::default()));
        if norm {
            s = s.add(nn::layer_norm(p / format!("n{}", i + 1), vec![w[1]], Default::default()));
        }
        s = s.add_fn(|x| x.relu());
    }
    s
}

/// A task tower: Linear → ReLU → Linear to one logit.
pub(crate) fn tower(p: &nn::Path, input: i64, hidden: i64) -> nn::Sequential {
    nn::seq()
        .add(nn::linear(p / "l1", input, hidden, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(p / "out", hidden, 1, Default::default()))
}

/// Softmax-gated mixture: `experts` `[n, E, H]`, gate logits `[n, E]` → `[n, H]`.
pub(crate) fn mix(experts: &Tensor, gate_logits: &Tensor) -> Tensor {
    let w = gate_logits.softmax(-1, tch::Kind::Float).unsqueeze(-1);
    (experts * w).sum_dim_intlist([1i64].as_slice(), false, tch::Kind::Float)
}

/// Embeddings of user, item and domain, the user × item product and the dense
/// features, concatenated.
pub struct InputLayer {
    user: nn::Embedding,
    item: nn::Embedding,
    domain: nn::Embedding,
    pub width: i64,
}

impl InputLayer {
    pub fn new(root: &nn::Path, d: &Dims) -> InputLayer {
        // Small initial embeddings, as usual for CTR models: with N(0, 1) the random
        // user*item products drown the signal and the factorisation is learnt slowly.
        let emb = nn::EmbeddingConfig { ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.05 }, ..Default::default() };
        InputLayer {
            user: nn::embedding(root / "user_emb", d.users, d.embedding, emb),
            item: nn::embedding(root / "item_emb", d.items, d.embedding, emb),
            domain: nn::embedding(root / "domain_emb", d.domains, 4, emb),
            // [user, item, user*item, domain, dense]: the element-wise product gives
            // the layers above the user-item affinity directly, as factorisation-
            // machine style CTR models do, instead of making an MLP learn a dot product.
            width: 3 * d.embedding + 4 + d.dense,
        }
    }

    pub fn forward(&self, b: &Batch) -> Tensor {
        let (u, v) = (self.user.forward(&b.user), self.item.forward(&b.item));
        let uv = &u * &v;
        Tensor::cat(&[u, v, uv, self.domain.forward(&b.domain), b.dense.shallow_clone()], 1)
    }
}

/// What a model adds to the loss besides its tasks' cross-entropy.
pub struct Output {
    /// `[n, TASKS]`.
    pub logits: Tensor,
    /// AITM's calibrator, already weighted.
    pub aux_loss: Option<Tensor>,
}

enum Body {
    SharedBottom(shared::SharedBottom),
    Mmoe(shared::Mmoe),
    Ple(shared::Ple),
    Esmm(cascade::Esmm),
    Aitm(cascade::Aitm),
    Star(domain::Star),
    M3oe(domain::M3oe),
}

pub struct MultiTaskModel {
    input: InputLayer,
    body: Body,
}

impl MultiTaskModel {
    /// `calibration`: AITM's calibrator weight (ignored by the others).
    pub fn new(root: &nn::Path, arch: Arch, d: Dims, calibration: f64) -> Self {
        let input = InputLayer::new(root, &d);
        let w = input.width;
        let body = match arch {
            Arch::SharedBottom => Body::SharedBottom(shared::SharedBottom::new(root, w, &d)),
            Arch::Mmoe => Body::Mmoe(shared::Mmoe::new(root, w, &d)),
            Arch::Ple => Body::Ple(shared::Ple::new(root, w, &d)),
            Arch::Esmm => Body::Esmm(cascade::Esmm::new(root, w, &d)),
            Arch::Aitm => Body::Aitm(cascade::Aitm::new(root, w, &d, calibration)),
            Arch::Star => Body::Star(domain::Star::new(root, w, &d)),
            Arch::M3oe => Body::M3oe(domain::M3oe::new(root, w, &d)),
        };
        MultiTaskModel { input, body }
    }

    pub fn forward(&self, b: &Batch) -> Output {
        let x = self.input.forward(b);
        let plain = |logits: Tensor| Output { logits, aux_loss: None };
        match &self.body {
            Body::SharedBottom(m) => plain(m.forward(&x)),
            Body::Mmoe(m) => plain(m.forward(&x)),
            Body::Ple(m) => plain(m.forward(&x)),
            Body::Esmm(m) => plain(m.forward(&x)),
            Body::Aitm(m) => m.forward(&x),
            Body::Star(m) => plain(m.forward(&x, &b.domain)),
            Body::M3oe(m) => plain(m.forward(&x, &b.domain)),
        }
    }

    /// M3oE's structure scalars (others have none).
    pub fn structure(&self) -> Option<&domain::Structure> {
        match &self.body {
            Body::M3oe(m) => Some(&m.structure),
            _ => None,
        }
    }
}

/// Per-task logits from per-task features.
pub(crate) fn towers_forward(towers: &[nn::Sequential], features: &[Tensor]) -> Tensor {
    debug_assert_eq!(towers.len(), TASKS);
    let logits: Vec<Tensor> = towers.iter().zip(features).map(|(t, h)| t.forward(h)).collect();
    Tensor::cat(&logits, 1)
}
