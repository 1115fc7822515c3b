//! The [`Communicator`] trait and its backends.
//!
//! Every backend moves `tch` tensors between the ranks of one job. Collectives are
//! in place and blocking from the caller's view; a backend that can overlap
//! several reductions overrides [`Communicator::all_reduce_many`]. Which backend a
//! rank uses is decided by `kiln-worker`'s bootstrap, never here.

mod host;
pub mod mpi;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod single;
pub mod watched;

use crate::error::CommError;
use tch::{Device, Kind, Tensor};

pub use self::mpi::MpiComm;
#[cfg(feature = "cuda")]
pub use self::nccl::NcclComm;
pub use self::single::SingleComm;
pub use self::watched::{CollectiveClock, Watched};

/// How values from all ranks are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    /// Sum divided by the world size (integer kinds divide with truncation).
    Avg,
    Max,
}

/// Collectives over the ranks of one job. One conformance suite
/// ([`crate::conformance`]) holds every implementation to the same behaviour.
pub trait Communicator {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// A short name for logs and benchmarks ("single", "mpi", "nccl").
    fn backend(&self) -> &'static str;

    /// Combines `tensor` across ranks in place: afterwards every rank holds the result.
    /// Supported kinds: f32, f64, bf16, f16, i32, i64.
    fn all_reduce(&self, tensor: &mut Tensor, op: ReduceOp) -> Result<(), CommError>;

    /// Several in-place all-reduces. Backends that can keep several in flight (MPI's
    /// non-blocking collectives) override this; the default runs them one by one.
    fn all_reduce_many(&self, tensors: &mut [Tensor], op: ReduceOp) -> Result<(), CommError> {
        for t in tensors.iter_mut() {
            self.all_reduce(t, op)?;
        }
        Ok(())
    }

    /// Copies `root`'s tensor into `tensor` on every other rank (same shape and kind).
    fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<(), CommError>;

    /// Every rank's bytes, in rank order; lengths may differ between ranks.
    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CommError>;

    /// Every rank's numbers, concatenated in rank order; lengths may differ
    /// (e.g. each rank's share of an evaluation's scores, for an exact metric).
    fn all_gather_f32(&self, values: &[f32]) -> Result<Vec<f32>, CommError> {
        let bytes: Vec<u8> = values.iter().flat_map(|f| f.to_le_bytes()).collect();
        Ok(self.all_gather_bytes(&bytes)?.iter().flat_map(|p| p.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect())
    }

    /// Every rank's tensor, in rank order, on the device `tensor` is on. Shapes must
    /// agree across ranks.
    fn all_gather(&self, tensor: &Tensor) -> Result<Vec<Tensor>, CommError> {
        let device = tensor.device();
        let cpu = tensor.to_device(Device::Cpu).contiguous();
        let shape = cpu.size();
        let mut msg = encode_header(cpu.kind(), &shape)?;
        msg.extend_from_slice(&host::bytes_of(&cpu)?);
        let parts = self.all_gather_bytes(&msg)?;
        let mut out = Vec::with_capacity(parts.len());
        for (rank, part) in parts.iter().enumerate() {
            let (kind, their_shape, data) = decode_header(part)?;
            if their_shape != shape {
                return Err(CommError::ShapeMismatch { rank, shape: their_shape, expected: shape });
            }
            out.push(Tensor::f_from_data_size(data, &their_shape, kind)?.to_device(device));
        }
        Ok(out)
    }

    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<(), CommError>;

    /// Whether any rank passes `true`: the agreed stop flag that makes all ranks leave
    /// the training loop at the same step.
    fn any(&self, flag: bool) -> Result<bool, CommError> {
        let mut t = Tensor::from_slice(&[flag as i32]);
        self.all_reduce(&mut t, ReduceOp::Max)?;
        Ok(t.int64_value(&[0]) != 0)
    }
}

fn kind_code(kind: Kind) -> Result<u8, CommError> {
    Ok(match kind {
        Kind::Float => 0,
        Kind::Double => 1,
        Kind::BFloat16 => 2,
        Kind::Half => 3,
        Kind::Int => 4,
        Kind::Int64 => 5,
        Kind::Uint8 => 6,
        Kind::Bool => 7,
        other => {
            return Err(CommError::UnsupportedKind { backend: "any", kind: other, op: "all_gather" })
        }
    })
}

fn kind_of(code: u8) -> Kind {
    match code {
        0 => Kind::Float,
        1 => Kind::Double,
        2 => Kind::BFloat16,
        3 => Kind::Half,
        4 => Kind::Int,
        5 => Kind::Int64,
        6 => Kind::Uint8,
        _ => Kind::Bool,
    }
}

/// Header of a gathered tensor: kind code, rank count, then each dimension (little endian).
fn encode_header(kind: Kind, shape: &[i64]) -> Result<Vec<u8>, CommError> {
    let mut v = vec![kind_code(kind)?, shape.len() as u8];
    for d in shape {
        v.extend_from_slice(&d.to_le_bytes());
    }
    Ok(v)
}

fn decode_header(msg: &[u8]) -> Result<(Kind, Vec<i64>, &[u8]), CommError> {
    let bad = || CommError::ShapeMismatch { rank: usize::MAX, shape: vec![], expected: vec![] };
    let (&code, rest) = msg.split_first().ok_or_else(bad)?;
    let (&dims, mut rest) = rest.split_first().ok_or_else(bad)?;
    let mut shape = Vec::with_capacity(dims as usize);
    for _ in 0..dims {
        if rest.len() < 8 {
            return Err(bad());
        }
        let (d, r) = rest.split_at(8);
        let mut b = [0u8; 8];
        b.copy_from_slice(d);
        shape.push(i64::from_le_bytes(b));
        rest = r;
    }
    Ok((kind_of(code), shape, rest))
}
