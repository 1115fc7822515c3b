//! The one conformance suite every [`Communicator`] backend must pass.
//!
//! Run it on every rank of a job with [`run`]; it returns the names of the checks
//! that passed, or the first failure with the rank that saw it. The single-process
//! backend runs it in a unit test, MPI under `mpirun` with 2 and 3 ranks, NCCL on a
//! GPU machine (`scripts/gpu-checks.sh`).

use crate::comm::{Communicator, ReduceOp};
use tch::{Device, Kind, Tensor};

/// A failed check: which, on which rank, and what was seen.
#[derive(Debug)]
pub struct Failure {
    pub check: &'static str,
    pub rank: usize,
    pub detail: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "conformance check '{}' failed on rank {}: {}", self.check, self.rank, self.detail)
    }
}

type Check = fn(&dyn Communicator, Device) -> Result<(), String>;

const CHECKS: &[(&str, Check)] = &[
    ("rank_and_world", rank_and_world),
    ("all_reduce_sum_f32", all_reduce_sum_f32),
    ("all_reduce_avg_f64", all_reduce_avg_f64),
    ("all_reduce_sum_bf16", all_reduce_sum_bf16),
    ("all_reduce_max_i64", all_reduce_max_i64),
    ("all_reduce_sum_i32", all_reduce_sum_i32),
    ("all_reduce_strided", all_reduce_strided),
    ("all_reduce_large", all_reduce_large),
    ("all_reduce_many", all_reduce_many),
    ("broadcast_from_last", broadcast_from_last),
    ("all_gather_bytes_ragged", all_gather_bytes_ragged),
    ("all_gather_tensors", all_gather_tensors),
    ("all_gather_f32_ragged", all_gather_f32_ragged),
    ("grad_sync_sparse_rows", grad_sync_sparse_rows),
    ("any_flag", any_flag),
    ("barrier", barrier),
    ("errors_not_panics", errors_not_panics),
];

/// Runs every check on this rank. All ranks must call it together.
pub fn run(comm: &dyn Communicator, device: Device) -> Result<Vec<&'static str>, Failure> {
    let mut passed = Vec::new();
    for (name, check) in CHECKS {
        check(comm, device).map_err(|detail| Failure { check: name, rank: comm.rank(), detail })?;
        passed.push(*name);
    }
    Ok(passed)
}

fn world(comm: &dyn Communicator) -> f64 {
    comm.world_size() as f64
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_device(Device::Cpu).to_kind(Kind::Double).reshape([-1])).unwrap_or_default()
}

fn expect_all(t: &Tensor, want: f64, what: &str) -> Result<(), String> {
    let v = values(t);
    if v.is_empty() {
        return Err(format!("{what}: empty result"));
    }
    match v.iter().position(|x| (x - want).abs() > 1e-6 * want.abs().max(1.0)) {
        Some(i) => Err(format!("{what}: element {i} is {}, expected {want}", v[i])),
        None => Ok(()),
    }
}

fn rank_and_world(comm: &dyn Communicator, _d: Device) -> Result<(), String> {
    let got = comm.all_gather_bytes(&(comm.rank() as u32).to_le_bytes()).map_err(|e| e.to_string())?;
    if got.len() != comm.world_size() {
        return Err(format!("{} parts for a world of {}", got.len(), comm.world_size()));
    }
    for (i, part) in got.iter().enumerate() {
        let r = u32::from_le_bytes(part[..4].try_into().map_err(|_| "short part".to_string())?);
        if r as usize != i {
            return Err(format!("slot {i} holds rank {r}"));
        }
    }
    Ok(())
}

fn all_reduce_sum_f32(comm: &dyn Communicator, d: Device) -> Result<(), String> {
    let mut t = Tensor::full([17], comm.rank() as f64 + 1.0, (Kind::Float, d));
    comm.all_reduce(&mut t, ReduceOp::Sum).map_err(|e| e.to_string())?;
    let w = world(comm);
    expect_all(&t, w * (w + 1.0) / 2.0, "sum")
}

fn all_reduce_avg_f64(comm: &dyn Communicator, d: Device) -> Result<(), String> {
    let mut t = Tensor::full([5, 3], comm.rank() as f64 * 2.0, (Kind::Double, d));
    comm.all_reduce(&mut t, ReduceOp::Avg).map_err(|e| e.to_string())?;
    expect_all(&t, world(comm) - 1.0, "avg")
}

fn all_reduce_sum_bf16(comm: &dyn Communicator, d: Device) -> Result<(), String> {
    // Small integers are exact in bf16.
    let mut t = Tensor::full([64], comm.rank() as f64 + 1.0, (Kind::BFloat16, d));
    comm.all_reduce(&mut t, ReduceOp::Sum).map_err(|e| e.to_string())?;
    if t.kind() != Kind::BFloat16 {
        return Err(format!("kind changed to {:?}", t.kind()));
    }
    let w = world(comm);
    expect_all(&t, w * (w + 1.0) / 2.0, "bf16 sum")
}

