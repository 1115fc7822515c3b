//! Optimizers whose whole state is tensors we can checkpoint, and global-norm
//! gradient clipping.
//!
//! tch's built-in optimizers cannot export their moments, so an exact resume
//! needs our own: AdamW (decoupled weight decay, Loshchilov & Hutter) and SGD
//! with (Nesterov) momentum, following PyTorch's update rules.

use crate::spec::OptimizerSpec;
use tch::{Kind, Tensor};

/// An optimizer over a fixed, ordered list of parameters.
pub struct Optimizer {
    spec: OptimizerSpec,
    params: Vec<Tensor>,
    /// Per parameter: AdamW `[exp_avg, exp_avg_sq]`, SGD `[momentum_buffer]`.
    state: Vec<Vec<Tensor>>,
    /// Optimizer steps taken.
    steps: i64,
    /// Per parameter: the updates it has had. AdamW's bias correction and
    /// SGD's first momentum step use it, so a parameter that starts training
    /// late (a frozen stage thawed mid-run) starts as PyTorch's would.
    updates: Vec<i64>,
    /// Per parameter: its learning-rate multiplier.
    scales: Vec<f64>,
}

impl Optimizer {
    pub fn new(spec: OptimizerSpec, params: Vec<Tensor>) -> Self {
        let slots = match spec {
            OptimizerSpec::Adamw { .. } => 2,
            OptimizerSpec::Sgd { .. } => 1,
        };
        let state = params.iter().map(|p| (0..slots).map(|_| p.zeros_like()).collect()).collect();
        let updates = vec![0; params.len()];
        let scales = vec![1.0; params.len()];
        Optimizer { spec, params, state, steps: 0, updates, scales }
    }

    /// Per-parameter learning-rate multipliers (same order as the parameters).
    pub fn with_scales(mut self, scales: Vec<f64>) -> Self {
        if scales.len() == self.params.len() {
            self.scales = scales;
        }
        self
    }

    pub fn steps(&self) -> i64 {
        self.steps
    }

