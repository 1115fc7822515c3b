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
use mpi::ffi;
use mpi::raw::AsRaw;
use mpi::Count;
use std::ffi::{c_int, c_void};
use tch::{Kind, Tensor};

extern "C" {
    /// From `mpi_shim.c`: the implementation's MPI_IN_PLACE.
    fn kiln_mpi_in_place() -> *mut c_void;
}

/// The MPI implementation's `MPI_IN_PLACE` (for benchmarks that call MPI directly).
pub fn mpi_in_place() -> *mut c_void {
    // SAFETY: returns a constant.
    unsafe { kiln_mpi_in_place() }
}

/// MPI counts are C ints: larger tensors go in pieces.
const MAX_COUNT: usize = 1 << 30;

fn chunks(n: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n).step_by(MAX_COUNT).map(move |o| (o, MAX_COUNT.min(n - o)))
}

fn mpi_op(op: ReduceOp) -> ffi::MPI_Op {
    match op {
        ReduceOp::Max => SystemOperation::max().as_raw(),
        ReduceOp::Sum | ReduceOp::Avg => SystemOperation::sum().as_raw(),
    }
}

/// MPI's default error handler aborts, so this fires only if a user installed
/// MPI_ERRORS_RETURN; it keeps a failure from passing silently.
fn check(call: &'static str, rc: c_int) -> Result<(), CommError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(CommError::MpiUnavailable(format!("{call} returned error code {rc}")))
    }
}

/// Element types MPI reduces natively.
trait HostElem: Equivalence + Copy + Default {
    fn div_world(self, world: usize) -> Self;
}
macro_rules! host_elem {
    ($($t:ty),*) => {$(
        impl HostElem for $t {
            fn div_world(self, world: usize) -> Self {
                self / world as $t
            }
        }
    )*};
}
host_elem!(f32, f64, i32, i64);