fn all_reduce_max_i64(comm: &dyn Communicator, d: Device) -> Result<(), String> {
    let mut t = Tensor::full([4], 10 * comm.rank() as i64 - 7, (Kind::Int64, d));
    comm.all_reduce(&mut t, ReduceOp::Max).map_err(|e| e.to_string())?;
    expect_all(&t, 10.0 * (world(comm) - 1.0) - 7.0, "max")
}

fn all_reduce_sum_i32(comm: &dyn Communicator, d: Device) -> Result<(), String> {
    let mut t = Tensor::full([3], 1i64 << 20, (Kind::Int, d));
    comm.all_reduce(&mut t, ReduceOp::Sum).map_err(|e| e.to_string())?;
    expect_all(&t, world(comm) * (1u64 << 20) as f64, "i32 sum")
}

fn all_reduce_strided(comm: &dyn Communicator, d: Device) -> Result<(), String> {
    let base = Tensor::arange(12, (Kind::Float, d)).reshape([3, 4]);
    let mut t = base.tr(); // a non-contiguous view
    comm.all_reduce(&mut t, ReduceOp::Sum).map_err(|e| e.to_string())?;
    let want = Tensor::arange(12, (Kind::Float, Device::Cpu)).reshape([3, 4]).tr() * world(comm);
    let diff = (t.to_device(Device::Cpu) - want).abs().max().double_value(&[]);
    if diff > 1e-6 {
        return Err(format!("strided result differs by {diff}"));
    }
    if (base.to_device(Device::Cpu) - t.tr().to_device(Device::Cpu)).abs().max().double_value(&[]) > 1e-6 {
        return Err("the reduction did not write through to the viewed storage".into());
    }
    Ok(())
}

fn all_reduce_large(comm: &dyn Communicator, d: Device) -> Result<(), String> {
    let n = 3_000_001i64;
    let mut t = Tensor::arange(n, (Kind::Float, d)).remainder(97) + comm.rank() as f64;
    comm.all_reduce(&mut t, ReduceOp::Sum).map_err(|e| e.to_string())?;
    let w = world(comm);
    let want = Tensor::arange(n, (Kind::Float, Device::Cpu)).remainder(97) * w + w * (w - 1.0) / 2.0;
    let diff = (t.to_device(Device::Cpu) - want).abs().max().double_value(&[]);
    if diff > 1e-3 {
        return Err(format!("large sum differs by {diff}"));
    }
    Ok(())
}

fn all_reduce_many(comm: &dyn Communicator, d: Device) -> Result<(), String> {
    let mut ts: Vec<Tensor> =
        (1..=3).map(|i| Tensor::full([i * 1000], comm.rank() as f64 + i as f64, (Kind::Float, d))).collect();
    comm.all_reduce_many(&mut ts, ReduceOp::Avg).map_err(|e| e.to_string())?;
    let w = world(comm);
    for (i, t) in ts.iter().enumerate() {
        expect_all(t, (w - 1.0) / 2.0 + (i + 1) as f64, "many")?;
    }
    Ok(())
}

fn broadcast_from_last(comm: &dyn Communicator, d: Device) -> Result<(), String> {
    let root = comm.world_size() - 1;
    let mut t = Tensor::full([6, 2], comm.rank() as f64 * 3.0 + 1.0, (Kind::Float, d));
    comm.broadcast(&mut t, root).map_err(|e| e.to_string())?;
    expect_all(&t, root as f64 * 3.0 + 1.0, "broadcast f32")?;
    let mut i = Tensor::full([3], comm.rank() as i64, (Kind::Int64, d));
    comm.broadcast(&mut i, root).map_err(|e| e.to_string())?;
    expect_all(&i, root as f64, "broadcast i64")
}

fn all_gather_bytes_ragged(comm: &dyn Communicator, _d: Device) -> Result<(), String> {
    // Rank r sends r bytes of value r: rank 0 sends nothing.
    let mine = vec![comm.rank() as u8; comm.rank()];
    let got = comm.all_gather_bytes(&mine).map_err(|e| e.to_string())?;
    for (r, part) in got.iter().enumerate() {
        if part != &vec![r as u8; r] {
            return Err(format!("part {r} is {part:?}"));
        }
    }
    // Nothing from anyone.
    let none = comm.all_gather_bytes(&[]).map_err(|e| e.to_string())?;
    if none.len() != comm.world_size() || none.iter().any(|p| !p.is_empty()) {
        return Err(format!("gathering nothing gave {none:?}"));
    }
    Ok(())
}

