//! Multi-task CTR models over (user, item, domain, dense) features.
//!
//! - Shared-Bottom (Caruana, 1997): one shared MLP, one tower per task.
//! - MMoE (Ma et al., KDD 2018): several expert MLPs shared by all tasks, mixed per
//!   task by a softmax gate over the input, then one tower per task.

use crate::data::{Batch, TASKS};
use tch::nn::{self, Module};
use tch::Tensor;

/// Which architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    SharedBottom,
    Mmoe,
}

pub struct MultiTaskModel {
    user: nn::Embedding,
    item: nn::Embedding,
    domain: nn::Embedding,
    body: Body,
    towers: Vec<nn::Sequential>,
}

enum Body {
    Shared(nn::Sequential),
    Mmoe { experts: Vec<nn::Sequential>, gates: Vec<nn::Linear> },
}

fn mlp(p: nn::Path, input: i64, hidden: i64, out: i64) -> nn::Sequential {
    nn::seq()
        .add(nn::linear(&p / "l1", input, hidden, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(&p / "l2", hidden, out, Default::default()))
        .add_fn(|x| x.relu())
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
    pub experts: i64,
}

impl MultiTaskModel {
    pub fn new(root: &nn::Path, arch: Arch, d: Dims) -> Self {
        // Small initial embeddings, as usual for CTR models: with N(0, 1) the random
        // user*item products drown the signal and the factorisation is learnt slowly.
        let emb = nn::EmbeddingConfig {
            ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.05 },
            ..Default::default()
        };
        let user = nn::embedding(root / "user_emb", d.users, d.embedding, emb);
        let item = nn::embedding(root / "item_emb", d.items, d.embedding, emb);
        let domain = nn::embedding(root / "domain_emb", d.domains, 4, emb);
        // [user, item, user*item, domain, dense]: the element-wise product gives the
        // towers the user-item affinity directly, as factorisation-machine style
        // CTR models do, instead of making an MLP learn a dot product.
        let input = 3 * d.embedding + 4 + d.dense;
        let body = match arch {
            Arch::SharedBottom => Body::Shared(mlp(root / "bottom", input, d.hidden, d.hidden)),
            Arch::Mmoe => Body::Mmoe {
                experts: (0..d.experts).map(|e| mlp(root / format!("expert{e}"), input, d.hidden, d.hidden)).collect(),
                gates: (0..TASKS)
                    .map(|t| nn::linear(root / format!("gate{t}"), input, d.experts, Default::default()))
                    .collect(),
            },
        };
        let towers = (0..TASKS)
            .map(|t| {
                let p = root / format!("tower{t}");
                nn::seq()
                    .add(nn::linear(&p / "l1", d.hidden, d.tower_hidden, Default::default()))
                    .add_fn(|x| x.relu())
                    .add(nn::linear(&p / "out", d.tower_hidden, 1, Default::default()))
            })
            .collect();
        MultiTaskModel { user, item, domain, body, towers }
    }

    /// Logits, [n, TASKS].
    pub fn forward(&self, b: &Batch) -> Tensor {
        let (u, v) = (self.user.forward(&b.user), self.item.forward(&b.item));
        let uv = &u * &v;
        let x = Tensor::cat(&[u, v, uv, self.domain.forward(&b.domain), b.dense.shallow_clone()], 1);
        let per_task: Vec<Tensor> = match &self.body {
            Body::Shared(bottom) => {
                let h = bottom.forward(&x);
                (0..TASKS).map(|_| h.shallow_clone()).collect()
            }
            Body::Mmoe { experts, gates } => {
                // [n, E, H]
                let outs = Tensor::stack(&experts.iter().map(|e| e.forward(&x)).collect::<Vec<_>>(), 1);
                gates
                    .iter()
                    .map(|g| {
                        let w = g.forward(&x).softmax(-1, tch::Kind::Float).unsqueeze(-1); // [n, E, 1]
                        (&outs * w).sum_dim_intlist([1i64].as_slice(), false, tch::Kind::Float)
                    })
                    .collect()
            }
        };
        let logits: Vec<Tensor> = self.towers.iter().zip(&per_task).map(|(t, h)| t.forward(h)).collect();
        Tensor::cat(&logits, 1)
    }
}