    /// Sets every gradient to zero (kept allocated, so it stays defined).
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.zero_grad();
        }
    }

    /// One update with learning rate `lr`. Parameters without a gradient or
    /// not requiring one (frozen) are left as they are, state included.
    ///
    /// A row-sparse gradient (an embedding table's) updates only its rows, and
    /// only their state: weight decay, momentum and Adam's moments are lazy, a
    /// row's changing only at steps where it has a gradient (PyTorch's
    /// `SparseAdam` semantics; plain SGD is unaffected). Bias correction counts
    /// the table's updates, as `SparseAdam` does.
    pub fn step(&mut self, lr: f64) {
        let _guard = tch::no_grad_guard();
        self.steps += 1;
        let base = lr;
        for (((p, st), n), scale) in self.params.iter_mut().zip(self.state.iter_mut()).zip(self.updates.iter_mut()).zip(&self.scales) {
            let lr = base * scale;
            let g = p.grad();
            if !g.defined() || !p.requires_grad() {
                continue;
            }
            *n += 1;
            let t = *n as f64;
            if g.is_sparse() {
                sparse_step(&self.spec, p, st, &g, *n, lr);
                continue;
            }
            match self.spec {
                OptimizerSpec::Adamw { betas: [b1, b2], eps, weight_decay, .. } => {
                    if weight_decay != 0.0 {
                        let _ = p.g_mul_scalar_(1.0 - lr * weight_decay);
                    }
                    let (m, v) = st.split_at_mut(1);
                    let (m, v) = (&mut m[0], &mut v[0]);
                    let _ = m.g_mul_scalar_(b1);
                    let _ = m.g_add_(&(&g * (1.0 - b1)));
                    let _ = v.g_mul_scalar_(b2);
                    let _ = v.g_add_(&(&g * &g * (1.0 - b2)));
                    let bc1 = 1.0 - b1.powf(t);
                    let bc2 = 1.0 - b2.powf(t);
                    let denom = (v.sqrt() / bc2.sqrt()) + eps;
                    let update = (&*m / &denom) * (lr / bc1);
                    let _ = p.g_sub_(&update);
                }
                OptimizerSpec::Sgd { momentum, nesterov, weight_decay, .. } => {
                    let g = if weight_decay != 0.0 { &g + &*p * weight_decay } else { g };
                    let d = if momentum != 0.0 {
                        let buf = &mut st[0];
                        if *n == 1 {
                            buf.copy_(&g);
                        } else {
                            let _ = buf.g_mul_scalar_(momentum);
                            let _ = buf.g_add_(&g);
                        }
                        if nesterov {
                            &g + &*buf * momentum
                        } else {
                            buf.shallow_clone()
                        }
                    } else {
                        g
                    };
                    let _ = p.g_sub_(&(d * lr));
                }
            }
        }
    }

    /// The state as named tensors (`<index>.<slot>`, `steps` and the
    /// per-parameter `updates`), for checkpoints.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("steps".to_string(), Tensor::from_slice(&[self.steps])), ("updates".to_string(), Tensor::from_slice(&self.updates))];
        for (i, st) in self.state.iter().enumerate() {
            for (j, t) in st.iter().enumerate() {
                out.push((format!("{i:05}.{j}"), t.shallow_clone()));
            }
        }
        out
    }

    /// Restores what [`Optimizer::state_tensors`] produced.
    pub fn load_state(&mut self, named: &[(String, Tensor)]) -> Result<(), String> {
        let _guard = tch::no_grad_guard();
        let mut seen = 0usize;
        let mut updates = None;
        for (name, t) in named {
            if name == "steps" {
                self.steps = t.int64_value(&[0]);
                continue;
            }
            if name == "updates" {
                let v = Vec::<i64>::try_from(t).map_err(|e| format!("optimizer tensor 'updates': {e}"))?;
                if v.len() != self.params.len() {
                    return Err(format!("checkpoint counts updates for {} parameters, this model has {}", v.len(), self.params.len()));
                }
                updates = Some(v);
                continue;
            }
            let (i, j) = name
                .split_once('.')
                .and_then(|(i, j)| Some((i.parse::<usize>().ok()?, j.parse::<usize>().ok()?)))
                .ok_or_else(|| format!("unexpected optimizer tensor '{name}'"))?;
            let slot = self
                .state
                .get_mut(i)
                .and_then(|s| s.get_mut(j))
                .ok_or_else(|| format!("optimizer tensor '{name}' does not match this model"))?;
            if slot.size() != t.size() {
                return Err(format!("optimizer tensor '{name}' has shape {:?}, expected {:?}", t.size(), slot.size()));
            }
            slot.copy_(&t.to_kind(slot.kind()).to_device(slot.device()));
            seen += 1;
        }
        // Checkpoints written before per-parameter counts: every parameter
        // was updated at every step.
        self.updates = updates.unwrap_or_else(|| vec![self.steps; self.params.len()]);
        let expected: usize = self.state.iter().map(|s| s.len()).sum();
        if seen != expected {
            return Err(format!("checkpoint holds {seen} optimizer tensors, this optimizer needs {expected} (was the optimizer kind changed?)"));
        }
        Ok(())
    }
}

