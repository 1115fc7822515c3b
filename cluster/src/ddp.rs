//! Data-parallel gradient sync.
//!
//! Parameters start equal on every rank ([`broadcast_parameters`]); after each
//! backward pass [`GradSync::sync`] flattens the gradients into buckets of at most
//! `bucket_bytes` (25 MiB by default), all-reduces them (the backend may keep all
//! buckets in flight at once), averages and writes them back. A parameter whose
//! gradient is undefined counts as zero. Gradient accumulation is the caller's: it
//! simply does not call `sync` on the micro-steps that only accumulate.
//!
//! Invariant: an N-rank run equals a 1-rank run with the same global batch, to
//! float tolerance (tested with real `mpirun` ranks in the root crate).

use crate::comm::{Communicator, ReduceOp};
use crate::error::CommError;
use tch::{Kind, Tensor};

/// The default bucket size, as in PyTorch DDP.
pub const DEFAULT_BUCKET_BYTES: usize = 25 * 1024 * 1024;

/// Makes every rank's parameters equal to rank 0's.
pub fn broadcast_parameters(comm: &dyn Communicator, params: &mut [Tensor]) -> Result<(), CommError> {
    let _guard = tch::no_grad_guard();
    for p in params.iter_mut() {
        comm.broadcast(p, 0)?;
    }
    Ok(())
}

#[derive(Debug, Clone)]
struct Bucket {
    /// Indices into the parameter list, in the order they are packed.
    params: Vec<usize>,
    kind: Kind,
}

/// What one sync moved, for metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SyncStats {
    pub buckets: usize,
    pub bytes: usize,
}

/// Bucketed gradient all-reduce over a fixed list of parameters.
#[derive(Debug, Clone)]
pub struct GradSync {
    buckets: Vec<Bucket>,
}

impl GradSync {
    /// Plans buckets for `params` (in reverse order, as gradients of the last layers
    /// are ready first). A parameter larger than `bucket_bytes` gets a bucket of its own.
    pub fn new(params: &[Tensor], bucket_bytes: usize) -> Self {
        let mut buckets: Vec<Bucket> = Vec::new();
        let mut current: Option<(Bucket, usize)> = None;
        for (i, p) in params.iter().enumerate().rev() {
            let bytes = p.numel() * p.kind().elt_size_in_bytes();
            let kind = p.kind();
            match current.as_mut() {
                Some((b, used)) if b.kind == kind && *used + bytes <= bucket_bytes.max(1) => {
                    b.params.push(i);
                    *used += bytes;
                }
                _ => {
                    if let Some((b, _)) = current.take() {
                        buckets.push(b);
                    }
                    current = Some((Bucket { params: vec![i], kind }, bytes));
                }
            }
        }
        if let Some((b, _)) = current {
            buckets.push(b);
        }
        GradSync { buckets }
    }

    /// Number of planned buckets.
    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    /// All-reduces and averages the gradients of `params` (the same list, in the same
    /// order, as given to [`GradSync::new`]). Undefined gradients are treated as zeros
    /// and become defined zeros-plus-average afterwards.
    pub fn sync(&self, comm: &dyn Communicator, params: &[Tensor]) -> Result<SyncStats, CommError> {
        if comm.world_size() == 1 {
            return Ok(SyncStats::default());
        }
        let _guard = tch::no_grad_guard();
        let mut flats = Vec::with_capacity(self.buckets.len());
        let mut bytes = 0;
        for b in &self.buckets {
            let parts: Vec<Tensor> = b
                .params
                .iter()
                .map(|&i| {
                    let p = &params[i];
                    let g = p.grad();
                    if g.defined() {
                        g.reshape([-1])
                    } else {
                        Tensor::zeros([p.numel() as i64], (p.kind(), p.device()))
                    }
                })
                .collect();
            let flat = Tensor::f_cat(&parts, 0)?;
            bytes += flat.numel() * flat.kind().elt_size_in_bytes();
            flats.push(flat);
        }
        comm.all_reduce_many(&mut flats, ReduceOp::Avg)?;
        for (b, flat) in self.buckets.iter().zip(&flats) {
            let mut offset = 0i64;
            for &i in &b.params {
                let p = &params[i];
                let n = p.numel() as i64;
                let avg = flat.narrow(0, offset, n).view_as(p);
                if !p.requires_grad() {
                    // Frozen for now (e.g. a finished stage): it has no gradient to set.
                    offset += n;
                    continue;
                }
                let mut g = p.grad();
                if g.defined() {
                    g.f_copy_(&avg)?;
                } else {
                    define_grad(p)?;
                    p.grad().f_copy_(&avg)?;
                }
                offset += n;
            }
        }
        Ok(SyncStats { buckets: self.buckets.len(), bytes })
    }
}

/// Gives `p` a defined all-zero gradient (libtorch allocates `.grad` on first
/// accumulation, so a zero-valued backward does it).
pub fn define_grad(p: &Tensor) -> Result<(), CommError> {
    if !p.requires_grad() || p.grad().defined() {
        return Ok(());
    }
    let _enable = tch::with_grad(|| -> Result<(), tch::TchError> {
        let zero = p.f_mul_scalar(0.0)?.f_sum(p.kind())?;
        zero.f_backward()?;
        Ok(())
    });
    _enable?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comm::SingleComm;

    #[test]
    fn buckets_respect_size_and_kind() {
        let params = vec![
            Tensor::zeros([10], (Kind::Float, tch::Device::Cpu)),
            Tensor::zeros([10], (Kind::Float, tch::Device::Cpu)),
            Tensor::zeros([10], (Kind::Double, tch::Device::Cpu)),
            Tensor::zeros([100], (Kind::Float, tch::Device::Cpu)),
        ];
        // 80 bytes per bucket: the 400-byte tensor alone, the f64 alone, two f32 of 40 together.
        let s = GradSync::new(&params, 80);
        assert_eq!(s.bucket_count(), 3);
        let all: Vec<usize> = s.buckets.iter().flat_map(|b| b.params.clone()).collect();
        assert_eq!(all, vec![3, 2, 1, 0]);
    }

    #[test]
    fn single_rank_sync_leaves_grads_untouched() {
        let p = Tensor::ones([3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        (&p * 2.0).sum(Kind::Float).backward();
        GradSync::new(&[p.shallow_clone()], DEFAULT_BUCKET_BYTES)
            .sync(&SingleComm, &[p.shallow_clone()])
            .unwrap();
        assert_eq!(Vec::<f32>::try_from(p.grad()).unwrap(), vec![2.0, 2.0, 2.0]);
    }

    #[test]
    fn define_grad_makes_zero_grad() {
        let p = Tensor::ones([4], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        assert!(!p.grad().defined());
        define_grad(&p).unwrap();
        assert_eq!(p.grad().abs().sum(Kind::Float).double_value(&[]), 0.0);
    }
}
