//! Parameters per domain as well as per task: STAR and M3oE.

use super::{mix, mlp, tower, Dims};
use std::cell::Cell;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// Rows of `per_domain` `[n, D, …]` picked by each sample's domain → `[n, …]`.
fn by_domain(per_domain: &Tensor, domain: &Tensor) -> Tensor {
    let size = per_domain.size();
    let mut idx_shape = vec![size[0], 1];
    idx_shape.extend_from_slice(&size[2..]);
    let mut view = vec![size[0], 1];
    view.extend(std::iter::repeat(1).take(size.len() - 2));
    let idx = domain.view(view.as_slice()).expand(idx_shape.as_slice(), false);
    per_domain.gather(1, &idx, false).squeeze_dim(1)
}

/// A fully connected layer in STAR's star topology: domain d's weights are
/// the shared weights ⊙ its own, its bias the sum of both.
struct StarLinear {
    shared_w: Tensor,
    shared_b: Tensor,
    domain_w: Tensor,
    domain_b: Tensor,
}

impl StarLinear {
    fn new(p: &nn::Path, domains: i64, input: i64, output: i64) -> StarLinear {
        let bound = 1.0 / (input as f64).sqrt();
        StarLinear {
            shared_w: p.var("shared_w", &[input, output], nn::Init::Uniform { lo: -bound, up: bound }),
            shared_b: p.var("shared_b", &[output], nn::Init::Const(0.0)),
            // Domain weights start at 1: every domain starts as the shared network.
            domain_w: p.var("domain_w", &[domains, input, output], nn::Init::Const(1.0)),
            domain_b: p.var("domain_b", &[domains, output], nn::Init::Const(0.0)),
        }
    }

    fn forward(&self, x: &Tensor, domain: &Tensor) -> Tensor {
        let d = self.domain_w.size()[0];
        // [n, D, out]: every domain's layer on every sample (D is small), then
        // each sample keeps its own domain's row.
        let all = Tensor::stack(&(0..d).map(|k| x.matmul(&(&self.shared_w * self.domain_w.get(k))) + self.domain_b.get(k)).collect::<Vec<_>>(), 1);
        by_domain(&all, domain) + &self.shared_b
    }
}

/// STAR: partitioned normalisation (a LayerNorm whose scale and shift are
/// shared ⊙ / + per domain — STAR's PN uses batch statistics; per-sample ones
/// keep ranks independent), star-topology layers, a tower per task and an
/// auxiliary network on the domain indicator whose logit is added.
pub struct Star {
    gamma_s: Tensor,
    beta_s: Tensor,
    gamma_d: Tensor,
    beta_d: Tensor,
    layers: Vec<StarLinear>,
    towers: Vec<nn::Sequential>,
    aux: nn::Embedding,
}

impl Star {
    pub fn new(root: &nn::Path, input: i64, d: &Dims) -> Self {
        let p = root / "star";
        Star {
            gamma_s: p.var("pn_gamma", &[input], nn::Init::Const(1.0)),
            beta_s: p.var("pn_beta", &[input], nn::Init::Const(0.0)),
            gamma_d: p.var("pn_gamma_domain", &[d.domains, input], nn::Init::Const(1.0)),
            beta_d: p.var("pn_beta_domain", &[d.domains, input], nn::Init::Const(0.0)),
            layers: vec![StarLinear::new(&(&p / "fc1"), d.domains, input, d.hidden), StarLinear::new(&(&p / "fc2"), d.domains, d.hidden, d.hidden)],
            towers: (0..d.tasks).map(|t| tower(&(root / format!("tower{t}")), d.hidden, d.tower_hidden)).collect(),
            aux: nn::embedding(root / "aux", d.domains, d.tasks as i64, nn::EmbeddingConfig { ws_init: nn::Init::Const(0.0), ..Default::default() }),
        }
    }

    pub fn forward(&self, x: &Tensor, domain: &Tensor) -> Tensor {
        let w = x.size()[1];
        let xn = x.layer_norm([w].as_slice(), None::<&Tensor>, None::<&Tensor>, 1e-5, false);
        let mut h = xn * (&self.gamma_s * self.gamma_d.index_select(0, domain)) + (&self.beta_s + self.beta_d.index_select(0, domain));
        for l in &self.layers {
            h = l.forward(&h, domain).relu();
        }
        let logits: Vec<Tensor> = self.towers.iter().map(|t| t.forward(&h)).collect();
        Tensor::cat(&logits, 1) + self.aux.forward(domain)
    }
}

/// M3oE's four structure scalars (before their sigmoid): α_D, α_T, β_D, β_T.
/// Not among the model's parameters: the structure search steps them with its
/// own optimizer; the main loss sees them as constants.
pub struct Structure {
    pub raw: Tensor,
    /// While true the forward pass lets gradients reach `raw` (the search step).
    pub live: Cell<bool>,
}

