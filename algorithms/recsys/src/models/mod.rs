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
//! Every model maps a [`Batch`] to logits `[n, tasks]`, a sample's prediction
//! for task t coming from its own domain's parameters where the model has them,
//! plus an optional auxiliary loss (AITM's calibrator).

pub mod cascade;
pub mod domain;
pub mod shared;

use crate::batch::{Batch, Schema};
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
    pub domains: i64,
    pub tasks: usize,
    pub embedding: i64,
    /// Tables of at least this many rows get row-sparse gradients.
    pub sparse_min_rows: u64,
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

/// The input layer: an embedding per sparse field, a mean-pooled embedding
/// per multi-hot field, their pairwise interactions, a domain embedding and the
/// dense features, concatenated.
pub struct InputLayer {
    sparse: Vec<nn::Embedding>,
    /// Multi-hot tables, read with `embedding_bag`, and whether each has
    /// row-sparse gradients.
    bags: Vec<(Tensor, bool)>,
    domain: nn::Embedding,
    pub width: i64,
    /// Variable names of the tables with row-sparse gradients.
    pub sparse_tables: Vec<String>,
}

/// A parameter-path-safe, unique name for a field's table.
fn table_name(field: &str, suffix: &str, taken: &mut Vec<String>) -> String {
    let base: String = field.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    let mut name = format!("{base}_{suffix}");
    let mut k = 1;
    while taken.contains(&name) {
        k += 1;
        name = format!("{base}{k}_{suffix}");
    }
    taken.push(name.clone());
    name
}

impl InputLayer {
    /// Tables of at least `sparse_min_rows` rows get row-sparse gradients.
    pub fn new(root: &nn::Path, schema: &Schema, embedding: i64, sparse_min_rows: u64) -> InputLayer {
        // Small initial embeddings, as usual for CTR models: with N(0, 1) the random
        // user*item products drown the signal and the factorisation is learnt slowly.
        let init = nn::Init::Randn { mean: 0.0, stdev: 0.05 };
        let emb = nn::EmbeddingConfig { ws_init: init, ..Default::default() };
        let mut taken = Vec::new();
        let mut sparse_tables = Vec::new();
        let path = root.components().collect::<Vec<_>>().join(".");
        let full = |name: &str| if path.is_empty() { name.to_string() } else { format!("{path}.{name}") };
        let sparse: Vec<nn::Embedding> = schema
            .sparse
            .iter()
            .map(|(f, v)| {
                let name = table_name(f, "emb", &mut taken);
                let big = *v as u64 >= sparse_min_rows;
                if big {
                    sparse_tables.push(full(&format!("{name}.weight")));
                }
                nn::embedding(root / name, *v, embedding, nn::EmbeddingConfig { sparse: big, ..emb })
            })
            .collect();
        let bags: Vec<(Tensor, bool)> = schema
            .multi_hot
            .iter()
            .map(|(f, v)| {
                let name = table_name(f, "bag_emb", &mut taken);
                let big = *v as u64 >= sparse_min_rows;
                if big {
                    sparse_tables.push(full(&name));
                }
                (root.var(&name, &[*v, embedding], init), big)
            })
            .collect();
        let fields = (sparse.len() + bags.len()) as i64;
        InputLayer {
            sparse,
            bags,
            sparse_tables,
            domain: nn::embedding(root / "domain_emb", schema.domains, 4, emb),
            // [fields..., interactions, domain, dense]: the pairwise products give
            // the layers above the user-item affinity directly, as factorisation-
            // machine style CTR models do, instead of making an MLP learn a dot product.
            width: fields * embedding + if fields >= 2 { embedding } else { 0 } + 4 + schema.dense,
        }
    }

    pub fn forward(&self, b: &Batch) -> Tensor {
        let mut fields: Vec<Tensor> = self.sparse.iter().enumerate().map(|(k, e)| e.forward(&b.sparse.select(1, k as i64))).collect();
        for ((table, sparse), bag) in self.bags.iter().zip(&b.multi_hot) {
            // Mode 1: the mean of a row's embeddings (zeros for an empty row).
            let (pooled, _, _, _) = Tensor::embedding_bag(table, &bag.ids, &bag.offsets, false, 1, *sparse, None::<Tensor>, false);
            fields.push(pooled);
        }
        let mut parts = Vec::with_capacity(fields.len() + 3);
        if fields.len() >= 2 {
            // Σ_{i<j} e_i ⊙ e_j = ½((Σ e)² − Σ e²) (the bi-interaction pooling of
            // NFM); with two fields exactly their product.
            let sum = fields.iter().skip(1).fold(fields[0].shallow_clone(), |a, e| a + e);
            let squares = fields.iter().skip(1).fold(&fields[0] * &fields[0], |a, e| a + e * e);
            let pairs = if fields.len() == 2 { &fields[0] * &fields[1] } else { (&sum * &sum - squares) * 0.5 };
            parts.extend(fields);
            parts.push(pairs);
        } else {
            parts.extend(fields);
        }
        parts.push(self.domain.forward(&b.domain));
        parts.push(b.dense.shallow_clone());
        Tensor::cat(&parts, 1)
    }
}

/// What a model adds to the loss besides its tasks' cross-entropy.
pub struct Output {
    /// `[n, tasks]`.
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
    /// `d.domains` and `d.tasks` must be the schema's.
    pub fn new(root: &nn::Path, arch: Arch, schema: &Schema, d: Dims, calibration: f64) -> Self {
        let input = InputLayer::new(root, schema, d.embedding, d.sparse_min_rows);
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

    /// Variable names of the embedding tables with row-sparse gradients.
    pub fn sparse_tables(&self) -> &[String] {
        &self.input.sparse_tables
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
    debug_assert_eq!(towers.len(), features.len());
    let logits: Vec<Tensor> = towers.iter().zip(features).map(|(t, h)| t.forward(h)).collect();
    Tensor::cat(&logits, 1)
}