/// MPI_COMM_WORLD of this process. Dropping it finalises MPI.
pub struct MpiComm {
    world: SimpleCommunicator,
    /// Reduce several buckets with MPI_Iallreduce instead of one blocking call each.
    nonblocking: bool,
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
        let nonblocking = std::env::var("KILN_MPI_NONBLOCKING").is_ok_and(|v| v == "1");
        Ok(MpiComm { world, nonblocking, _universe: universe })
    }

    /// The raw rsmpi world, for benchmarks that compare against MPI without kiln's layer.
    pub fn raw_world(&self) -> &SimpleCommunicator {
        &self.world
    }

    /// In-place blocking MPI_Allreduce (MPI_IN_PLACE: no extra buffer, no copy
    /// back) of one contiguous CPU tensor of element type `T`, then the division for
    /// `Avg`. Blocking on purpose: Open MPI 4's non-blocking collectives (libnbc) took
    /// about twice as long per byte here (docs/src/benchmarks.md).
    fn reduce_native<T: HostElem>(&self, t: &mut Tensor, op: ReduceOp) -> Result<(), CommError> {
        let (ptr, n) = (t.data_ptr() as *mut T, t.numel());
        // (An empty tensor yields no chunks, so its null data pointer is never used.)
        for (offset, len) in chunks(n) {
            // SAFETY: `ptr` points at `n` elements of `T` (a contiguous CPU tensor of the
            // matching kind, checked by the callers); MPI writes only within
            // [offset, offset + len).
            let rc = unsafe {
                ffi::MPI_Allreduce(
                    kiln_mpi_in_place(),
                    ptr.add(offset) as *mut c_void,
                    len as c_int,
                    T::equivalent_datatype().as_raw(),
                    mpi_op(op),
                    self.world.as_raw(),
                )
            };
            check("MPI_Allreduce", rc)?;
        }
        self.finish_avg::<T>(t, op);
        Ok(())
    }

    fn finish_avg<T: HostElem>(&self, t: &mut Tensor, op: ReduceOp) {
        if op == ReduceOp::Avg {
            let world = self.world_size();
            with_slice_mut::<T, _>(t, |xs| xs.iter_mut().for_each(|x| *x = x.div_world(world)));
        }
    }

    /// Same-kind contiguous CPU tensors reduced in place with non-blocking
    /// MPI_Iallreduce, all in flight at once, then one MPI_Waitall and the division
    /// for `Avg`. Used when `KILN_MPI_NONBLOCKING=1`: it pays off only where the MPI
    /// library's non-blocking collectives are as fast as its blocking ones.
    fn reduce_many_native<T: HostElem>(&self, ts: &mut [Tensor], op: ReduceOp) -> Result<(), CommError> {
        let mut requests: Vec<ffi::MPI_Request> = Vec::new();
        for t in ts.iter() {
            let (ptr, n) = (t.data_ptr() as *mut T, t.numel());
            for (offset, len) in chunks(n) {
                // SAFETY: `ptr` points at `n` elements of `T` (a contiguous CPU tensor of
                // the matching kind, checked by the callers); MPI writes only within
                // [offset, offset + len); the tensors outlive the Waitall below and
                // nothing else touches them until then.
                let mut req = unsafe { ffi::RSMPI_REQUEST_NULL };
                // SAFETY: see above.
                let rc = unsafe {
                    ffi::MPI_Iallreduce(
                        kiln_mpi_in_place(),
                        ptr.add(offset) as *mut c_void,
                        len as c_int,
                        T::equivalent_datatype().as_raw(),
                        mpi_op(op),
                        self.world.as_raw(),
                        &mut req,
                    )
                };
                check("MPI_Iallreduce", rc)?;
                requests.push(req);
            }
        }
        // SAFETY: MPI_Status is plain data; Waitall fills one per request.
        let mut statuses: Vec<ffi::MPI_Status> = (0..requests.len()).map(|_| unsafe { std::mem::zeroed() }).collect();
        let rc = unsafe { ffi::MPI_Waitall(requests.len() as c_int, requests.as_mut_ptr(), statuses.as_mut_ptr()) };
        check("MPI_Waitall", rc)?;
        for t in ts.iter_mut() {
            self.finish_avg::<T>(t, op);
        }
        Ok(())
    }

    fn dispatch(&self, t: &mut Tensor, op: ReduceOp) -> Result<(), CommError> {
        match t.kind() {
            Kind::Float => self.reduce_native::<f32>(t, op),
            Kind::Double => self.reduce_native::<f64>(t, op),
            Kind::Int => self.reduce_native::<i32>(t, op),
            Kind::Int64 => self.reduce_native::<i64>(t, op),
            kind => Err(CommError::UnsupportedKind { backend: "mpi", kind, op: "all_reduce" }),
        }
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
        if !uniform || !is_native(first) || !self.nonblocking {
            // Blocking calls one after another (the default), or tensors that need
            // conversion (mixed kinds, strided, 16-bit).
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
    }

    fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<(), CommError> {
        check_cpu("mpi", tensor)?;
        let world = self.world_size();
        if root >= world {
            return Err(CommError::BadRoot { root, world });
        }
        let c = tensor.contiguous();
        let nbytes = c.numel() * c.kind().elt_size_in_bytes();
        if nbytes == 0 {
            return Ok(());
        }
        // SAFETY: `c` is a contiguous CPU tensor of `nbytes` bytes, borrowed for the call.
        let buf = unsafe { std::slice::from_raw_parts_mut(c.data_ptr() as *mut u8, nbytes) };
        // MPI counts are C ints: tensors over 1 GiB go in pieces.
        for piece in buf.chunks_mut(MAX_COUNT) {
            self.world.process_at_rank(root as i32).broadcast_into(piece);
        }
        if c.data_ptr() != tensor.data_ptr() {
            tensor.f_copy_(&c)?;
        }
        Ok(())
    }

    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CommError> {
        let world = self.world_size();
        let len = Count::try_from(bytes.len()).map_err(|_| {
            CommError::MpiUnavailable(format!("all-gather of {} bytes exceeds MPI's 2 GiB message limit", bytes.len()))
        })?;
        let mut lens = vec![0 as Count; world];
        self.world.all_gather_into(&len, &mut lens[..]);
        let mut displs = Vec::with_capacity(world);
        let mut total: Count = 0;
        for l in &lens {
            displs.push(total);
            total = total.checked_add(*l).ok_or_else(|| {
                CommError::MpiUnavailable("all-gather over all ranks exceeds MPI's 2 GiB message limit".into())
            })?;
        }
        if total == 0 {
            // Every rank sends nothing (all know it from the lengths): MPI is
            // not asked to move zero bytes into an empty buffer.
            return Ok(vec![Vec::new(); world]);
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
