//! Data-parallel gradient sync.
//!
//! Parameters start equal on every rank ([`broadcast_parameters`]); after each
//! backward pass [`GradSync::sync`] flattens the gradients into buckets of at most
//! `bucket_bytes` (25 MiB by default), all-reduces them (the backend may keep all
//! buckets in flight at once), averages and writes them back. A parameter whose
//! gradient is undefined counts as zero. Gradient accumulation is the caller's: it
//! simply does not call `sync` on the micro-steps that only accumulate.
//!
//! Row-sparse parameters (embedding tables whose lookups produce sparse COO
//! gradients, [`GradSync::with_sparse`]) are never densified: each rank's
//! coalesced (row ids, rows) are all-gathered, concatenated in rank order,
//! coalesced (duplicate rows summed) and divided by the world size — the sparse
//! form of the same average. What moves is the rows the step touched, not the
//! table.
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
    /// Indices of the row-sparse parameters (synced by all-gather).
    sparse: Vec<usize>,
}

impl GradSync {
    /// Plans buckets for `params` (in reverse order, as gradients of the last layers
    /// are ready first). A parameter larger than `bucket_bytes` gets a bucket of its own.
    pub fn new(params: &[Tensor], bucket_bytes: usize) -> Self {
        Self::with_sparse(params, bucket_bytes, &[])
    }

    /// As [`GradSync::new`], with `sparse` (indices into `params`) synced as
    /// row-sparse gradients. Give them a sparse gradient with
    /// [`define_sparse_grad`] (a dense zero gradient would stay dense).
    pub fn with_sparse(params: &[Tensor], bucket_bytes: usize, sparse: &[usize]) -> Self {
        let mut buckets: Vec<Bucket> = Vec::new();
        let mut current: Option<(Bucket, usize)> = None;
        for (i, p) in params.iter().enumerate().rev().filter(|(i, _)| !sparse.contains(i)) {
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
        let mut sparse = sparse.to_vec();
        sparse.sort_unstable();
        sparse.dedup();
        GradSync { buckets, sparse }
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
        bytes += self.sync_sparse(comm, params)?;
        Ok(SyncStats { buckets: self.buckets.len(), bytes })
    }

    /// The row-sparse gradients: every rank's coalesced rows, gathered, summed
    /// and averaged. Returns the bytes this rank sent.
    fn sync_sparse(&self, comm: &dyn Communicator, params: &[Tensor]) -> Result<usize, CommError> {
        if self.sparse.is_empty() {
            return Ok(0);
        }
        // Per parameter: [rows: u64][row ids: i64 × rows][values: f32 × rows × width].
        let mut mine = Vec::new();
        for &i in &self.sparse {
            let (ids, values) = coalesced_rows(&params[i])?;
            mine.extend_from_slice(&(ids.len() as u64).to_le_bytes());
            mine.extend(ids.iter().flat_map(|x| x.to_le_bytes()));
            mine.extend(values.iter().flat_map(|x| x.to_le_bytes()));
        }
        let parts = comm.all_gather_bytes(&mine)?;
        let mut cursors = vec![0usize; parts.len()];
        let world = comm.world_size() as f64;
        for &i in &self.sparse {
            let p = &params[i];
            let width: i64 = p.size().iter().skip(1).product();
            let (mut ids, mut values) = (Vec::new(), Vec::new());
            for (part, at) in parts.iter().zip(cursors.iter_mut()) {
                let rows = read_u64(part, at)? as usize;
                for _ in 0..rows {
                    ids.push(read_u64(part, at)? as i64);
                }
                for _ in 0..rows * width as usize {
                    values.push(f32::from_le_bytes(take::<4>(part, at)?));
                }
            }
            if !p.requires_grad() {
                continue;
            }
            let n = ids.len() as i64;
            let mut shape = vec![n];
            shape.extend_from_slice(&p.size()[1..]);
            let indices = Tensor::from_slice(&ids).reshape([1, n]).to_device(p.device());
            let values = Tensor::from_slice(&values).reshape(shape.as_slice()).to_kind(p.kind()).to_device(p.device());
            let avg = Tensor::f_sparse_coo_tensor_indices_size(&indices, &values, p.size(), (p.kind(), p.device()), false)?.f_coalesce()?.f_mul_scalar(1.0 / world)?;
            let mut g = p.grad();
            if !g.defined() {
                define_sparse_grad(p)?;
                g = p.grad();
            }
            if g.is_sparse() {
                let _ = g.f_copy_sparse_to_sparse_(&avg, false)?;
            } else {
                // The table was also used densely somewhere: its gradient is dense.
                g.f_copy_(&avg.f_to_dense(None, false)?)?;
            }
        }
        Ok(mine.len())
    }
}

/// A row-sparse gradient's coalesced row ids and rows (f32, row-major); an
/// undefined gradient has none, a dense one (the table was also used densely)
/// gives every row.
pub fn coalesced_rows(p: &Tensor) -> Result<(Vec<i64>, Vec<f32>), CommError> {
    let g = p.grad();
    if !g.defined() {
        return Ok((Vec::new(), Vec::new()));
    }
    let sparse = if g.is_sparse() { g.f_coalesce()? } else { g.f_to_sparse_sparse_dim(1)?.f_coalesce()? };
    let ids = Vec::<i64>::try_from(sparse.f_indices()?.reshape([-1]).to_device(tch::Device::Cpu))?;
    let values = Vec::<f32>::try_from(sparse.f_values()?.to_kind(Kind::Float).reshape([-1]).to_device(tch::Device::Cpu))?;
    Ok((ids, values))
}

fn take<const N: usize>(bytes: &[u8], at: &mut usize) -> Result<[u8; N], CommError> {
    let out = bytes.get(*at..*at + N).and_then(|s| <[u8; N]>::try_from(s).ok()).ok_or_else(|| CommError::Torch(tch::TchError::Kind("sparse gradient message ended early".into())))?;
    *at += N;
    Ok(out)
}

fn read_u64(bytes: &[u8], at: &mut usize) -> Result<u64, CommError> {
    take::<8>(bytes, at).map(u64::from_le_bytes)
}

/// Gives `p` an empty sparse gradient (a lookup of no rows, backpropagated), so
/// later lookups accumulate into a sparse gradient and `zero_grad` keeps it
/// defined. A gradient already defined is left as it is.
pub fn define_sparse_grad(p: &Tensor) -> Result<(), CommError> {
    if !p.requires_grad() || p.grad().defined() {
        return Ok(());
    }
    tch::with_grad(|| -> Result<(), tch::TchError> {
        let none = Tensor::zeros([0], (Kind::Int64, p.device()));
        Tensor::f_embedding(p, &none, -1, false, true)?.f_sum(p.kind())?.f_backward()
    })?;
    Ok(())
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
