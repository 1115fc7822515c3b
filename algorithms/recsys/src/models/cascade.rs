//! Tasks in a funnel (task 0 click, task 1 click-and-convert, each later task
//! a step further down): ESMM and AITM. Both need at least two tasks.

use super::{mlp, tower, towers_forward, Dims, Output};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// ESMM: a CTR and a CVR network, each with its own bottom; task 1's
/// prediction is pCTCVR = pCTR · pCVR, trained on the entire impression space
/// (no sample-selection bias: the CVR network is never trained on clicks alone).
/// With more tasks, task t's network predicts the step from t − 1 to t and its
/// prediction is the product of all steps up to t.
pub struct Esmm {
    bottoms: Vec<nn::Sequential>,
    towers: Vec<nn::Sequential>,
}

impl Esmm {
    pub fn new(root: &nn::Path, input: i64, d: &Dims) -> Self {
        Esmm {
            bottoms: (0..d.tasks).map(|t| mlp(&(root / format!("{}_bottom", stage(t))), &[input, d.hidden, d.hidden], false)).collect(),
            towers: (0..d.tasks).map(|t| tower(&(root / format!("{}_tower", stage(t))), d.hidden, d.tower_hidden)).collect(),
        }
    }

    /// `[logit pCTR, logit pCTCVR, …]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let h: Vec<Tensor> = self.bottoms.iter().map(|b| b.forward(x)).collect();
        let l = towers_forward(&self.towers, &h);
        let mut out = vec![l.narrow(1, 0, 1)];
        for t in 1..self.towers.len() as i64 {
            let next = product_logit(&out[t as usize - 1], &l.narrow(1, t, 1));
            out.push(next);
        }
        Tensor::cat(&out, 1)
    }
}

/// Parameter names of ESMM's networks: "ctr", "cvr", then "stage2", ….
fn stage(t: usize) -> String {
    match t {
        0 => "ctr".into(),
        1 => "cvr".into(),
        _ => format!("stage{t}"),
    }
}

/// logit(σ(a) · σ(b)), computed in log space so it stays finite.
pub fn product_logit(a: &Tensor, b: &Tensor) -> Tensor {
    let log_p = (a.log_sigmoid() + b.log_sigmoid()).clamp_max(-1e-7);
    // log p − log(1 − p), with log(1 − p) = log(−expm1(log p)).
    &log_p - log_p.expm1().neg().log()
}

/// AITM: a bottom per task; task t's representation is an attention-weighted
/// mix of its own and of what task t − 1 transfers to it (a learned map of
/// t − 1's representation), and a calibrator penalises a later task predicted
/// likelier than the one before it (a conversion needs a click).
pub struct Aitm {
    bottoms: Vec<nn::Sequential>,
    transfer: Vec<nn::Linear>,
    q: nn::Linear,
    k: nn::Linear,
    v: nn::Linear,
    towers: Vec<nn::Sequential>,
    calibration: f64,
    hidden: i64,
}

impl Aitm {
    pub fn new(root: &nn::Path, input: i64, d: &Dims, calibration: f64) -> Self {
        let lin = |n: &str| nn::linear(root / n, d.hidden, d.hidden, Default::default());
        Aitm {
            bottoms: (0..d.tasks).map(|t| mlp(&(root / format!("bottom{t}")), &[input, d.hidden, d.hidden], false)).collect(),
            transfer: (1..d.tasks).map(|t| nn::linear(root / format!("transfer{t}"), d.hidden, d.hidden, Default::default())).collect(),
            q: lin("attn_q"),
            k: lin("attn_k"),
            v: lin("attn_v"),
            towers: (0..d.tasks).map(|t| tower(&(root / format!("tower{t}")), d.hidden, d.tower_hidden)).collect(),
            calibration,
            hidden: d.hidden,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Output {
        let mut z: Vec<Tensor> = Vec::with_capacity(self.bottoms.len());
        for (t, b) in self.bottoms.iter().enumerate() {
            let own = b.forward(x);
            if t == 0 {
                z.push(own);
                continue;
            }
            let carried = self.transfer[t - 1].forward(&z[t - 1]);
            let tokens = Tensor::stack(&[carried, own], 1); // [n, 2, H]
            let (q, k, v) = (self.q.forward(&tokens), self.k.forward(&tokens), self.v.forward(&tokens));
            // Each token scored by its own query·key, softmax over the two tokens.
            let w = ((&q * &k).sum_dim_intlist([-1i64].as_slice(), false, Kind::Float) / (self.hidden as f64).sqrt()).softmax(1, Kind::Float);
            z.push((v * w.unsqueeze(-1)).sum_dim_intlist([1i64].as_slice(), false, Kind::Float));
        }
        let logits = towers_forward(&self.towers, &z);
        let p = logits.sigmoid();
        let k = self.bottoms.len() as i64 - 1;
        let later_above = (p.narrow(1, 1, k) - p.narrow(1, 0, k)).relu();
        let aux = later_above.sum_dim_intlist([1i64].as_slice(), false, Kind::Float).mean(Kind::Float) * self.calibration;
        Output { logits, aux_loss: Some(aux) }
    }
}
