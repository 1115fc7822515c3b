//! The conformance suite on the MPI backend, with real `mpirun` ranks (2 and 3,
//! oversubscribed on small machines).
//!
//! The launcher test re-runs this test binary under `mpirun`, selecting only
//! `rank_entry_point`, which does the work when `KILN_TEST_MPI_RANK` is set.

use kiln_cluster::comm::MpiComm;
use kiln_cluster::launch::mpirun;

#[test]
fn conformance_under_mpirun_with_2_and_3_ranks() {
    let exe = std::env::current_exe().expect("test binary path");
    // Both reduction paths: blocking per tensor (default) and all buckets in flight.
    for (np, nonblocking) in [(2, "0"), (3, "0"), (2, "1"), (3, "1")] {
        let out = mpirun(np, &exe)
            .args(["--exact", "rank_entry_point", "--nocapture", "--test-threads", "1"])
            .env("KILN_TEST_MPI_RANK", "1")
            .env("KILN_MPI_NONBLOCKING", nonblocking)
            .output()
            .expect("mpirun must be installed (scripts/setup.sh)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{np} ranks (nonblocking={nonblocking}) failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
        let ok = stdout.matches("CONFORMANCE-OK").count();
        assert_eq!(ok, np, "every rank must report success\nstdout:\n{stdout}");
    }
}

/// The same suite on NCCL, one rank per GPU: needs a GPU machine and a `cuda`
/// build, so it is ignored by default; `scripts/gpu-checks.sh` runs it with
/// `--ignored`.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs NVIDIA GPUs; run by scripts/gpu-checks.sh"]
fn nccl_conformance_one_rank_per_gpu() {
    let exe = std::env::current_exe().expect("test binary path");
    let gpus = tch::Cuda::device_count().max(1) as usize;
    let out = mpirun(gpus, &exe)
        .args(["--exact", "rank_entry_point", "--nocapture", "--test-threads", "1"])
        .env("KILN_TEST_MPI_RANK", "1")
        .env("KILN_TEST_NCCL", "1")
        .output()
        .expect("mpirun");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.matches("CONFORMANCE-OK").count(), gpus, "{stdout}");
}

#[test]
fn rank_entry_point() {
    if std::env::var("KILN_TEST_MPI_RANK").is_err() {
        return; // only does work as a rank under mpirun (see the launcher tests above)
    }
    let comm = MpiComm::init().expect("MPI init");
    #[cfg(feature = "cuda")]
    if std::env::var("KILN_TEST_NCCL").is_ok() {
        let topo = kiln_cluster::Topology::from_env();
        let nccl = kiln_cluster::comm::NcclComm::new(Box::new(comm), topo.local_rank).expect("NCCL init");
        match kiln_cluster::conformance::run(&nccl, tch::Device::Cuda(topo.local_rank)) {
            Ok(passed) => println!("CONFORMANCE-OK nccl rank {} passed {} checks", topo.rank, passed.len()),
            Err(f) => panic!("{f}"),
        }
        return;
    }
    match kiln_cluster::conformance::run(&comm, tch::Device::Cpu) {
        Ok(passed) => println!("CONFORMANCE-OK rank {} passed {} checks", kiln_cluster::Communicator::rank(&comm), passed.len()),
        Err(f) => panic!("{f}"),
    }
}
