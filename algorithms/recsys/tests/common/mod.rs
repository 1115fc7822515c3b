//! In-process training and scoring shared by the model tests.
#![allow(dead_code)]

use kiln_recsys::batch::Batch;
use kiln_recsys::metrics::auc;
use kiln_recsys::models::MultiTaskModel;
use tch::nn::{self, OptimizerConfig};
use std::sync::{Mutex, MutexGuard};
use tch::{Kind, Reduction, Tensor};

static TORCH_RNG: Mutex<()> = Mutex::new(());

/// Holds torch's global generator for one seeded build-and-train: tests of one
/// binary run on parallel threads, and interleaved draws would make each
/// model's initial weights depend on the others'.
pub fn serial() -> MutexGuard<'static, ()> {
    TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

/// `steps` Adam steps at `lr` on `batch(step)`: the tasks' mean log-loss plus
/// the model's auxiliary loss.
pub fn fit(model: &MultiTaskModel, vs: &nn::VarStore, lr: f64, steps: u64, batch: impl Fn(u64) -> Batch) {
    let mut opt = nn::Adam::default().build(vs, lr).unwrap();
    for step in 0..steps {
        let b = batch(step);
        let out = model.forward(&b);
        let mut loss = out.logits.binary_cross_entropy_with_logits::<Tensor>(&b.labels, None, None, Reduction::Mean);
        if let Some(aux) = out.aux_loss {
            loss += aux;
        }
        opt.backward_step(&loss);
    }
}

/// AUC per task on `b`, the oracle's per task (where `b` knows the truth), and
/// the mean AUC over the (domain, task) cells.
pub fn score(model: &MultiTaskModel, b: &Batch, domains: i64) -> (Vec<f64>, Vec<f64>, f64) {
    let p = tch::no_grad(|| model.forward(b).logits.sigmoid());
    let col = |t: &Tensor, k: usize| Vec::<f32>::try_from(t.select(1, k as i64).to_kind(Kind::Float)).unwrap();
    let dom = Vec::<i64>::try_from(&b.domain).unwrap();
    let (mut per_task, mut oracle, mut cells) = (Vec::new(), Vec::new(), Vec::new());
    for t in 0..p.size()[1] as usize {
        let (pt, yt) = (col(&p, t), col(&b.labels, t));
        per_task.push(auc(&pt, &yt).unwrap());
        if let Some(truth) = &b.truth {
            oracle.push(auc(&col(truth, t), &yt).unwrap());
        }
        for d in 0..domains {
            let pick = |v: &[f32]| v.iter().zip(&dom).filter(|(_, &x)| x == d).map(|(a, _)| *a).collect::<Vec<f32>>();
            cells.extend(auc(&pick(&pt), &pick(&yt)));
        }
    }
    let mean = cells.iter().sum::<f64>() / cells.len() as f64;
    (per_task, oracle, mean)
}
