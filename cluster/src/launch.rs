//! How ranks are started on one machine: the `mpirun` command line kiln uses,
//! in one place for `kiln run`, the benchmarks and the multi-rank tests.

use std::ffi::OsStr;
use std::process::Command;

/// Exit code of a rank that stopped on request (SIGTERM, SIGUSR1, Ctrl-C) after
/// writing a checkpoint: the job is resumable, not failed. (EX_TEMPFAIL.)
pub const EXIT_PREEMPTED: i32 = 75;

/// Whether a variable of ours is passed on to every rank (mpirun forwards the
/// environment only to ranks on its own host unless told with `-x`).
fn forwarded(name: &str) -> bool {
    name.starts_with("KILN_") || name.starts_with("AWS_") || name == "RUST_LOG" || name == "RUST_BACKTRACE"
}

/// An `mpirun` command that starts `np` copies of `program` on this host.
///
/// Oversubscription is allowed (more ranks than cores is how multi-rank behaviour is
/// tested on small machines), idle ranks yield the CPU instead of spinning, root is
/// allowed when we are root (containers), and the variables kiln and tch read are
/// exported to every rank.
pub fn mpirun(np: usize, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(mpirun_program());
    cmd.arg("-np").arg(np.to_string());
    cmd.args(["--oversubscribe", "--bind-to", "none"]);
    cmd.args(["--mca", "mpi_yield_when_idle", "1"]);
    // Loopback TCP and shared memory only: no probing for fabrics a laptop or CI box lacks.
    cmd.args(["--mca", "btl_tcp_if_include", "lo", "--mca", "oob_tcp_if_include", "lo"]);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.arg("--allow-run-as-root");
    }
    for (name, _) in std::env::vars_os() {
        if let Some(name) = name.to_str().filter(|n| forwarded(n)) {
            cmd.args(["-x", name]);
        }
    }
    cmd.arg(program);
    cmd
}

/// The `mpirun` to use: `$KILN_MPIRUN` or the one on `PATH`.
pub fn mpirun_program() -> String {
    std::env::var("KILN_MPIRUN").unwrap_or_else(|_| "mpirun".to_string())
}
