// Compiles a two-line C shim with the MPI compiler wrapper: MPI_IN_PLACE is a
// macro whose value differs between MPI implementations, so Rust can only get it
// from C. In-place reductions save a buffer and a copy per all-reduce.
fn main() {
    println!("cargo:rerun-if-changed=src/comm/mpi_shim.c");
    println!("cargo:rerun-if-env-changed=MPICC");
    let mpicc = std::env::var("MPICC").unwrap_or_else(|_| "mpicc".to_string());
    cc::Build::new().compiler(mpicc).file("src/comm/mpi_shim.c").compile("kiln_mpi_shim");
}
