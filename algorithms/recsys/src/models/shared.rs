//! Experts shared across tasks: Shared-Bottom, MMoE and PLE.

use super::{mix, mlp, tower, towers_forward, Dims};
use tch::nn::{self, Module};
use tch::Tensor;

/// One shared MLP, one tower per task.
pub struct SharedBottom {
    bottom: nn::Sequential,
    towers: Vec<nn::Sequential>,
}

impl SharedBottom {
    pub fn new(root: &nn::Path, input: i64, d: &Dims) -> Self {
        SharedBottom {
            bottom: mlp(&(root / "bottom"), &[input, d.hidden, d.hidden], false),
            towers: (0..d.tasks).map(|t| tower(&(root / format!("tower{t}")), d.hidden, d.tower_hidden)).collect(),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.bottom.forward(x);
        towers_forward(&self.towers, &self.towers.iter().map(|_| h.shallow_clone()).collect::<Vec<_>>())
    }
}

/// Expert MLPs shared by all tasks, mixed per task by a softmax gate over the input.
pub struct Mmoe {
    experts: Vec<nn::Sequential>,
    gates: Vec<nn::Linear>,
    towers: Vec<nn::Sequential>,
}

impl Mmoe {
    pub fn new(root: &nn::Path, input: i64, d: &Dims) -> Self {
        Mmoe {
            experts: (0..d.experts).map(|e| mlp(&(root / format!("expert{e}")), &[input, d.hidden, d.hidden], false)).collect(),
            gates: (0..d.tasks).map(|t| nn::linear(root / format!("gate{t}"), input, d.experts, Default::default())).collect(),
            towers: (0..d.tasks).map(|t| tower(&(root / format!("tower{t}")), d.hidden, d.tower_hidden)).collect(),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let outs = Tensor::stack(&self.experts.iter().map(|e| e.forward(x)).collect::<Vec<_>>(), 1); // [n, E, H]
        let per_task: Vec<Tensor> = self.gates.iter().map(|g| mix(&outs, &g.forward(x))).collect();
        towers_forward(&self.towers, &per_task)
    }
}

/// One extraction level of PLE (a CGC): per-task experts and shared experts;
/// task t's gate mixes its own experts with the shared ones, and (below the
/// top level) a shared gate mixes all experts for the next level's shared input.
struct Level {
    task_experts: Vec<Vec<nn::Sequential>>,
    shared_experts: Vec<nn::Sequential>,
    task_gates: Vec<nn::Linear>,
    shared_gate: Option<nn::Linear>,
}

/// Progressive Layered Extraction: stacked levels, towers on the top level's task outputs.
pub struct Ple {
    levels: Vec<Level>,
    towers: Vec<nn::Sequential>,
}

impl Ple {
    pub fn new(root: &nn::Path, input: i64, d: &Dims) -> Self {
        let levels = (0..d.levels)
            .map(|l| {
                let p = root / format!("level{l}");
                let width = if l == 0 { input } else { d.hidden };
                let top = l == d.levels - 1;
                let expert = |name: String| mlp(&(&p / name), &[width, d.hidden], false);
                Level {
                    task_experts: (0..d.tasks).map(|t| (0..d.task_experts).map(|e| expert(format!("task{t}_expert{e}"))).collect()).collect(),
                    shared_experts: (0..d.experts).map(|e| expert(format!("shared_expert{e}"))).collect(),
                    task_gates: (0..d.tasks).map(|t| nn::linear(&p / format!("gate{t}"), width, d.task_experts + d.experts, Default::default())).collect(),
                    shared_gate: (!top).then(|| nn::linear(&p / "shared_gate", width, d.tasks as i64 * d.task_experts + d.experts, Default::default())),
                }
            })
            .collect();
        Ple { levels, towers: (0..d.tasks).map(|t| tower(&(root / format!("tower{t}")), d.hidden, d.tower_hidden)).collect() }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut task_in: Vec<Tensor> = self.towers.iter().map(|_| x.shallow_clone()).collect();
        let mut shared_in = x.shallow_clone();
        for level in &self.levels {
            let shared: Vec<Tensor> = level.shared_experts.iter().map(|e| e.forward(&shared_in)).collect();
            let own: Vec<Vec<Tensor>> = level.task_experts.iter().zip(&task_in).map(|(es, h)| es.iter().map(|e| e.forward(h)).collect()).collect();
            let task_out: Vec<Tensor> = (0..self.towers.len())
                .map(|t| {
                    let pool: Vec<&Tensor> = own[t].iter().chain(shared.iter()).collect();
                    mix(&Tensor::stack(&pool, 1), &level.task_gates[t].forward(&task_in[t]))
                })
                .collect();
            if let Some(g) = &level.shared_gate {
                let pool: Vec<&Tensor> = own.iter().flatten().chain(shared.iter()).collect();
                shared_in = mix(&Tensor::stack(&pool, 1), &g.forward(&shared_in));
            }
            task_in = task_out;
        }
        towers_forward(&self.towers, &task_in)
    }
}
