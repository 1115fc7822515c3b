//! A communicator wrapper that counts collectives and the time spent in them, so
//! a watchdog can tell which rank has not reached the collective its peers wait
//! in, and how much of a step was computation rather than waiting.

use super::{Communicator, ReduceOp};
use crate::error::CommError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tch::Tensor;

/// Counters shared with whoever reports progress (a heartbeat thread).
#[derive(Debug, Default)]
pub struct CollectiveClock {
    /// Collectives entered so far (incremented on entry, so a rank blocked inside
    /// collective k reports k, and a rank that never reached it reports k - 1).
    entered: AtomicU64,
    /// Nanoseconds spent inside collectives.
    busy_ns: AtomicU64,
}

impl CollectiveClock {
    pub fn entered(&self) -> u64 {
        self.entered.load(Ordering::Relaxed)
    }

    pub fn busy_secs(&self) -> f64 {
        self.busy_ns.load(Ordering::Relaxed) as f64 * 1e-9
    }
}

/// Forwards every call to the inner communicator, ticking the clock.
pub struct Watched {
    inner: Box<dyn Communicator>,
    clock: Arc<CollectiveClock>,
}

impl Watched {
    pub fn new(inner: Box<dyn Communicator>, clock: Arc<CollectiveClock>) -> Watched {
        Watched { inner, clock }
    }

    /// Runs one collective, counting it on entry and timing it. `cuda` names the
    /// device of its tensors: NCCL only enqueues work, so the wait for slower
    /// peers is made to happen here (a device sync) rather than in the next
    /// computation, where it would count as compute time.
    fn timed<T>(&self, cuda: Option<usize>, f: impl FnOnce(&dyn Communicator) -> T) -> T {
        self.clock.entered.fetch_add(1, Ordering::Relaxed);
        let t0 = Instant::now();
        let out = f(self.inner.as_ref());
        if let Some(d) = cuda {
            tch::Cuda::synchronize(d as i64);
        }
        self.clock.busy_ns.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        out
    }
}

fn cuda_index(t: &Tensor) -> Option<usize> {
    match t.device() {
        tch::Device::Cuda(i) => Some(i),
        _ => None,
    }
}

impl Communicator for Watched {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world_size(&self) -> usize {
        self.inner.world_size()
    }
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn all_reduce(&self, tensor: &mut Tensor, op: ReduceOp) -> Result<(), CommError> {
        self.timed(cuda_index(tensor), |c| c.all_reduce(tensor, op))
    }
    fn all_reduce_many(&self, tensors: &mut [Tensor], op: ReduceOp) -> Result<(), CommError> {
        let cuda = tensors.first().and_then(cuda_index);
        self.timed(cuda, |c| c.all_reduce_many(tensors, op))
    }
    fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<(), CommError> {
        self.timed(cuda_index(tensor), |c| c.broadcast(tensor, root))
    }
    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CommError> {
        self.timed(None, |c| c.all_gather_bytes(bytes))
    }
    fn all_gather(&self, tensor: &Tensor) -> Result<Vec<Tensor>, CommError> {
        self.timed(cuda_index(tensor), |c| c.all_gather(tensor))
    }
    fn barrier(&self) -> Result<(), CommError> {
        self.timed(None, |c| c.barrier())
    }
    fn any(&self, flag: bool) -> Result<bool, CommError> {
        self.timed(None, |c| c.any(flag))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comm::SingleComm;

    #[test]
    fn counts_each_collective_once() {
        let clock = Arc::new(CollectiveClock::default());
        let w = Watched::new(Box::new(SingleComm), clock.clone());
        let mut t = Tensor::from_slice(&[1.0f32, 2.0]);
        w.all_reduce(&mut t, ReduceOp::Sum).unwrap();
        w.all_reduce_many(std::slice::from_mut(&mut t), ReduceOp::Sum).unwrap();
        w.barrier().unwrap();
        assert!(!w.any(false).unwrap());
        assert_eq!(clock.entered(), 4);
        assert!(clock.busy_secs() >= 0.0);
        if let Err(f) = crate::conformance::run(&w, tch::Device::Cpu) {
            panic!("{f}");
        }
    }
}