/// The update of [`Optimizer::step`] for a row-sparse gradient: the dense rules
/// applied to the rows present (coalesced: duplicate rows summed), the other
/// rows and their state untouched. `n` is the parameter's update count.
fn sparse_step(spec: &OptimizerSpec, p: &mut Tensor, st: &mut [Tensor], g: &Tensor, n: i64, lr: f64) {
    let g = g.coalesce();
    let rows = g.indices().select(0, 0);
    let g = g.values();
    let mut w = p.index_select(0, &rows);
    match *spec {
        OptimizerSpec::Adamw { betas: [b1, b2], eps, weight_decay, .. } => {
            if weight_decay != 0.0 {
                w *= 1.0 - lr * weight_decay;
            }
            let m = st[0].index_select(0, &rows) * b1 + &g * (1.0 - b1);
            let v = st[1].index_select(0, &rows) * b2 + &g * &g * (1.0 - b2);
            let t = n as f64;
            let (bc1, bc2) = (1.0 - b1.powf(t), 1.0 - b2.powf(t));
            w -= (&m / ((v.sqrt() / bc2.sqrt()) + eps)) * (lr / bc1);
            let _ = st[0].index_copy_(0, &rows, &m);
            let _ = st[1].index_copy_(0, &rows, &v);
        }
        OptimizerSpec::Sgd { momentum, nesterov, weight_decay, .. } => {
            let g = if weight_decay != 0.0 { &g + &w * weight_decay } else { g };
            let d = if momentum != 0.0 {
                let buf = if n == 1 { g.copy() } else { st[0].index_select(0, &rows) * momentum + &g };
                let _ = st[0].index_copy_(0, &rows, &buf);
                if nesterov {
                    &g + buf * momentum
                } else {
                    buf
                }
            } else {
                g
            };
            w -= d * lr;
        }
    }
    let _ = p.index_copy_(0, &rows, &w);
}

