//! The backend of a one-rank job: every collective is the identity.

use super::{Communicator, ReduceOp};
use crate::error::CommError;
use tch::Tensor;

/// A world of one.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleComm;

impl Communicator for SingleComm {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn backend(&self) -> &'static str {
        "single"
    }
    fn all_reduce(&self, tensor: &mut Tensor, _op: ReduceOp) -> Result<(), CommError> {
        // Sum, average and max of one value are the value; still reject kinds the
        // other backends reject, so a bug shows on one rank as it would on many.
        match tensor.kind() {
            tch::Kind::Float
            | tch::Kind::Double
            | tch::Kind::BFloat16
            | tch::Kind::Half
            | tch::Kind::Int
            | tch::Kind::Int64 => Ok(()),
            kind => Err(CommError::UnsupportedKind { backend: "single", kind, op: "all_reduce" }),
        }
    }
    fn broadcast(&self, _tensor: &mut Tensor, root: usize) -> Result<(), CommError> {
        if root != 0 {
            return Err(CommError::BadRoot { root, world: 1 });
        }
        Ok(())
    }
    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CommError> {
        Ok(vec![bytes.to_vec()])
    }
    fn barrier(&self) -> Result<(), CommError> {
        Ok(())
    }
}
