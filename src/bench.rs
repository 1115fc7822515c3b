//! `kiln bench`: measurements, never assertions. Every number in
//! docs/benchmarks.md comes from one of these commands.

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use kiln_cluster::checkpoint::{encode_tensors, encode_tensors_into, reclaim, CheckpointStore, SaveMeta, Shard};
use kiln_cluster::comm::MpiComm;
use kiln_cluster::launch::mpirun;
use kiln_cluster::{Communicator, ReduceOp};
use mpi::collective::SystemOperation;
use mpi::datatype::Equivalence;
use mpi::raw::AsRaw;
use mpi::traits::*;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// All-reduce time and bus bandwidth per size under N MPI ranks, against raw MPI
    /// on the same buffers and against this machine's memcpy bandwidth.
    Allreduce {
        #[arg(long, default_value_t = 2)]
        ranks: u32,
        /// Smallest message, e.g. 1KiB.
        #[arg(long, default_value = "1KiB")]
        min: String,
        /// Largest message, e.g. 256MiB.
        #[arg(long, default_value = "256MiB")]
        max: String,
        /// Timed iterations per size (fewer for large sizes, at least 3).
        #[arg(long, default_value_t = 20)]
        iters: usize,
    },
    /// One rank of `bench allreduce` (started by it under mpirun).
    #[command(hide = true)]
    AllreduceRank { min: usize, max: usize, iters: usize },
    /// Checkpoint write and read throughput for a store, and the training stall an
    /// asynchronous checkpoint causes.
    Checkpoint {
        /// Store URL: a directory, file://…, memory:// or s3://bucket/prefix.
        #[arg(long, default_value = "runs/bench-store")]
        store: String,
        /// Checkpoint size in MiB.
        #[arg(long, default_value_t = 256)]
        mb: usize,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
    },
}

/// Parses sizes such as 1024, 4KiB, 256MiB, 1GiB.
pub fn parse_size(s: &str) -> Result<usize> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num.parse().map_err(|_| anyhow!("'{s}' is not a size like 1KiB, 64MiB or 4096"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        u => bail!("unknown size unit '{u}' in '{s}' (use KiB, MiB or GiB)"),
    };
    Ok(n * mult)
}

fn human(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{}GiB", b >> 30),
        b if b >= 1 << 20 => format!("{}MiB", b >> 20),
        b if b >= 1 << 10 => format!("{}KiB", b >> 10),
        b => format!("{b}B"),
    }
}

pub fn bench(cmd: BenchCommand) -> Result<i32> {
    match cmd {
        BenchCommand::Allreduce { ranks, min, max, iters } => {
            let (min, max) = (parse_size(&min)?, parse_size(&max)?);
            if min < 4 || max < min {
                bail!("need 4 <= --min <= --max");
            }
            let exe = std::env::current_exe()?;
            let status = mpirun(ranks as usize, exe)
                .args(["bench", "allreduce-rank", &min.to_string(), &max.to_string(), &iters.to_string()])
                .status()
                .context("starting mpirun (scripts/setup.sh installs Open MPI)")?;
            Ok(status.code().unwrap_or(1))
        }
        BenchCommand::AllreduceRank { min, max, iters } => allreduce_rank(min, max, iters),
        BenchCommand::Checkpoint { store, mb, repeats } => checkpoint(&store, mb, repeats),
    }
}

/// Timed rounds per size and variant in `bench allreduce`.
const ROUNDS: usize = 3;

/// The slowest rank's mean time per iteration.
fn slowest(comm: &MpiComm, secs: f64) -> Result<f64> {
    let mut t = Tensor::from_slice(&[secs]);
    comm.all_reduce(&mut t, ReduceOp::Max)?;
    Ok(t.double_value(&[0]))
}