/// Scales gradients so their global L2 norm is at most `max_norm`; returns the norm
/// before clipping. Call after the all-reduce, so every rank clips identically.
pub fn clip_grad_norm(params: &[Tensor], max_norm: f64) -> f64 {
    let _guard = tch::no_grad_guard();
    let mut total = 0.0f64;
    for p in params {
        let g = p.grad();
        if g.defined() {
            // A row-sparse gradient's norm is that of its (summed) rows.
            let g = if g.is_sparse() { g.coalesce().values() } else { g };
            total += g.to_kind(Kind::Double).square().sum(Kind::Double).double_value(&[]);
        }
    }
    let norm = total.sqrt();
    if norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for p in params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.g_mul_scalar_(scale);
            }
        }
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn quadratic_param() -> Tensor {
        Tensor::from_slice(&[3.0f32, -2.0]).set_requires_grad(true)
    }

    fn run(spec: OptimizerSpec, steps: usize) -> Vec<f32> {
        let p = quadratic_param();
        let mut opt = Optimizer::new(spec, vec![p.shallow_clone()]);
        for _ in 0..steps {
            opt.zero_grad();
            (&p * &p).sum(Kind::Float).backward();
            opt.step(0.1);
        }
        Vec::<f32>::try_from(p.detach()).unwrap()
    }

    #[test]
    fn adamw_first_step_moves_by_lr_in_sign_direction() {
        let p = run(OptimizerSpec::Adamw { lr: 0.1, betas: [0.9, 0.999], eps: 1e-8, weight_decay: 0.0 }, 1);
        assert!((p[0] - 2.9).abs() < 1e-5 && (p[1] + 1.9).abs() < 1e-5, "{p:?}");
    }

    #[test]
    fn sgd_matches_hand_computed_momentum() {
        // g = 2p. step1: buf=g=6, p=3-0.6=2.4; step2: g=4.8, buf=0.9*6+4.8=10.2, p=2.4-1.02=1.38
        let p = run(OptimizerSpec::Sgd { lr: 0.1, momentum: 0.9, nesterov: false, weight_decay: 0.0 }, 2);
        assert!((p[0] - 1.38).abs() < 1e-5, "{p:?}");
    }

    #[test]
    fn optimizers_minimise_a_quadratic() {
        for spec in [
            OptimizerSpec::Adamw { lr: 0.1, betas: [0.9, 0.999], eps: 1e-8, weight_decay: 0.0 },
            OptimizerSpec::Sgd { lr: 0.1, momentum: 0.5, nesterov: true, weight_decay: 0.0 },
        ] {
            let p = run(spec, 200);
            assert!(p.iter().all(|x| x.abs() < 0.05), "{p:?}");
        }
    }

    #[test]
    fn state_round_trip_continues_the_same_trajectory() {
        let spec = OptimizerSpec::Adamw { lr: 0.1, betas: [0.9, 0.999], eps: 1e-8, weight_decay: 0.01 };
        let p = quadratic_param();
        let mut opt = Optimizer::new(spec.clone(), vec![p.shallow_clone()]);
        for _ in 0..3 {
            opt.zero_grad();
            (&p * &p).sum(Kind::Float).backward();
            opt.step(0.1);
        }
        let saved_p = p.detach().copy();
        let saved = opt.state_tensors().into_iter().map(|(n, t)| (n, t.copy())).collect::<Vec<_>>();
        for _ in 0..3 {
            opt.zero_grad();
            (&p * &p).sum(Kind::Float).backward();
            opt.step(0.1);
        }
        let q = saved_p.set_requires_grad(true);
        let mut opt2 = Optimizer::new(spec, vec![q.shallow_clone()]);
        opt2.load_state(&saved).unwrap();
        assert_eq!(opt2.steps(), 3);
        for _ in 0..3 {
            opt2.zero_grad();
            (&q * &q).sum(Kind::Float).backward();
            opt2.step(0.1);
        }
        assert!(p.detach().equal(&q.detach()));
        assert!(opt2.load_state(&[("00007.0".into(), Tensor::zeros([2], (Kind::Float, Device::Cpu)))]).is_err());
    }

    #[test]
    fn frozen_parameters_stay_put_and_a_late_starter_gets_its_own_bias_correction() {
        let spec = OptimizerSpec::Adamw { lr: 0.1, betas: [0.9, 0.999], eps: 1e-8, weight_decay: 0.01 };
        let (a, b) = (quadratic_param(), quadratic_param());
        let mut opt = Optimizer::new(spec, vec![a.shallow_clone(), b.shallow_clone()]);
        let _ = b.shallow_clone().set_requires_grad(false);
        for _ in 0..5 {
            opt.zero_grad();
            (&a * &a).sum(Kind::Float).backward();
            opt.step(0.1);
        }
        assert_eq!(Vec::<f32>::try_from(b.detach()).unwrap(), vec![3.0, -2.0], "frozen: no update, no decay");
        // Thawed at step 6, b's first update is AdamW's first step (≈ lr in the
        // gradient's sign), not one scaled by a bias correction for step 6.
        let _ = b.shallow_clone().set_requires_grad(true);
        let _ = a.shallow_clone().set_requires_grad(false);
        opt.zero_grad();
        (&b * &b).sum(Kind::Float).backward();
        opt.step(0.1);
        let v = Vec::<f32>::try_from(b.detach()).unwrap();
        assert!((v[0] - 3.0 * (1.0 - 0.001) + 0.1).abs() < 1e-4, "{v:?}");
        let names: Vec<String> = opt.state_tensors().into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"updates".to_string()));
    }

    #[test]
    fn clipping_caps_the_global_norm() {
        let p = Tensor::zeros([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        (&p * Tensor::from_slice(&[3.0f32, 4.0])).sum(Kind::Float).backward();
        let norm = clip_grad_norm(&[p.shallow_clone()], 1.0);
        assert!((norm - 5.0).abs() < 1e-6);
        let after = p.grad().square().sum(Kind::Float).double_value(&[]).sqrt();
        assert!((after - 1.0).abs() < 1e-4, "{after}");
    }

    /// Two copies of a 6 × 2 table, one looked up with sparse gradients; the
    /// same loss over `rows` per step.
    fn sparse_and_dense(spec: OptimizerSpec, steps: &[&[i64]]) -> (Tensor, Tensor) {
        let init = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.25, -0.75, 1.5, 1.0, 1.0, -2.0, 0.5, 0.1, -0.3]).reshape([6, 2]);
        let (a, b) = (init.copy().set_requires_grad(true), init.copy().set_requires_grad(true));
        let mut oa = Optimizer::new(spec.clone(), vec![a.shallow_clone()]);
        let mut ob = Optimizer::new(spec, vec![b.shallow_clone()]);
        for rows in steps {
            let rows = Tensor::from_slice(rows);
            oa.zero_grad();
            ob.zero_grad();
            let loss = |t: &Tensor, sparse: bool| (Tensor::embedding(t, &rows, -1, false, sparse) * Tensor::from_slice(&[1.0f32, -3.0])).square().sum(Kind::Float);
            loss(&a, true).backward();
            loss(&b, false).backward();
            assert!(a.grad().is_sparse() && !b.grad().is_sparse());
            oa.step(0.1);
            ob.step(0.1);
        }
        (a.detach(), b.detach())
    }

    #[test]
    fn a_sparse_gradient_updates_its_rows_as_the_dense_rule_and_leaves_the_rest() {
        let close = |x: &Tensor, y: &Tensor| (x - y).abs().max().double_value(&[]) < 1e-6;
        // Plain SGD: sparse and dense are the same update, duplicates summed.
        let sgd = OptimizerSpec::Sgd { lr: 0.1, momentum: 0.0, nesterov: false, weight_decay: 0.0 };
        let (a, b) = sparse_and_dense(sgd, &[&[1, 3, 1], &[0, 3], &[5]]);
        assert!(close(&a, &b), "{a} vs {b}");
        // AdamW: on the first step the rows with gradients move as dense
        // AdamW's; the rest do not (dense AdamW decays them).
        let adamw = OptimizerSpec::Adamw { lr: 0.1, betas: [0.9, 0.999], eps: 1e-8, weight_decay: 0.1 };
        let (a, b) = sparse_and_dense(adamw.clone(), &[&[1, 3, 1]]);
        let rows = Tensor::from_slice(&[1i64, 3]);
        assert!(close(&a.index_select(0, &rows), &b.index_select(0, &rows)));
        let (start, _) = sparse_and_dense(adamw.clone(), &[]);
        let others = Tensor::from_slice(&[0i64, 2, 4, 5]);
        assert!(close(&a.index_select(0, &others), &start.index_select(0, &others)), "untouched rows stay");
        // Lazy moments: a row absent at step 2 keeps its step-1 value, where
        // dense AdamW's momentum moves it again.
        let (a2, b2) = sparse_and_dense(adamw, &[&[1, 3, 1], &[0]]);
        let one = Tensor::from_slice(&[1i64]);
        assert!(close(&a2.index_select(0, &one), &a.index_select(0, &one)));
        assert!(!close(&b2.index_select(0, &one), &b.index_select(0, &one)));
        // Momentum SGD: the same laziness.
        let momentum = OptimizerSpec::Sgd { lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 0.0 };
        let (a, b) = sparse_and_dense(momentum, &[&[2], &[2, 4]]);
        assert!(close(&a, &b), "a row present at every step moves as dense; an unseen row's buffer starts at its first gradient");
    }

    #[test]
    fn a_learning_rate_scale_multiplies_that_parameters_steps() {
        let spec = OptimizerSpec::Sgd { lr: 0.1, momentum: 0.0, nesterov: false, weight_decay: 0.0 };
        let (a, b) = (quadratic_param(), quadratic_param());
        let mut opt = Optimizer::new(spec, vec![a.shallow_clone(), b.shallow_clone()]).with_scales(vec![1.0, 0.1]);
        opt.zero_grad();
        ((&a * &a).sum(Kind::Float) + (&b * &b).sum(Kind::Float)).backward();
        opt.step(0.1);
        let (da, db) = (3.0 - f32::try_from(a.get(0)).unwrap(), 3.0 - f32::try_from(b.get(0)).unwrap());
        assert!((da - 0.6).abs() < 1e-6 && (db - 0.06).abs() < 1e-6, "{da} {db}");
    }
}