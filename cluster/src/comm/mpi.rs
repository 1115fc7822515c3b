//! The MPI backend (rsmpi over Open MPI): CPU tensors, ranks started by `mpirun`
//! or `srun --mpi=pmix`.
//!
//! MPI has no 16-bit float types, so bf16 and f16 tensors are widened to f32 for the
//! reduction and narrowed back; sums of bf16 values are therefore more exact than a
//! bf16 ring would give, never less.

use super::host::{check_cpu, is_native, with_slice_mut};
use super::{Communicator, ReduceOp};
use crate::error::CommError;
use mpi::collective::SystemOperation;
use mpi::datatype::{Equivalence, PartitionMut};
use mpi::environment::Universe;
use mpi::topology::{Communicator as _, SimpleCommunicator};
use mpi::traits::*;
use mpi::Count;
use tch::{Kind, Tensor};

/// Element types MPI reduces natively.
trait HostElem: Equivalence + Copy + Default {
    fn div_world(self, world: usize) -> Self;
}
impl HostElem for f32 {
    fn div_world(self, world: usize) -> Self {
        self / world as f32
    }
}
impl HostElem for f64 {
    fn div_world(self, world: usize) -> Self {
        self / world as f64
    }
}
impl HostElem for i32 {
    fn div_world(self, world: usize) -> Self {
        self / world as i32
    }
}
impl HostElem for i64 {
    fn div_world(self, world: usize) -> Self {
        self / world as i64
    }
}

/// MPI_COMM_WORLD of this process. Dropping it finalises MPI.
pub struct MpiComm {
    world: SimpleCommunicator,
    // Kept last so MPI is finalised after `world` is released.
    _universe: Universe,
}

impl MpiComm {
    /// Initialises MPI. Fails (rather than aborting) when MPI was already initialised
    /// in this process.
    pub fn init() -> Result<Self, CommError> {
        let universe = mpi::initialize().ok_or_else(|| {
            CommError::MpiUnavailable("MPI was already initialised in this process".into())
        })?;
        let world = universe.world();
        Ok(MpiComm { world, _universe: universe })
    }

    /// The raw rsmpi world, for benchmarks that compare against MPI without kiln's layer.
    pub fn raw_world(&self) -> &SimpleCommunicator {
        &self.world
    }

    fn reduce_native<T: HostElem>(&self, t: &mut Tensor, op: ReduceOp) {
        let n = t.numel();
        let mut recv = vec![T::default(); n];
        with_slice_mut::<T, _>(t, |send| match op {
            ReduceOp::Max => self.world.all_reduce_into(&send[..], &mut recv[..], SystemOperation::max()),
            ReduceOp::Sum | ReduceOp::Avg => {
                self.world.all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum())
            }
        });
        let world = self.world_size();
        with_slice_mut::<T, _>(t, |dst| {
            if op == ReduceOp::Avg {
                for (d, r) in dst.iter_mut().zip(&recv) {
                    *d = r.div_world(world);
                }
            } else {
                dst.copy_from_slice(&recv);
            }
        });
    }

    /// Reduces several same-kind contiguous tensors with non-blocking MPI_Iallreduce,
    /// all in flight at once.
    fn reduce_many_native<T: HostElem>(&self, ts: &mut [Tensor], op: ReduceOp) {
        let mut recvs: Vec<Vec<T>> = ts.iter().map(|t| vec![T::default(); t.numel()]).collect();
        let sends: Vec<&[T]> = ts
            .iter()
            // SAFETY: each tensor is contiguous, on the CPU and of kind `T` (checked by the
            // caller) and outlives the scope below, in which nothing writes to it.
            .map(|t| unsafe { std::slice::from_raw_parts(t.data_ptr() as *const T, t.numel()) })
            .collect();
        mpi::request::scope(|scope| {
            let mut reqs = Vec::with_capacity(sends.len());
            for (s, r) in sends.iter().zip(recvs.iter_mut()) {
                let req = match op {
                    ReduceOp::Max => self.world.immediate_all_reduce_into(
                        scope,
                        *s,
                        &mut r[..],
                        SystemOperation::max(),
                    ),
                    ReduceOp::Sum | ReduceOp::Avg => self.world.immediate_all_reduce_into(
                        scope,
                        *s,
                        &mut r[..],
                        SystemOperation::sum(),
                    ),
                };
                reqs.push(req);
            }
            for req in reqs {
                req.wait_without_status();
            }
        });
        let world = self.world_size();
        for (t, recv) in ts.iter_mut().zip(&recvs) {
            with_slice_mut::<T, _>(t, |dst| {
                if op == ReduceOp::Avg {
                    for (d, r) in dst.iter_mut().zip(recv) {
                        *d = r.div_world(world);
                    }
                } else {
                    dst.copy_from_slice(recv);
                }
            });
        }
    }

    fn dispatch(&self, t: &mut Tensor, op: ReduceOp) -> Result<(), CommError> {
        match t.kind() {
            Kind::Float => self.reduce_native::<f32>(t, op),
            Kind::Double => self.reduce_native::<f64>(t, op),
            Kind::Int => self.reduce_native::<i32>(t, op),
            Kind::Int64 => self.reduce_native::<i64>(t, op),
            kind => return Err(CommError::UnsupportedKind { backend: "mpi", kind, op: "all_reduce" }),
        }
        Ok(())
    }
}

