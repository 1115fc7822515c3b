//! `kiln grn`: gene regulatory network evaluation and baselines on BEELINE's
//! file formats (kiln-kindle's `beeline`, `metrics` and `baselines`).

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use kiln_kindle::baselines::{self, Correlation};
use kiln_kindle::beeline::{read_edges, read_expression, read_network, read_tfs, write_edges};
use kiln_kindle::metrics::{evaluate, Universe};
use kiln_kindle::simulate::{write_dataset, SimSettings};
use std::collections::HashSet;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum GrnCommand {
    /// Score a ranked edge list against a reference network: BEELINE's metrics and KINDLE's top-k protocol.
    Eval(EvalArgs),
    /// Write a baseline's ranked edge list for an expression matrix.
    Baseline(BaselineArgs),
    /// Simulate a BEELINE-layout dataset with a known network (SERGIO-style).
    Simulate(SimulateArgs),
    /// In-silico knockout with a trained KINDLE model: the predicted change of every gene.
    Knockout(KnockoutArgs),
    /// A teacher prior made from a reference network (for data that has no other prior):
    /// a seeded share of its edges dropped and false edges among the expression's genes added.
    Prior(PriorArgs),
}

#[derive(Args)]
pub struct PriorArgs {
    /// The reference network (Gene1,Gene2[,Type]).
    #[arg(long)]
    pub truth: PathBuf,
    /// The expression matrix whose genes false edges are drawn among.
    #[arg(long)]
    pub expression: PathBuf,
    /// Share of the reference's edges left out.
    #[arg(long, default_value_t = 0.3)]
    pub drop: f64,
    /// False edges added, as a share of the reference's edge count.
    #[arg(long, default_value_t = 0.5)]
    pub add: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The prior to write (Gene1,Gene2).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct KnockoutArgs {
    /// The kindle, kindle.teacher or kindle.student job spec (a kindle job knocks out in its student).
    pub spec: PathBuf,
    /// Genes to knock out (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    pub genes: Vec<String>,
    /// Marker genes to report whatever their change (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub markers: Vec<String>,
    /// The committed step to use (default: the newest).
    #[arg(long)]
    pub step: Option<u64>,
    /// Prediction rounds to roll forward.
    #[arg(long, default_value_t = 4)]
    pub rollout: usize,
    /// How many of the most changed genes to print.
    #[arg(long, default_value_t = 15)]
    pub top: usize,
    /// Write every gene's control, knockout and change here (CSV).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args)]
pub struct SimulateArgs {
    /// The folder to create: ExpressionData.csv, PseudoTime.csv, refNetwork.csv, prior.csv, settings.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Settings as JSON (keys of SimSettings, e.g. '{"genes": 50, "trajectories": 2, "technical": {}}'); the rest default.
    #[arg(long, default_value = "{}")]
    pub settings: String,
    #[arg(long)]
    pub seed: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UniverseArg {
    /// Every ordered pair of distinct reference genes (BEELINE's default, synthetic data).
    All,
    /// Pairs whose source is a reference regulator (BEELINE's TFEdges mode, real data); with --tfs, also in the TF list.
    Tf,
}

#[derive(Args)]
pub struct EvalArgs {
    /// The reference network (Gene1,Gene2[,Type]).
    #[arg(long)]
    pub truth: PathBuf,
    /// The ranked edge list (Gene1,Gene2,EdgeWeight; CSV or TSV).
    #[arg(long)]
    pub edges: PathBuf,
    #[arg(long, value_enum, default_value = "all")]
    pub universe: UniverseArg,
    /// A TF list (first column) restricting the sources in --universe tf.
    #[arg(long)]
    pub tfs: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Method {
    Pearson,
    Spearman,
    Random,
    PriorRandom,
}

#[derive(Args)]
pub struct BaselineArgs {
    /// ExpressionData.csv (genes in rows, cells in columns).
    #[arg(long)]
    pub expression: PathBuf,
    #[arg(long, value_enum)]
    pub method: Method,
    /// The prior network (prior-random only).
    #[arg(long)]
    pub prior: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to write the ranked edge list.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn grn(cmd: GrnCommand) -> Result<i32> {
    match cmd {
        GrnCommand::Eval(a) => eval(a),
        GrnCommand::Baseline(a) => baseline(a),
        GrnCommand::Simulate(a) => simulate(a),
        GrnCommand::Knockout(a) => knockout(a),
        GrnCommand::Prior(a) => prior(a),
    }
}

fn prior(a: PriorArgs) -> Result<i32> {
    let truth = read_network(&a.truth)?;
    let genes = read_expression(&a.expression)?.genes;
    let known: HashSet<&str> = genes.iter().map(String::as_str).collect();
    let truth = truth.restricted_to(&known, &format!("the reference {}", a.truth.display()))?;
    let prior = kiln_kindle::simulate::prior_from_truth(&truth, &genes, a.drop, a.add, a.seed).map_err(|e| anyhow::anyhow!("--drop/--add: {e}"))?;
    let tmp = PathBuf::from(format!("{}.partial", a.out.display()));
    std::fs::write(&tmp, kiln_kindle::simulate::network_csv(&prior, false)).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &a.out).with_context(|| format!("moving the prior to {}", a.out.display()))?;
    let kept = prior.edges.iter().filter(|e| truth.edges.iter().any(|t| t.from == e.from && t.to == e.to)).count();
    print(format!("{} edges ({kept} of the reference's {}, {} false) written to {}\n", prior.edges.len(), truth.edges.len(), prior.edges.len() - kept, a.out.display()))
}

fn knockout(a: KnockoutArgs) -> Result<i32> {
    let commit = crate::export_cmd::load_commit(&a.spec, a.step)?;
    if commit.entry.name != "kindle" && !commit.entry.name.starts_with("kindle.") {
        bail!("{} is a {} job; knockouts need a kindle, kindle.teacher or kindle.student job", a.spec.display(), commit.entry.name);
    }
    let trainer = kiln_kindle::trainer::KindleTrainer::new(commit.entry.name, &commit.spec.algorithm_config(), &commit.ctx).context("building the model")?;
    use kiln_worker::Algorithm;
    kiln_worker::train_loop::load_parameters(commit.step, &commit.shards, &trainer.parameters()).context("loading the checkpoint's parameters")?;
    let ko = trainer.knockout(&a.genes, a.rollout).map_err(|e| anyhow::anyhow!("--genes: {e}"))?;
    let changes = ko.changes();
    for m in &a.markers {
        if !ko.genes.contains(m) {
            bail!("--markers: gene {m} is not among the model's {} genes", ko.genes.len());
        }
    }
    if let Some(out) = &a.out {
        let mut text = String::from("gene,control,knockout,change\n");
        for (i, g) in ko.genes.iter().enumerate() {
            text += &format!("{g},{},{},{}\n", ko.control[i], ko.knockout[i], ko.knockout[i] - ko.control[i]);
        }
        std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?;
    }
    let mut text = format!(
        "knockout of {} (step {}, {} rounds rolled forward); predicted change in normalised expression:\n",
        a.genes.join(", "),
        commit.step,
        a.rollout
    );
    for (g, d) in changes.iter().take(a.top) {
        text += &format!("  {g:<16} {d:+.4}{}\n", if a.genes.contains(g) { "  (knocked out)" } else { "" });
    }
    for m in &a.markers {
        let d = changes.iter().find(|(g, _)| g == m).map(|c| c.1).unwrap_or(0.0);
        text += &format!("  marker {m:<9} {d:+.4}\n");
    }
    print(text)
}

fn simulate(a: SimulateArgs) -> Result<i32> {
    let mut settings: SimSettings = serde_json::from_str(&a.settings).context("--settings: not valid simulator settings (JSON with SimSettings keys)")?;
    if let Some(seed) = a.seed {
        settings.seed = seed;
    }
    if a.out.exists() {
        bail!("{} already exists; choose a new folder (nothing was written)", a.out.display());
    }
    let ds = kiln_kindle::simulate::simulate(&settings).map_err(|e| anyhow::anyhow!("--settings: {e}"))?;
    let tmp = PathBuf::from(format!("{}.partial", a.out.display()));
    let _ = std::fs::remove_dir_all(&tmp);
    write_dataset(&ds, &tmp).map_err(anyhow::Error::msg)?;
    std::fs::write(tmp.join("settings.json"), serde_json::to_string_pretty(&settings)?)?;
    std::fs::rename(&tmp, &a.out).with_context(|| format!("moving the dataset to {}", a.out.display()))?;
    print(format!(
        "{} genes × {} cells, {} true edges ({} in the prior) written to {}\n",
        ds.expression.genes.len(),
        ds.expression.cells.len(),
        ds.truth.edges.len(),
        ds.prior.edges.len(),
        a.out.display()
    ))
}

fn eval(a: EvalArgs) -> Result<i32> {
    if a.tfs.is_some() && a.universe != UniverseArg::Tf {
        bail!("--tfs restricts the sources of --universe tf; add --universe tf (or leave out --tfs)");
    }
    let truth = read_network(&a.truth)?;
    let edges = read_edges(&a.edges)?;
    let universe = match a.universe {
        UniverseArg::All => Universe::AllPairs,
        UniverseArg::Tf => Universe::TfEdges { tfs: a.tfs.as_ref().map(|p| read_tfs(p)).transpose()? },
    };
    let genes: HashSet<&str> = truth.genes().into_iter().collect();
    if !edges.is_empty() && !edges.iter().any(|e| genes.contains(e.from.as_str()) && genes.contains(e.to.as_str())) {
        let e = &edges[0];
        bail!(
            "no predicted edge joins two genes of {} (e.g. {} -> {}): are both files about the same genes, spelled the same way?",
            a.truth.display(),
            e.from,
            e.to
        );
    }
    let ev = evaluate(&truth, &edges, &universe).with_context(|| format!("scoring {} against {}", a.edges.display(), a.truth.display()))?;
    if a.json {
        return print(serde_json::to_string_pretty(&ev)? + "\n");
    }
    let mut text = format!(
        "universe: {} — {} pairs, {} true edges (density {:.4}){}\n",
        ev.universe,
        ev.universe_pairs,
        ev.true_edges,
        ev.density,
        if ev.true_edges_outside > 0 { format!("; {} reference edges lie outside it and are not counted", ev.true_edges_outside) } else { String::new() }
    );
    text += &format!(
        "BEELINE:  AUROC {:.4}  AUPRC {:.4}  AUPRC ratio {:.3}  early precision {:.4}  EPR {:.3}\n",
        ev.auroc, ev.auprc, ev.auprc_ratio, ev.early_precision, ev.epr
    );
    text += &format!(
        "top-k (KINDLE's protocol, k = {}):  precision {:.4}  F1 {:.4}  AUROC {:.4}  AUPRC {:.4}\n",
        ev.topk.k, ev.topk.precision, ev.topk.f1, ev.topk.auroc, ev.topk.auprc
    );
    print(text)
}

/// Writes to stdout; a reader that went away (`| head`) is not an error.
fn print(text: String) -> Result<i32> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(0),
    }
}

fn baseline(a: BaselineArgs) -> Result<i32> {
    if (a.method == Method::PriorRandom) != a.prior.is_some() {
        bail!("--prior is needed by --method prior-random and by it only");
    }
    let expr = read_expression(&a.expression)?;
    let edges = match a.method {
        Method::Pearson => baselines::correlation(&expr, Correlation::Pearson),
        Method::Spearman => baselines::correlation(&expr, Correlation::Spearman),
        Method::Random => baselines::random(&expr.genes, a.seed),
        Method::PriorRandom => {
            let path = a.prior.as_ref().context("--prior")?;
            let genes: HashSet<&str> = expr.genes.iter().map(String::as_str).collect();
            let prior = read_network(path)?.restricted_to(&genes, &path.display().to_string())?;
            baselines::prior_random(&prior, a.seed)
        }
    };
    write_edges(&a.out, &edges)?;
    print(format!("{} edges over {} genes written to {}\n", edges.len(), expr.genes.len(), a.out.display()))
}
