//! `kiln`: the command line of the kiln distributed training framework.
//!
//! This crate is the CLI only: it parses commands, holds the algorithm registry
//! (which algorithm crates are linked in), launches ranks (`mpirun`) for
//! `kiln run`, runs the coordinator service and its client commands, and
//! renders reports and benchmarks. Training itself happens in
//! `kiln-worker`; collectives and storage in `kiln-cluster`.

mod bench;
mod coord_cmd;
mod export_cmd;
mod grn_cmd;
mod kuaisim_cmd;
mod llmsim_cmd;
mod registry;
mod report;
mod run;
mod serve_cmd;
mod slurm_cmd;
mod sweep_cmd;
mod worker_cmd;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "kiln", version, about = "Distributed training for research reproductions")]
struct Cli {
    /// Log format on stderr (levels from RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Train a job on this machine: N ranks under mpirun, live progress, report at the end.
    Run(run::RunArgs),
    /// Run one rank of a job (started by `kiln run`, mpirun or srun; not for direct use).
    #[command(hide = true)]
    Worker(worker_cmd::WorkerArgs),
    /// Turn a run directory into PNG learning curves and summary.md.
    Report {
        /// The run directory (runs/<name>).
        run_dir: PathBuf,
    },
    /// List the algorithms this build can train.
    Algorithms,
    /// Write a job's committed checkpoint in its algorithm's own format (e.g. a Hugging Face folder).
    Export(export_cmd::ExportArgs),
    /// Benchmarks (not tests): all-reduce bandwidth, checkpoint throughput.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Run one job spec over several settings and seeds; a table of mean ± std per metric.
    Sweep(sweep_cmd::SweepArgs),
    /// Gene regulatory networks: evaluate a ranked edge list (BEELINE's metrics), compute baselines.
    #[command(subcommand)]
    Grn(grn_cmd::GrnCommand),
    /// KuaiSim: synthetic KuaiRand-layout logs from a known user model.
    #[command(subcommand)]
    Kuaisim(kuaisim_cmd::KuaisimCommand),
    /// The LLM-powered user simulator: item analysis through an OpenAI-compatible endpoint.
    #[command(subcommand)]
    Llmsim(llmsim_cmd::LlmsimCommand),
    /// Serve a model (a Hugging Face Qwen2 folder) on the OpenAI-compatible chat-completions API.
    Serve(serve_cmd::ServeArgs),
    /// SLURM without a coordinator: render or submit a job's sbatch script.
    #[command(subcommand)]
    Slurm(slurm_cmd::SlurmCommand),
    /// Run the coordinator service (HTTP API, scheduler, launchers, watchdog).
    Coordinator(coord_cmd::CoordinatorArgs),
    /// Submit a job spec to the coordinator; prints the job id.
    Submit(coord_cmd::SubmitArgs),
    /// List the coordinator's jobs.
    Jobs(coord_cmd::JobsArgs),
    /// One job in detail: state, attempts, latest metrics, events.
    Status(coord_cmd::IdArgs),
    /// A job's log (-f to follow it across attempts).
    Logs(coord_cmd::LogsArgs),
    /// Cancel a job (its attempt is stopped; committed checkpoints stay).
    Cancel(coord_cmd::IdArgs),
    /// Run a local attempt and record its exit status (started by the coordinator).
    #[command(hide = true)]
    Supervise(coord_cmd::SuperviseArgs),
}

/// Resolves at the first SIGINT or SIGTERM: when a server command
/// (`kiln coordinator`, `kiln serve`) shuts down gracefully.
pub async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if format == LogFormat::Json {
        builder.json().init();
    } else {
        builder.with_target(false).init();
    }
}

fn main() {
    let cli = Cli::parse();
    let format = match std::env::var("KILN_LOG_FORMAT").as_deref() {
        Ok("json") => LogFormat::Json,
        _ => cli.log_format,
    };
    init_tracing(format);
    let code = match dispatch(cli.command, format) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn dispatch(command: Command, format: LogFormat) -> Result<i32> {
    match command {
        Command::Run(args) => run::run(args, format),
        Command::Worker(args) => worker_cmd::worker(args),
        Command::Report { run_dir } => {
            let out = report::render(&run_dir)?;
            println!("wrote {}", out.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
            Ok(0)
        }
        Command::Algorithms => {
            for e in registry::entries() {
                println!("{:<24} {}", e.name, e.summary);
            }
            Ok(0)
        }
        Command::Export(a) => export_cmd::export(a),
        Command::Grn(c) => grn_cmd::grn(c),
        Command::Kuaisim(c) => kuaisim_cmd::kuaisim(c),
        Command::Llmsim(c) => llmsim_cmd::llmsim(c),
        Command::Serve(a) => serve_cmd::serve(a),
        Command::Sweep(a) => sweep_cmd::sweep(a),
        Command::Bench(b) => bench::bench(b),
        Command::Slurm(c) => slurm_cmd::slurm(c),
        Command::Coordinator(a) => coord_cmd::coordinator(a),
        Command::Submit(a) => coord_cmd::submit(a),
        Command::Jobs(a) => coord_cmd::jobs(a),
        Command::Status(a) => coord_cmd::status(a),
        Command::Logs(a) => coord_cmd::logs(a),
        Command::Cancel(a) => coord_cmd::cancel(a),
        Command::Supervise(a) => coord_cmd::supervise(a),
    }
}
