//! Rank start-up: which communicator, how many threads, which device.

use crate::error::WorkerError;
use kiln_cluster::comm::{CollectiveClock, MpiComm, SingleComm, Watched};
use std::sync::Arc;
use kiln_cluster::{Communicator, Topology};
use tch::Device;

/// A started rank.
pub struct Rank {
    pub topology: Topology,
    pub comm: Box<dyn Communicator>,
    /// Collectives entered and time spent in them (read by the heartbeat).
    pub clock: Arc<CollectiveClock>,
    pub device: Device,
    pub threads: usize,
}

/// Reads the topology from the launcher's environment, initialises MPI when the
/// rank was started by `mpirun`/`srun`, shares the host's cores among co-located
/// ranks, and picks the device (`cpu`, `cuda`, or `auto`).
pub fn bootstrap(device_pref: &str) -> Result<Rank, WorkerError> {
    let topology = Topology::from_env();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let threads = topology.intra_op_threads(cores);
    tch::set_num_threads(threads as i32);

    if topology.world_size > 1 && !topology.launched_by_mpi() {
        return Err(WorkerError::Spec(format!(
            "this process says it is rank {} of {} ({} variables) but kiln ranks talk over MPI: start them with `kiln run --ranks N`, mpirun or srun --mpi=pmix",
            topology.rank, topology.world_size, topology.source
        )));
    }
    // "auto" takes a GPU only where its ranks can all-reduce on it: one rank, or a
    // build with the `cuda` feature (NCCL).
    let cuda = tch::Cuda::is_available() && (cfg!(feature = "cuda") || topology.world_size == 1 || device_pref == "cuda");
    let device = match device_pref {
        "cpu" => Device::Cpu,
        "cuda" if !cuda => {
            return Err(WorkerError::Spec(
                "train.device = \"cuda\" but libtorch sees no GPU on this node; use \"cpu\" or \"auto\"".into(),
            ))
        }
        "cuda" | "auto" if cuda => Device::Cuda(topology.local_rank % tch::Cuda::device_count().max(1) as usize),
        _ => Device::Cpu,
    };

    let host: Box<dyn Communicator> = if topology.launched_by_mpi() {
        Box::new(MpiComm::init()?)
    } else {
        Box::new(SingleComm)
    };
    let comm = match device {
        Device::Cuda(i) => gpu_comm(host, i)?,
        _ => host,
    };
    tracing::info!(
        rank = topology.rank,
        world = topology.world_size,
        local_rank = topology.local_rank,
        backend = comm.backend(),
        ?device,
        threads,
        "rank started"
    );
    let clock = Arc::new(CollectiveClock::default());
    let comm: Box<dyn Communicator> = Box::new(Watched::new(comm, clock.clone()));
    Ok(Rank { topology, comm, clock, device, threads })
}

#[cfg(feature = "cuda")]
fn gpu_comm(host: Box<dyn Communicator>, gpu: usize) -> Result<Box<dyn Communicator>, WorkerError> {
    if host.world_size() == 1 {
        return Ok(host);
    }
    Ok(Box::new(kiln_cluster::comm::NcclComm::new(host, gpu)?))
}

#[cfg(not(feature = "cuda"))]
fn gpu_comm(host: Box<dyn Communicator>, _gpu: usize) -> Result<Box<dyn Communicator>, WorkerError> {
    if host.world_size() == 1 {
        return Ok(host);
    }
    Err(WorkerError::Spec(
        "this kiln was built without the `cuda` feature, so GPU ranks cannot all-reduce; rebuild with `cargo build --release --features cuda` or set train.device = \"cpu\"".into(),
    ))
}
