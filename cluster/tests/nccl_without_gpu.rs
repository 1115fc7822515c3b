//! The NCCL backend on a machine without a GPU: a clear error, never a panic.
//! Built only with `--features cuda` (`make test` runs it that way).
#![cfg(feature = "cuda")]

use kiln_cluster::comm::{NcclComm, SingleComm};
use kiln_cluster::CommError;

#[test]
fn nccl_reports_a_missing_gpu_as_an_error() {
    if tch::Cuda::is_available() {
        eprintln!("a GPU is visible: this check is for machines without one (scripts/gpu-checks.sh covers GPUs)");
        return;
    }
    match NcclComm::new(Box::new(SingleComm), 0) {
        Err(CommError::NcclUnavailable(msg)) => assert!(msg.contains("no CUDA device"), "{msg}"),
        Err(other) => panic!("expected NcclUnavailable, got {other}"),
        Ok(_) => panic!("NCCL cannot start without a GPU"),
    }
}
