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
    /// Rollout throughput: kiln's batched generation (KV cache) on a random
    /// Qwen2 against `transformers` `generate()` on the same model folder,
    /// batch and lengths (greedy; needs the project's .venv).
    Generate {
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 64)]
        prompt: usize,
        #[arg(long, default_value_t = 64)]
        new: usize,
        #[arg(long, default_value_t = 256)]
        hidden: i64,
        #[arg(long, default_value_t = 4)]
        layers: i64,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
    },
    /// Coordinator submission load: N jobs from C concurrent clients over
    /// loopback (a held coordinator of its own unless --coordinator is given),
    /// jobs/s and latency percentiles; optionally `sbatch` submissions, the call
    /// submitit and TorchX make per job, timed on the same machine.
    Submit {
        #[arg(long, default_value_t = 1000)]
        jobs: usize,
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// An existing coordinator (KILN_TOKEN must be set); default: start one.
        #[arg(long)]
        coordinator: Option<String>,
        /// Also time this many sequential `sbatch --hold` submissions (0: skip).
        #[arg(long, default_value_t = 0)]
        sbatch: usize,
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
        BenchCommand::Submit { jobs, clients, coordinator, sbatch } => submit_load(jobs, clients, coordinator, sbatch),
        BenchCommand::Generate { batch, prompt, new, hidden, layers, repeats } => generate_bench(batch, prompt, new, hidden, layers, repeats),
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report_latencies(what: &str, mut lat: Vec<f64>, wall: f64) {
    lat.sort_by(f64::total_cmp);
    println!(
        "{what}: {} submissions in {wall:.2} s = {:.0} jobs/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        lat.len() as f64 / wall,
        percentile(&lat, 0.5) * 1e3,
        percentile(&lat, 0.99) * 1e3,
        lat.last().copied().unwrap_or(f64::NAN) * 1e3
    );
}

/// Kills the coordinator this benchmark started.
struct Owned {
    child: std::process::Child,
    _state: tempfile_dir::Dir,
}

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

mod tempfile_dir {
    /// A directory removed on drop (the benchmark's coordinator state).
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn submit_load(jobs: usize, clients: usize, coordinator: Option<String>, sbatch: usize) -> Result<i32> {
    if clients == 0 || jobs == 0 {
        bail!("--jobs and --clients must be at least 1");
    }
    let (url, token, _owned) = match coordinator {
        Some(u) => (u, std::env::var("KILN_TOKEN").context("KILN_TOKEN must hold a token of that coordinator")?, None),
        None => {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let dir = std::env::temp_dir().join(format!("kiln-bench-submit-{}", std::process::id()));
            let token = "bench-token-0123456789abcdef".to_string();
            let child = std::process::Command::new(std::env::current_exe()?)
                .args(["coordinator", "--hold", "--slots", "1024", "--listen", &format!("127.0.0.1:{port}"), "--state-dir"])
                .arg(&dir)
                .env("KILN_TOKEN", &token)
                .env("RUST_LOG", "warn")
                .spawn()
                .context("starting a coordinator")?;
            let owned = Owned { child, _state: tempfile_dir::Dir(dir) };
            let url = format!("http://127.0.0.1:{port}");
            let t0 = Instant::now();
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if t0.elapsed().as_secs() > 30 {
                    bail!("the benchmark's coordinator did not come up");
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            (url, token, Some(owned))
        }
    };
    let spec = include_str!("../examples/quickstart.toml").to_string();
    let run = |n: usize, c: usize, tag: &str| -> Result<(Vec<f64>, f64)> {
        let t0 = Instant::now();
        let handles: Vec<_> = (0..c)
            .map(|t| {
                let (url, token, spec, tag) = (url.clone(), token.clone(), spec.clone(), tag.to_string());
                let share = n / c + usize::from(t < n % c);
                std::thread::spawn(move || -> Result<Vec<f64>> {
                    let client = kiln_coordinator::client::Client::new(&url, &token)?;
                    let mut lat = Vec::with_capacity(share);
                    for i in 0..share {
                        let key = format!("{tag}-{t}-{i}");
                        let s = Instant::now();
                        client.submit(&spec, None, None, Some(&key))?;
                        lat.push(s.elapsed().as_secs_f64());
                    }
                    Ok(lat)
                })
            })
            .collect();
        let mut lat = Vec::new();
        for h in handles {
            lat.extend(h.join().map_err(|_| anyhow!("a client thread panicked"))??);
        }
        Ok((lat, t0.elapsed().as_secs_f64()))
    };
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
    let (lat, wall) = run(jobs, clients, &format!("bench{stamp}c"))?;
    report_latencies(&format!("kiln submit, {clients} concurrent clients"), lat, wall);
    let seq = jobs.min(200);
    let (lat, wall) = run(seq, 1, &format!("bench{stamp}s"))?;
    report_latencies("kiln submit, 1 client (sequential)", lat, wall);
    if sbatch > 0 {
        let mut lat = Vec::new();
        let mut ids = Vec::new();
        let t0 = Instant::now();
        for _ in 0..sbatch {
            let s = Instant::now();
            let out = std::process::Command::new("sbatch")
                .args(["--parsable", "--hold", "--job-name=kiln-bench", "--output=/dev/null", "--wrap=true"])
                .output()
                .context("running sbatch")?;
            lat.push(s.elapsed().as_secs_f64());
            if !out.status.success() {
                bail!("sbatch failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            ids.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
        }
        let wall = t0.elapsed().as_secs_f64();
        let _ = std::process::Command::new("scancel").args(&ids).status();
        report_latencies("sbatch --hold, 1 client (sequential)", lat, wall);
    }
    Ok(0)
}

fn generate_bench(batch: usize, prompt: usize, new: usize, hidden: i64, layers: i64, repeats: usize) -> Result<i32> {
    use kiln_ghpo::generate::{generate, SamplingParams};
    use kiln_ghpo::model::{io, Qwen2, Qwen2Config};
    if batch == 0 || prompt == 0 || new == 0 || repeats == 0 || hidden % 64 != 0 || layers < 1 {
        bail!("--batch, --prompt, --new, --repeats and --layers must be at least 1, and --hidden a multiple of 64");
    }
    let cfg: Qwen2Config = serde_json::from_value(serde_json::json!({
        "vocab_size": 4096, "hidden_size": hidden, "intermediate_size": hidden * 3, "num_hidden_layers": layers,
        "num_attention_heads": hidden / 32, "num_key_value_heads": (hidden / 64).max(1), "max_position_embeddings": 4096,
        "tie_word_embeddings": true, "rope_theta": 10000.0
    }))?;
    tch::manual_seed(0);
    let model = Qwen2::new(cfg, Device::Cpu, Kind::Float).map_err(|e| anyhow!(e))?;
    let dir = std::env::temp_dir().join(format!("kiln-bench-generate-{}", std::process::id()));
    io::save(&model, &dir, None)?;
    let prompts: Vec<Vec<i64>> = (0..batch)
        .map(|b| (0..prompt).map(|i| 1 + ((b * 7919 + i * 104729) % 4095) as i64).collect())
        .collect();
    let params = SamplingParams { temperature: 0.0, max_new_tokens: new, ..Default::default() };
    let mut best = f64::INFINITY;
    for _ in 0..repeats {
        let t0 = Instant::now();
        let out = generate(&model, &prompts, 0, &params);
        best = best.min(t0.elapsed().as_secs_f64());
        debug_assert!(out.iter().all(|c| c.tokens.len() == new));
    }
    println!(
        "model: Qwen2 hidden {hidden}, {layers} layers, vocab 4096, f32 on CPU ({} intra-op threads); batch {batch}, prompt {prompt}, {new} new tokens, greedy",
        tch::get_num_threads()
    );
    println!("kiln generate: {:.0} tokens/s ({best:.3} s, best of {repeats})", (batch * new) as f64 / best);
    let py = std::path::Path::new(".venv/bin/python");
    let status = std::process::Command::new(py)
        .args(["scripts/qwen2_reference.py", "bench"])
        .arg(&dir)
        .args([batch.to_string(), prompt.to_string(), new.to_string(), repeats.to_string()])
        .status();
    let _ = std::fs::remove_dir_all(&dir);
    match status {
        Ok(s) if s.success() => Ok(0),
        _ => bail!("the transformers side did not run (run from the repository root after scripts/setup.sh)"),
    }
}