fn all_gather_f32_ragged(comm: &dyn Communicator, _d: Device) -> Result<(), String> {
    // Rank r sends r + 1 copies of r + 0.5: concatenated in rank order.
    let mine = vec![comm.rank() as f32 + 0.5; comm.rank() + 1];
    let got = comm.all_gather_f32(&mine).map_err(|e| e.to_string())?;
    let want: Vec<f32> = (0..comm.world_size()).flat_map(|r| vec![r as f32 + 0.5; r + 1]).collect();
    if got != want {
        return Err(format!("got {got:?}, expected {want:?}"));
    }
    Ok(())
}

fn all_gather_tensors(comm: &dyn Communicator, d: Device) -> Result<(), String> {
    let t = Tensor::full([2, 3], comm.rank() as f64 + 0.5, (Kind::Float, d));
    let got = comm.all_gather(&t).map_err(|e| e.to_string())?;
    if got.len() != comm.world_size() {
        return Err(format!("{} tensors", got.len()));
    }
    for (r, g) in got.iter().enumerate() {
        if g.size() != vec![2, 3] || g.device() != d {
            return Err(format!("tensor {r} has shape {:?} on {:?}", g.size(), g.device()));
        }
        expect_all(g, r as f64 + 0.5, "gathered")?;
    }
    Ok(())
}

/// [`crate::ddp::GradSync`] with a row-sparse embedding table next to a dense
/// parameter: rank r looks up rows [0, r + 1, r + 1] with weight r + 1, so the
/// average gradient of row 0 is (W + 1) / 2, of row r + 1 is 2(r + 1) / W, of
/// every other row 0 — and it must stay sparse, holding only those W + 1 rows.
fn grad_sync_sparse_rows(comm: &dyn Communicator, d: Device) -> Result<(), String> {
    let e = |x: tch::TchError| x.to_string();
    let w = comm.world_size() as i64;
    let r = comm.rank() as i64;
    let table = Tensor::zeros([w + 3, 2], (Kind::Float, d)).set_requires_grad(true);
    let dense = Tensor::zeros([3], (Kind::Float, d)).set_requires_grad(true);
    crate::ddp::define_sparse_grad(&table).map_err(|x| x.to_string())?;
    let rows = Tensor::from_slice(&[0, r + 1, r + 1]).to_device(d);
    let loss = Tensor::f_embedding(&table, &rows, -1, false, true).map_err(e)?.sum(Kind::Float) * (r + 1) as f64 + dense.sum(Kind::Float) * (r + 1) as f64;
    loss.f_backward().map_err(e)?;
    let params = [table.shallow_clone(), dense.shallow_clone()];
    crate::ddp::GradSync::with_sparse(&params, 1 << 20, &[0]).sync(comm, &params).map_err(|x| x.to_string())?;
    let g = table.grad();
    if !g.is_sparse() {
        return Err("the synced table gradient is dense".into());
    }
    let nnz = g.f_coalesce().map_err(e)?.f_values().map_err(e)?.size()[0];
    if nnz != w + 1 {
        return Err(format!("the synced gradient holds {nnz} rows, expected {}", w + 1));
    }
    let full = values(&g.f_to_dense(None, false).map_err(e)?);
    for row in 0..w + 3 {
        let want = match row {
            0 => (w + 1) as f64 / 2.0,
            k if k <= w => 2.0 * k as f64 / w as f64,
            _ => 0.0,
        };
        for c in 0..2 {
            let got = full[(row * 2 + c) as usize];
            if (got - want).abs() > 1e-6 {
                return Err(format!("row {row} of the averaged table gradient is {got}, expected {want}"));
            }
        }
    }
    expect_all(&dense.grad(), (w + 1) as f64 / 2.0, "the dense parameter's gradient")
}

fn any_flag(comm: &dyn Communicator, _d: Device) -> Result<(), String> {
    let last = comm.rank() == comm.world_size() - 1;
    if !comm.any(last).map_err(|e| e.to_string())? {
        return Err("the last rank's flag was lost".into());
    }
    if comm.any(false).map_err(|e| e.to_string())? {
        return Err("no rank raised the flag but any() said yes".into());
    }
    Ok(())
}

fn barrier(comm: &dyn Communicator, _d: Device) -> Result<(), String> {
    for _ in 0..3 {
        comm.barrier().map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn errors_not_panics(comm: &dyn Communicator, d: Device) -> Result<(), String> {
    let mut c = Tensor::zeros([2], (Kind::ComplexFloat, d));
    if comm.all_reduce(&mut c, ReduceOp::Sum).is_ok() {
        return Err("complex all-reduce should be refused".into());
    }
    let mut t = Tensor::zeros([2], (Kind::Float, d));
    if comm.broadcast(&mut t, comm.world_size() + 3).is_ok() {
        return Err("broadcast from a rank outside the world should be refused".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn single_backend_conforms() {
        let passed = super::run(&crate::comm::SingleComm, tch::Device::Cpu).unwrap();
        assert_eq!(passed.len(), super::CHECKS.len());
    }
}
