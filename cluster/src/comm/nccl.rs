//! The NCCL backend (cudarc, loaded at run time): CUDA tensors on one GPU per rank.
//!
//! Compiled only with the `cuda` feature. `libnccl.so.2` is found at run time (the
//! torch wheel's `nvidia-nccl` package provides it, and libtorch_cuda has usually
//! loaded it already); a missing library, a missing GPU or a failing NCCL call is
//! an error, never a panic. The NCCL unique id travels over a bootstrap
//! communicator (MPI under `mpirun`), which also carries byte all-gathers.

use super::{Communicator, ReduceOp};
use crate::error::CommError;
use cudarc::driver::CudaContext;
use cudarc::nccl::{result, sys};
use std::sync::Arc;
use std::panic::{catch_unwind, AssertUnwindSafe};
use tch::{Device, Kind, Tensor};

/// One NCCL communicator over all ranks, bound to this rank's GPU.
pub struct NcclComm {
    comm: sys::ncclComm_t,
    device: usize,
    bootstrap: Box<dyn Communicator>,
    /// Keeps the device's primary context alive as long as the communicator.
    _ctx: Arc<CudaContext>,
}

/// cudarc's loader panics when a symbol is missing; turn that into an error.
fn guarded<R>(call: &'static str, f: impl FnOnce() -> Result<R, result::NcclError>) -> Result<R, CommError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(CommError::Nccl { call, detail: format!("{e:?}") }),
        Err(panic) => {
            let detail = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "NCCL library could not be used".into());
            Err(CommError::NcclUnavailable(detail))
        }
    }
}

impl NcclComm {
    /// Creates the communicator: checks for a GPU and libnccl, exchanges the unique id
    /// over `bootstrap`, and initialises NCCL on GPU `device`.
    pub fn new(bootstrap: Box<dyn Communicator>, device: usize) -> Result<Self, CommError> {
        // Every rank checks its own GPU and library, then all vote, so one rank's
        // failure cannot leave the others waiting in the id exchange.
        let local = Self::check_local(bootstrap.as_ref(), device);
        if bootstrap.any(local.is_err())? {
            local?;
            return Err(CommError::NcclUnavailable("another rank could not start NCCL; see its error".into()));
        }
        let ctx = local?;
        let id_bytes = if bootstrap.rank() == 0 { Self::unique_id() } else { Ok(vec![0u8; 128]) };
        if bootstrap.any(id_bytes.is_err())? {
            id_bytes?;
            return Err(CommError::NcclUnavailable("rank 0 could not create the NCCL id; see its error".into()));
        }
        let all = bootstrap.all_gather_bytes(&id_bytes?)?;
        let mut id = sys::ncclUniqueId { internal: [0; 128] };
        for (dst, src) in id.internal.iter_mut().zip(&all[0]) {
            *dst = *src as core::ffi::c_char;
        }
        let mut comm: sys::ncclComm_t = std::ptr::null_mut();
        let (world, rank) = (bootstrap.world_size() as i32, bootstrap.rank() as i32);
        // SAFETY: `comm` is a valid out-pointer; the id is the one rank 0 created.
        guarded("ncclCommInitRank", || unsafe { result::comm_init_rank(&mut comm, world, id, rank) })?;
        Ok(NcclComm { comm, device, bootstrap, _ctx: ctx })
    }

    fn unique_id() -> Result<Vec<u8>, CommError> {
        let id = guarded("ncclGetUniqueId", result::get_uniqueid)?;
        Ok(id.internal.iter().map(|&c| c as u8).collect())
    }

    /// This rank's GPU, libnccl, and a CUDA context bound to this thread.
    fn check_local(bootstrap: &dyn Communicator, device: usize) -> Result<Arc<CudaContext>, CommError> {
        if !tch::Cuda::is_available() {
            return Err(CommError::NcclUnavailable(
                "no CUDA device is visible to libtorch (is this a GPU node, and is the CUDA torch wheel installed?)".into(),
            ));
        }
        let gpus = tch::Cuda::device_count() as usize;
        if device >= gpus {
            return Err(CommError::NcclUnavailable(format!(
                "rank {} wants GPU {device} but only {gpus} are visible",
                bootstrap.rank()
            )));
        }
        // SAFETY: only probes whether the shared library can be opened.
        if !unsafe { sys::is_culib_present() } {
            return Err(CommError::NcclUnavailable(
                "libnccl.so.2 was not found; install the nvidia-nccl wheel (it comes with the CUDA torch wheel) or add its lib directory to LD_LIBRARY_PATH".into(),
            ));
        }
        let ctx = CudaContext::new(device)
            .map_err(|e| CommError::NcclUnavailable(format!("CUDA context for GPU {device}: {e:?}")))?;
        ctx.bind_to_thread()
            .map_err(|e| CommError::NcclUnavailable(format!("binding GPU {device}: {e:?}")))?;
        Ok(ctx)
    }

