//! `kiln run`: train a job on this machine with no setup — N ranks under `mpirun`
//! (or one process), a live progress bar, graceful Ctrl-C, and a report at the end.

use crate::report;
use crate::{registry, LogFormat};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kiln_cluster::checkpoint::CheckpointStore;
use kiln_cluster::launch::{mpirun, EXIT_PREEMPTED};
use kiln_worker::metrics::PROGRESS_PREFIX;
use serde_json::Value;
use std::io::{BufRead, BufReader, IsTerminal};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

#[derive(Args)]
pub struct RunArgs {
    /// The job spec (TOML).
    pub spec: PathBuf,
    /// Ranks to start on this machine (default: resources.nodes x resources.ranks_per_node).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub ranks: Option<u32>,
    /// Continue from the newest committed checkpoint of this run.
    #[arg(long)]
    pub resume: bool,
    /// Where metrics, the summary and the report go (default: runs/<name>).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
}

pub fn run(args: RunArgs, format: LogFormat) -> Result<i32> {
    let (spec, _entry) = registry::load_spec(&args.spec)?;
    let ranks = args.ranks.map(|r| r as usize).unwrap_or_else(|| spec.resources.world_size());
    spec.check_world(ranks).map_err(|e| anyhow!("{}: {e}", args.spec.display()))?;
    if ranks > 1 && kiln_cluster::checkpoint::is_process_local(&spec.checkpoint.store) {
        bail!(
            "{}: checkpoint.store = \"memory://\" lives inside one process, so it cannot serve {ranks} ranks; use a directory or s3:// (or --ranks 1)",
            args.spec.display()
        );
    }
    if spec.launch.backend == kiln_worker::spec::Backend::Slurm {
        eprintln!("note: `kiln run` trains on this machine; [launch] backend = \"slurm\" applies to `kiln submit` with a coordinator");
    }
    let run_dir = args.run_dir.clone().unwrap_or_else(|| PathBuf::from("runs").join(&spec.name));

    // Fail before launching anything when the store is unusable or the resume
    // request cannot be honoured (the ranks check again, this is for a quick answer).
    let store = CheckpointStore::open(&spec.checkpoint.store, &spec.name)
        .with_context(|| format!("{}: checkpoint.store", args.spec.display()))?;
    store.check_writable().with_context(|| format!("{}: checkpoint.store is not writable", args.spec.display()))?;
    let newest = store.committed_steps()?.first().copied();
    match (args.resume, newest) {
        (true, None) => bail!(
            "nothing to resume: run '{}' has no committed checkpoint in {}. Run without --resume to start fresh",
            spec.name,
            spec.checkpoint.store
        ),
        (false, Some(step)) => bail!(
            "run '{}' already has checkpoints in {} (newest: step {step}). Pass --resume to continue it, or change `name` in {}",
            spec.name,
            spec.checkpoint.store,
            args.spec.display()
        ),
        _ => {}
    }
    drop(store);

    let exe = std::env::current_exe().context("locating the kiln binary")?;
    let mut cmd = if ranks == 1 { Command::new(&exe) } else { mpirun(ranks, &exe) };
    cmd.arg("worker").arg(&args.spec).arg("--run-dir").arg(&run_dir).arg("--progress");
    if args.resume {
        cmd.arg("--resume");
    }
    if format == LogFormat::Json {
        cmd.env("KILN_LOG_FORMAT", "json");
    }
    // Own process group: the terminal's Ctrl-C reaches only us, and we turn it into
    // an orderly stop (SIGUSR1, which mpirun forwards to every rank).
    cmd.process_group(0).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = cmd.spawn().with_context(|| {
        if ranks > 1 {
            "starting mpirun (install Open MPI: scripts/setup.sh)".to_string()
        } else {
            "starting the worker".to_string()
        }
    })?;
    let pid = child.id() as i32;
    forward_stops(pid, ranks > 1)?;

    let bar = progress_bar(spec.train.steps);
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout from the worker"))?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading worker output")?;
        match line.strip_prefix(PROGRESS_PREFIX).and_then(|j| serde_json::from_str::<Value>(j).ok()) {
            Some(v) => show_progress(&bar, &v),
            // A hidden bar (no terminal) prints nothing, so pass the line on directly.
            None if bar.is_hidden() => println!("{line}"),
            None => bar.println(line),
        }
    }
    let status = child.wait().context("waiting for the worker")?;
    bar.finish_and_clear();
    match status.code() {
        Some(0) => {
            let outputs = report::render(&run_dir)?;
            println!("{}", report::summary_text(&run_dir)?);
            for o in outputs {
                println!("report: {}", o.display());
            }
            Ok(0)
        }
        Some(EXIT_PREEMPTED) => {
            eprintln!(
                "stopped with a committed checkpoint; resume with: kiln run {} --resume{}",
                args.spec.display(),
                args.ranks.map(|r| format!(" --ranks {r}")).unwrap_or_default()
            );
            Ok(EXIT_PREEMPTED)
        }
        Some(code) => bail!("training failed (exit code {code}); the rank errors are above"),
        None => bail!("training was killed by a signal"),
    }
}