impl Structure {
    pub const NAMES: [&'static str; 4] = ["alpha_domain", "alpha_task", "beta_domain", "beta_task"];

    fn new(init: f64, device: Device) -> Structure {
        Structure { raw: Tensor::full([4], init, (Kind::Float, device)).set_requires_grad(true), live: Cell::new(false) }
    }

    /// The four values after the sigmoid.
    pub fn values(&self) -> Tensor {
        let raw = if self.live.get() { self.raw.shallow_clone() } else { self.raw.detach() };
        raw.sigmoid()
    }
}

/// M3oE: a domain-aware bottom (a star layer and an MLP, plus a skip MLP),
/// three expert groups (shared, one per domain, one per task), one softmax gate
/// over the shared experts per (domain, task), two-level fusion weighted by the
/// structure scalars, and a tower per (domain, task).
pub struct M3oe {
    star: StarLinear,
    star_mlp: nn::Sequential,
    skip: nn::Sequential,
    shared: Vec<nn::Sequential>,
    domain_experts: Vec<nn::Sequential>,
    task_experts: Vec<nn::Sequential>,
    /// `[domain][task]`.
    gates: Vec<Vec<nn::Linear>>,
    towers: Vec<Vec<nn::Sequential>>,
    pub structure: Structure,
    domains: i64,
}

impl M3oe {
    pub fn new(root: &nn::Path, input: i64, d: &Dims) -> Self {
        let h = d.hidden;
        let eo = d.tower_hidden;
        let expert = |name: String| mlp(&(root / name), &[h, h, eo], true);
        let tower_dt = |dd: i64, t: usize| {
            let p = root / format!("tower_d{dd}_t{t}");
            nn::seq()
                .add(nn::linear(&p / "l1", eo, eo, Default::default()))
                .add(nn::layer_norm(&p / "n1", vec![eo], Default::default()))
                .add_fn(|x| x.relu())
                .add(nn::linear(&p / "out", eo, 1, Default::default()))
        };
        M3oe {
            star: StarLinear::new(&(root / "star"), d.domains, input, h),
            star_mlp: mlp(&(root / "star_mlp"), &[h, h], true),
            skip: mlp(&(root / "skip"), &[input, h], true),
            shared: (0..d.experts).map(|e| expert(format!("shared_expert{e}"))).collect(),
            domain_experts: (0..d.domains).map(|e| expert(format!("domain_expert{e}"))).collect(),
            task_experts: (0..d.tasks).map(|e| expert(format!("task_expert{e}"))).collect(),
            gates: (0..d.domains).map(|dd| (0..d.tasks).map(|t| nn::linear(root / format!("gate_d{dd}_t{t}"), h, d.experts, Default::default())).collect()).collect(),
            towers: (0..d.domains).map(|dd| (0..d.tasks).map(|t| tower_dt(dd, t)).collect()).collect(),
            // sigmoid(1) ≈ 0.73, the reference's starting point.
            structure: Structure::new(1.0, root.device()),
            domains: d.domains,
        }
    }

    pub fn forward(&self, x: &Tensor, domain: &Tensor) -> Tensor {
        let e = self.star_mlp.forward(&self.star.forward(x, domain).relu()) + self.skip.forward(x);
        let shared = Tensor::stack(&self.shared.iter().map(|m| m.forward(&e)).collect::<Vec<_>>(), 1);
        let dom: Vec<Tensor> = self.domain_experts.iter().map(|m| m.forward(&e)).collect();
        let task: Vec<Tensor> = self.task_experts.iter().map(|m| m.forward(&e)).collect();
        let s = self.structure.values();
        let (a_d, a_t, b_d, b_t) = (s.get(0), s.get(1), s.get(2), s.get(3));
        // The rest of a group, shared evenly (nothing when the group has one member).
        let others = |group: &[Tensor], me: usize, beta: &Tensor| -> Tensor {
            let n = group.len();
            let own = &group[me] * beta;
            if n < 2 {
                return own;
            }
            let rest = group.iter().enumerate().filter(|(j, _)| *j != me).fold(group[me].zeros_like(), |acc, (_, g)| acc + g);
            own + rest * ((1.0 - beta) / (n - 1) as f64)
        };
        let gate_in = e.detach();
        let mut per_domain = Vec::with_capacity(self.domains as usize);
        for (dd, (gates, towers)) in self.gates.iter().zip(&self.towers).enumerate() {
            let logits: Vec<Tensor> = (0..towers.len())
                .map(|t| {
                    let fused = mix(&shared, &gates[t].forward(&gate_in)) + others(&dom, dd, &b_d) * &a_d + others(&task, t, &b_t) * &a_t;
                    towers[t].forward(&fused)
                })
                .collect();
            per_domain.push(Tensor::cat(&logits, 1)); // [n, T]
        }
        by_domain(&Tensor::stack(&per_domain, 1), domain)
    }
}
