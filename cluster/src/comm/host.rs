//! Views of host (CPU) tensors as typed slices, for backends that hand raw memory
//! to a C library.

use crate::error::CommError;
use tch::{Device, Kind, Tensor};

/// The kinds a host backend reduces natively; bf16/f16 are widened to f32 first
/// because MPI has no 16-bit float type.
pub(crate) fn check_cpu(backend: &'static str, t: &Tensor) -> Result<(), CommError> {
    if t.device() != Device::Cpu {
        return Err(CommError::WrongDevice {
            backend,
            needed: "CPU",
            got: format!("{:?}", t.device()),
        });
    }
    Ok(())
}

/// The raw bytes of a tensor (a contiguous copy is made when needed).
pub(crate) fn bytes_of(t: &Tensor) -> Result<Vec<u8>, CommError> {
    let t = t.to_device(Device::Cpu).contiguous();
    let n = t.numel() * t.kind().elt_size_in_bytes();
    let mut out = vec![0u8; n];
    t.f_copy_data_u8(&mut out, t.numel())?;
    Ok(out)
}

/// Runs `f` over the elements of a contiguous CPU tensor of element type `T`.
///
/// # Safety contract upheld here
/// The tensor is contiguous, on the CPU, of the kind matching `T`, and stays
/// borrowed for the duration of `f`.
pub(crate) fn with_slice_mut<T, R>(t: &mut Tensor, f: impl FnOnce(&mut [T]) -> R) -> R {
    debug_assert!(t.is_contiguous());
    let n = t.numel();
    if n == 0 {
        // libtorch gives empty tensors a null data pointer.
        return f(&mut []);
    }
    // SAFETY: see the contract above; `data_ptr` points at `n` elements of `T`.
    let slice = unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut T, n) };
    f(slice)
}

/// Element kinds that host backends move without conversion.
pub(crate) fn is_native(kind: Kind) -> bool {
    matches!(kind, Kind::Float | Kind::Double | Kind::Int | Kind::Int64)
}