/// First Ctrl-C/SIGTERM: ask the ranks to checkpoint and stop. Second: terminate
/// (mpirun tears its ranks down on SIGTERM; a lone worker would treat SIGTERM as
/// another stop request, so it is killed). Third: kill the whole process group.
fn forward_stops(child: i32, under_mpirun: bool) -> Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])
        .context("installing signal handlers")?;
    std::thread::spawn(move || {
        for (n, _) in signals.forever().enumerate() {
            let (sig, what) = match n {
                0 => (libc::SIGUSR1, "stopping at the next step boundary with a checkpoint (Ctrl-C again to abort)"),
                1 if under_mpirun => (libc::SIGTERM, "terminating the ranks"),
                _ => (libc::SIGKILL, "killing the ranks"),
            };
            eprintln!("\n{what}");
            // SAFETY: kill() has no memory preconditions; -pid names the child's group.
            unsafe {
                if sig == libc::SIGKILL {
                    libc::kill(-child, sig);
                } else {
                    libc::kill(child, sig);
                }
            }
        }
    });
    Ok(())
}

fn progress_bar(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}  ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// A progress line above the bar, or on stderr when there is no bar (no terminal).
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

fn show_progress(bar: &ProgressBar, v: &Value) {
    let num = |k: &str| v.get(k).and_then(Value::as_f64);
    if let Some(event) = v.get("event").and_then(Value::as_str) {
        let step = num("step").or_else(|| num("start_step")).unwrap_or(0.0) as u64;
        let line = match event {
            "start" => format!(
                "training: {} rank(s), {} backend, from step {}",
                num("world").unwrap_or(1.0),
                v.get("backend").and_then(Value::as_str).unwrap_or("?"),
                step
            ),
            "checkpoint" => format!("checkpoint: step {step}"),
            "stopped" => format!("stopped at step {step}"),
            _ => return,
        };
        bar.set_position(step);
        say(bar, line);
        return;
    }
    let step = num("step").unwrap_or(0.0) as u64;
    match v.get("kind").and_then(Value::as_str) {
        Some("train") => {
            let msg = format!(
                "loss {:.4}  {:.0} samples/s",
                num("loss").unwrap_or(f64::NAN),
                num("samples_per_s").unwrap_or(0.0)
            );
            bar.set_position(step);
            bar.set_message(msg.clone());
            if bar.is_hidden() {
                say(bar, format!("step {step}: {msg}"));
            }
        }
        Some("eval") => {
            let mut parts: Vec<String> = v
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| !["step", "time_s", "kind"].contains(&k.as_str()))
                .filter_map(|(k, x)| x.as_f64().map(|f| format!("{k} {f:.4}")))
                .collect();
            parts.sort();
            say(bar, format!("eval @ {step}: {}", parts.join("  ")));
        }
        _ => {}
    }
}