impl Communicator for MpiComm {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }
    fn world_size(&self) -> usize {
        self.world.size() as usize
    }
    fn backend(&self) -> &'static str {
        "mpi"
    }

    fn all_reduce(&self, tensor: &mut Tensor, op: ReduceOp) -> Result<(), CommError> {
        check_cpu("mpi", tensor)?;
        let kind = tensor.kind();
        if matches!(kind, Kind::BFloat16 | Kind::Half) {
            let mut wide = tensor.to_kind(Kind::Float).contiguous();
            self.dispatch(&mut wide, op)?;
            tensor.f_copy_(&wide.to_kind(kind))?;
            return Ok(());
        }
        if !is_native(kind) {
            return Err(CommError::UnsupportedKind { backend: "mpi", kind, op: "all_reduce" });
        }
        if tensor.is_contiguous() {
            self.dispatch(tensor, op)
        } else {
            let mut c = tensor.contiguous();
            self.dispatch(&mut c, op)?;
            tensor.f_copy_(&c)?;
            Ok(())
        }
    }

    fn all_reduce_many(&self, tensors: &mut [Tensor], op: ReduceOp) -> Result<(), CommError> {
        let first = match tensors.first() {
            Some(t) => t.kind(),
            None => return Ok(()),
        };
        let uniform = tensors
            .iter()
            .all(|t| t.kind() == first && t.is_contiguous() && t.device() == tch::Device::Cpu);
        if !uniform || !is_native(first) {
            // Mixed kinds, strided or 16-bit tensors: one at a time, with conversion.
            for t in tensors.iter_mut() {
                self.all_reduce(t, op)?;
            }
            return Ok(());
        }
        match first {
            Kind::Float => self.reduce_many_native::<f32>(tensors, op),
            Kind::Double => self.reduce_many_native::<f64>(tensors, op),
            Kind::Int => self.reduce_many_native::<i32>(tensors, op),
            _ => self.reduce_many_native::<i64>(tensors, op),
        }
        Ok(())
    }

    fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<(), CommError> {
        check_cpu("mpi", tensor)?;
        let world = self.world_size();
        if root >= world {
            return Err(CommError::BadRoot { root, world });
        }
        let c = tensor.contiguous();
        let nbytes = c.numel() * c.kind().elt_size_in_bytes();
        // SAFETY: `c` is a contiguous CPU tensor of `nbytes` bytes, borrowed for the call.
        let buf = unsafe { std::slice::from_raw_parts_mut(c.data_ptr() as *mut u8, nbytes) };
        self.world.process_at_rank(root as i32).broadcast_into(buf);
        if c.data_ptr() != tensor.data_ptr() {
            tensor.f_copy_(&c)?;
        }
        Ok(())
    }

    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CommError> {
        let world = self.world_size();
        let len = bytes.len() as Count;
        let mut lens = vec![0 as Count; world];
        self.world.all_gather_into(&len, &mut lens[..]);
        let mut displs = Vec::with_capacity(world);
        let mut total: Count = 0;
        for l in &lens {
            displs.push(total);
            total += l;
        }
        let mut buf = vec![0u8; total as usize];
        {
            let mut part = PartitionMut::new(&mut buf[..], &lens[..], &displs[..]);
            self.world.all_gather_varcount_into(bytes, &mut part);
        }
        Ok(lens
            .iter()
            .zip(&displs)
            .map(|(&l, &d)| buf[d as usize..(d + l) as usize].to_vec())
            .collect())
    }

    fn barrier(&self) -> Result<(), CommError> {
        self.world.barrier();
        Ok(())
    }
}