    fn check(&self, t: &Tensor, op: &'static str) -> Result<sys::ncclDataType_t, CommError> {
        if t.device() != Device::Cuda(self.device) {
            return Err(CommError::WrongDevice {
                backend: "nccl",
                needed: "CUDA (this rank's GPU)",
                got: format!("{:?}", t.device()),
            });
        }
        Ok(match t.kind() {
            Kind::Float => sys::ncclDataType_t::ncclFloat32,
            Kind::Double => sys::ncclDataType_t::ncclFloat64,
            Kind::BFloat16 => sys::ncclDataType_t::ncclBfloat16,
            Kind::Half => sys::ncclDataType_t::ncclFloat16,
            Kind::Int => sys::ncclDataType_t::ncclInt32,
            Kind::Int64 => sys::ncclDataType_t::ncclInt64,
            Kind::Uint8 | Kind::Bool => sys::ncclDataType_t::ncclUint8,
            kind => return Err(CommError::UnsupportedKind { backend: "nccl", kind, op }),
        })
    }
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.bootstrap.rank()
    }
    fn world_size(&self) -> usize {
        self.bootstrap.world_size()
    }
    fn backend(&self) -> &'static str {
        "nccl"
    }

    fn all_reduce(&self, tensor: &mut Tensor, op: ReduceOp) -> Result<(), CommError> {
        // Host scalars (loss sums, stop flags) travel over the bootstrap communicator.
        if tensor.device() == Device::Cpu {
            return self.bootstrap.all_reduce(tensor, op);
        }
        let dtype = self.check(tensor, "all_reduce")?;
        let c = tensor.contiguous();
        let red = match op {
            ReduceOp::Sum => sys::ncclRedOp_t::ncclSum,
            ReduceOp::Avg => sys::ncclRedOp_t::ncclAvg,
            ReduceOp::Max => sys::ncclRedOp_t::ncclMax,
        };
        let ptr = c.data_ptr();
        let n = c.numel();
        // SAFETY: `c` is a contiguous tensor of `n` elements on this rank's GPU; the null
        // stream orders the call with libtorch's default stream.
        guarded("ncclAllReduce", || unsafe {
            result::all_reduce(ptr, ptr, n, dtype, red, self.comm, std::ptr::null_mut())
        })?;
        if c.data_ptr() != tensor.data_ptr() {
            tensor.f_copy_(&c)?;
        }
        Ok(())
    }

    fn all_reduce_many(&self, tensors: &mut [Tensor], op: ReduceOp) -> Result<(), CommError> {
        // Strided or host tensors: one at a time (a copy-back inside a group would run
        // before the grouped reduction does).
        if tensors.iter().any(|t| t.device() == Device::Cpu || !t.is_contiguous()) {
            for t in tensors.iter_mut() {
                self.all_reduce(t, op)?;
            }
            return Ok(());
        }
        // Grouping lets NCCL fuse the launches; each call is still checked.
        guarded("ncclGroupStart", result::group_start)?;
        let mut outcome = Ok(());
        for t in tensors.iter_mut() {
            if let Err(e) = self.all_reduce(t, op) {
                outcome = Err(e);
                break;
            }
        }
        guarded("ncclGroupEnd", result::group_end)?;
        outcome
    }

    fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<(), CommError> {
        if tensor.device() == Device::Cpu {
            return self.bootstrap.broadcast(tensor, root);
        }
        let dtype = self.check(tensor, "broadcast")?;
        let world = self.world_size();
        if root >= world {
            return Err(CommError::BadRoot { root, world });
        }
        let c = tensor.contiguous();
        let ptr = c.data_ptr();
        let n = c.numel();
        // SAFETY: as in all_reduce.
        guarded("ncclBroadcast", || unsafe {
            result::broadcast(ptr, ptr, n, dtype, root as i32, self.comm, std::ptr::null_mut())
        })?;
        if c.data_ptr() != tensor.data_ptr() {
            tensor.f_copy_(&c)?;
        }
        Ok(())
    }

    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CommError> {
        self.bootstrap.all_gather_bytes(bytes)
    }

    fn any(&self, flag: bool) -> Result<bool, CommError> {
        self.bootstrap.any(flag)
    }

    fn barrier(&self) -> Result<(), CommError> {
        // A one-element all-reduce drains this rank's GPU work before the host barrier.
        let mut t = Tensor::zeros([1], (Kind::Float, Device::Cuda(self.device)));
        self.all_reduce(&mut t, ReduceOp::Sum)?;
        tch::Cuda::synchronize(self.device as i64);
        self.bootstrap.barrier()
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        let comm = self.comm;
        // SAFETY: `comm` came from ncclCommInitRank and is destroyed once.
        let _ = guarded("ncclCommDestroy", || unsafe { result::comm_destroy(comm) });
    }
}