fn allreduce_rank(min: usize, max: usize, iters: usize) -> Result<i32> {
    tch::set_num_threads(1);
    let comm = MpiComm::init()?;
    let world = comm.world_size();
    let rank = comm.rank();
    let raw = comm.raw_world();
    let bus = 2.0 * (world as f64 - 1.0) / world as f64;
    if rank == 0 {
        println!("# kiln bench allreduce: {world} ranks, f32 sum, backend {} (Open MPI MPI_Allreduce)", comm.backend());
        println!("# busbw = size/time * 2(n-1)/n, as nccl-tests; time = slowest rank's mean, best of {ROUNDS} interleaved rounds");
        println!("# raw = rsmpi all_reduce_into (separate send/recv Vecs); inplace = MPI_Allreduce(MPI_IN_PLACE) on the same tensor memory kiln reduces");
        println!(
            "{:>9} {:>6} {:>10} {:>9} {:>10} {:>9} {:>12} {:>9} {:>10}",
            "size", "iters", "kiln_us", "kiln_GB/s", "raw_us", "raw_GB/s", "inplace_us", "inp_GB/s", "kiln/inp"
        );
    }
    let mut size = min;
    while size <= max {
        let n = size / 4;
        let it = iters.min((1usize << 30) / size.max(1)).max(3);
        let mut t = Tensor::ones([n as i64], (Kind::Float, Device::Cpu));
        let send = vec![1.0f32; n];
        let mut recv = vec![0.0f32; n];
        // The raw in-place baseline reduces the very same tensor memory kiln does.
        let buf = t.data_ptr();
        let in_place = |buf: *mut std::ffi::c_void| {
            // SAFETY: `buf` is the data of `t`, a contiguous CPU f32 tensor of `n`
            // values that lives until the end of this size's measurements.
            unsafe {
                mpi::ffi::MPI_Allreduce(
                    kiln_cluster::comm::mpi::mpi_in_place(),
                    buf,
                    n as i32,
                    f32::equivalent_datatype().as_raw(),
                    SystemOperation::sum().as_raw(),
                    raw.as_raw(),
                )
            }
        };
        // Warm-up, then ROUNDS rounds that interleave the three variants; each
        // variant's time is its best round (the machine's noise only adds time).
        comm.all_reduce(&mut t, ReduceOp::Sum)?;
        raw.all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
        in_place(buf);
        let (mut ours, mut theirs, mut inplace) = (f64::MAX, f64::MAX, f64::MAX);
        for _ in 0..ROUNDS {
            comm.barrier()?;
            let t0 = Instant::now();
            for _ in 0..it {
                comm.all_reduce(&mut t, ReduceOp::Sum)?;
            }
            ours = ours.min(slowest(&comm, t0.elapsed().as_secs_f64() / it as f64)?);
            comm.barrier()?;
            let t0 = Instant::now();
            for _ in 0..it {
                raw.all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
            }
            theirs = theirs.min(slowest(&comm, t0.elapsed().as_secs_f64() / it as f64)?);
            comm.barrier()?;
            let t0 = Instant::now();
            for _ in 0..it {
                in_place(buf);
            }
            inplace = inplace.min(slowest(&comm, t0.elapsed().as_secs_f64() / it as f64)?);
        }
        if rank == 0 {
            let gbs = |s: f64| size as f64 / s / 1e9 * bus;
            println!(
                "{:>9} {:>6} {:>10.1} {:>9.3} {:>10.1} {:>9.3} {:>12.1} {:>9.3} {:>10.3}",
                human(size),
                it,
                ours * 1e6,
                gbs(ours),
                theirs * 1e6,
                gbs(theirs),
                inplace * 1e6,
                gbs(inplace),
                inplace / ours
            );
        }
        size *= 2;
    }
    if rank == 0 {
        let bytes = max.max(64 << 20);
        let src = vec![1u8; bytes];
        let mut dst = vec![0u8; bytes];
        dst.copy_from_slice(&src);
        let reps = 5;
        let t0 = Instant::now();
        for i in 0..reps {
            dst.copy_from_slice(&src);
            std::hint::black_box(&dst[i]);
        }
        let secs = t0.elapsed().as_secs_f64() / reps as f64;
        println!("# memcpy {}: {:.2} GB/s (one core, bytes copied per second)", human(bytes), bytes as f64 / secs / 1e9);
    }
    Ok(0)
}

fn checkpoint(url: &str, mb: usize, repeats: usize) -> Result<i32> {
    let store = CheckpointStore::open(url, "bench")?;
    store.check_writable()?;
    let n = (mb << 20) / 4;
    let params = vec![("w".to_string(), Tensor::randn([n as i64], (Kind::Float, Device::Cpu)))];
    println!("# kiln bench checkpoint: store {url}, {mb} MiB per checkpoint, {repeats} repeats");
    println!("{:>6} {:>10} {:>10} {:>12} {:>12}", "rep", "write_MB/s", "read_MB/s", "sync_ms", "async_stall_ms");
    let base = store.committed_steps()?.first().copied().unwrap_or(0);
    let mut spare: Vec<Vec<u8>> = Vec::new();
    for r in 0..repeats {
        let step = base + 1 + 2 * r as u64;
        let meta = |step| SaveMeta { step, world_size: 1, spec_hash: "bench".into() };
        // Synchronous: snapshot + upload + commit.
        let t0 = Instant::now();
        let data = encode_tensors(&params)?;
        store.save(meta(step), vec![Shard { name: "model.safetensors".into(), data }])?;
        let sync = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        store.load_step(step)?;
        let read = t0.elapsed().as_secs_f64();
        // Asynchronous, as the training loop does it: the stall is the host snapshot
        // (into the buffer of the previous upload) and the hand-off only.
        let t0 = Instant::now();
        let data = encode_tensors_into(&params, spare.pop().unwrap_or_default())?;
        let pending = store.save_async(meta(step + 1), vec![Shard { name: "model.safetensors".into(), data }]);
        let stall = t0.elapsed().as_secs_f64();
        spare = reclaim(pending.wait()?);
        let bytes = (mb << 20) as f64;
        println!("{:>6} {:>10.1} {:>10.1} {:>12.1} {:>12.1}", r, bytes / sync / 1e6, bytes / read / 1e6, sync * 1e3, stall * 1e3);
    }
    store.retain(1)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1KiB").unwrap(), 1024);
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("MiB").is_err());
        assert_eq!(human(256 << 20), "256MiB");
    }
}
