//! `kiln sweep`: one job spec run over several settings and seeds, each run a
//! plain `kiln run` of a derived spec, and a table of mean ± std per metric.
//!
//! Derived specs are written beside the table (`<out>/specs/`), runs go to
//! `runs/<name>` as usual, and a run whose `summary.json` exists is not run
//! again, so an interrupted sweep continues where it stopped.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Args)]
pub struct SweepArgs {
    /// The base job spec.
    pub spec: PathBuf,
    /// A setting to vary, `dotted.key=v1,v2,…` (repeatable; every combination runs), e.g.
    /// `--set algorithm.name=recsys.mmoe,recsys.m3oe`. Values are read as TOML (numbers, booleans), else strings.
    #[arg(long = "set", value_name = "KEY=V1,V2")]
    pub sets: Vec<String>,
    /// Seeds (train.seed), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub seeds: Vec<u64>,
    /// Ranks per run (default: the spec's resources).
    #[arg(long)]
    pub ranks: Option<u32>,
    /// Metrics in the table: names or prefixes ending in `*` (default: all of final_eval).
    #[arg(long, value_delimiter = ',')]
    pub metrics: Vec<String>,
    /// Where the derived specs, sweep.md and sweep.json go (default: runs/<name>-sweep).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One variant: the values of the swept keys, in `--set` order.
type Variant = Vec<(String, toml::Value)>;

fn parse_value(raw: &str) -> toml::Value {
    // A bare word such as recsys.mmoe is not TOML; read it as a string.
    toml::from_str::<toml::Table>(&format!("v = {raw}")).ok().and_then(|mut t| t.remove("v")).unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<()> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().filter(|s| !s.is_empty()).with_context(|| format!("--set {key}: empty key"))?;
    let mut t = table;
    for p in parts {
        t = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .with_context(|| format!("--set {key}: {p} is not a table in the spec"))?;
    }
    t.insert(last.to_string(), value);
    Ok(())
}

fn label(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn wanted(name: &str, patterns: &[String]) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| p.strip_suffix('*').map_or(p == name, |prefix| name.starts_with(prefix)))
}

/// Mean and sample standard deviation (0 for one value).
fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 { v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

pub fn sweep(a: SweepArgs) -> Result<i32> {
    let text = std::fs::read_to_string(&a.spec).with_context(|| format!("reading {}", a.spec.display()))?;
    let base: toml::Table = toml::from_str(&text).with_context(|| format!("{}: not a TOML job spec", a.spec.display()))?;
    let name = base.get("name").and_then(|v| v.as_str()).with_context(|| format!("{}: the spec has no name", a.spec.display()))?.to_string();
    if a.seeds.is_empty() {
        bail!("--seeds: give at least one seed");
    }
    // Every combination of the --set values.
    let mut variants: Vec<Variant> = vec![Vec::new()];
    for s in &a.sets {
        let (key, values) = s.split_once('=').with_context(|| format!("--set {s}: expected KEY=V1,V2,…"))?;
        let values: Vec<toml::Value> = values.split(',').filter(|v| !v.is_empty()).map(parse_value).collect();
        if values.is_empty() {
            bail!("--set {s}: no values");
        }
        variants = variants.into_iter().flat_map(|v| values.iter().map(move |x| [v.clone(), vec![(key.to_string(), x.clone())]].concat())).collect();
    }
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(format!("{name}-sweep")));
    std::fs::create_dir_all(out.join("specs")).with_context(|| format!("creating {}", out.display()))?;
    let exe = std::env::current_exe().context("locating the kiln binary")?;
    // (variant index, seed) → final_eval
    let mut results: Vec<Vec<BTreeMap<String, f64>>> = vec![Vec::new(); variants.len()];
    let mut names = std::collections::HashSet::new();
    for (i, variant) in variants.iter().enumerate() {
        for &seed in &a.seeds {
            let mut spec = base.clone();
            for (k, v) in variant {
                set_path(&mut spec, k, v.clone())?;
            }
            set_path(&mut spec, "train.seed", toml::Value::Integer(seed as i64))?;
            let run_name = run_name(&name, variant, seed);
            if !names.insert(run_name.clone()) {
                bail!("two variants of the sweep map to the run name {run_name}; make their values differ in more than punctuation");
            }
            spec.insert("name".into(), toml::Value::String(run_name.clone()));
            let path = out.join("specs").join(format!("{run_name}.toml"));
            let text = toml::to_string(&spec)?;
            let summary = PathBuf::from("runs").join(&run_name).join("summary.json");
            // A finished run is reused only if it was made from this very spec.
            if summary.exists() && std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                bail!(
                    "runs/{run_name} was made from a different spec than this sweep now derives ({}); remove runs/{run_name} and its checkpoints, or give the sweep another --out and name",
                    path.display()
                );
            }
            std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
            if !summary.exists() {
                eprintln!("sweep: {run_name}");
                let mut c = Command::new(&exe);
                c.arg("run").arg(&path);
                // An interrupted run (committed, no summary) continues.
                let (job, _) = crate::registry::load_spec(&path)?;
                let store = kiln_cluster::checkpoint::CheckpointStore::open(&job.checkpoint.store, &job.name).with_context(|| format!("opening {}'s checkpoint store", job.name))?;
                if !store.committed_steps().with_context(|| format!("listing {}'s checkpoints", job.name))?.is_empty() {
                    c.arg("--resume");
                }
                if let Some(r) = a.ranks {
                    c.arg("--ranks").arg(r.to_string());
                }
                let status = c.status().with_context(|| format!("starting {run_name}"))?;
                if !status.success() {
                    bail!("{run_name} failed ({status}); its spec is {} — fix it and run the sweep again (finished runs are kept)", path.display());
                }
            }
            results[i].push(final_eval(&summary)?);
        }
    }
    let metrics: Vec<String> = {
        let mut all: Vec<String> = results.iter().flatten().flat_map(|m| m.keys().cloned()).collect();
        all.sort();
        all.dedup();
        all.into_iter().filter(|m| wanted(m, &a.metrics)).collect()
    };
    if metrics.is_empty() {
        bail!("--metrics {:?} matches no metric of the runs' final evaluations", a.metrics);
    }
    let keys: Vec<&str> = a.sets.iter().filter_map(|s| s.split_once('=').map(|(k, _)| k)).collect();
    let mut md = format!("{} seed(s) ({}), mean ± std over seeds\n\n| {} |", a.seeds.len(), a.seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", "), if keys.is_empty() { "run".to_string() } else { keys.join(" | ") });
    for m in &metrics {
        md += &format!(" {m} |");
    }
    md += &format!("\n|{}", "---|".repeat(keys.len().max(1) + metrics.len()));
    let mut json = Vec::new();
    for (variant, runs) in variants.iter().zip(&results) {
        let cells: Vec<String> = if variant.is_empty() { vec![name.clone()] } else { variant.iter().map(|(_, v)| label(v)).collect() };
        md += &format!("\n| {} |", cells.join(" | "));
        let mut stats = serde_json::Map::new();
        for m in &metrics {
            let values: Vec<f64> = runs.iter().filter_map(|r| r.get(m).copied()).filter(|v| v.is_finite()).collect();
            if values.is_empty() {
                md += " — |";
                continue;
            }
            let (mean, std) = mean_std(&values);
            md += &format!(" {mean:.4} ± {std:.4} |");
            stats.insert(m.clone(), serde_json::json!({ "mean": mean, "std": std, "n": values.len() }));
        }
        json.push(serde_json::json!({ "settings": variant.iter().map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or_default())).collect::<serde_json::Map<_, _>>(), "metrics": stats }));
    }
    md.push('\n');
    write_atomic(&out.join("sweep.md"), md.as_bytes())?;
    write_atomic(&out.join("sweep.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    print!("{md}");
    eprintln!("sweep: {} written", out.join("sweep.md").display());
    Ok(0)
}

/// `<name>-<values>-s<seed>`: values kept to letters, digits, `_` and `-`
/// (a run name is a path component), a long tag shortened with a hash of it.
fn run_name(name: &str, variant: &Variant, seed: u64) -> String {
    let raw: Vec<String> = variant.iter().map(|(_, v)| label(v)).collect();
    let mut tag: String = raw.join("-").chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '-' }).collect();
    if tag.len() > 60 {
        let h = kiln_worker::rng::fnv1a(raw.join("\u{1f}").as_bytes());
        tag = format!("{}-{h:08x}", &tag[..40]);
    }
    if tag.is_empty() {
        format!("{name}-s{seed}")
    } else {
        format!("{name}-{tag}-s{seed}")
    }
}

fn final_eval(summary: &Path) -> Result<BTreeMap<String, f64>> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(summary).with_context(|| format!("reading {}", summary.display()))?)
        .with_context(|| format!("{}: not JSON", summary.display()))?;
    Ok(v.get("final_eval").and_then(|e| e.as_object()).map(|o| o.iter().filter_map(|(k, v)| Some((k.clone(), v.as_f64()?))).collect()).unwrap_or_default())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keys_and_statistics() {
        assert_eq!(parse_value("recsys.mmoe"), toml::Value::String("recsys.mmoe".into()));
        assert_eq!(parse_value("0.5"), toml::Value::Float(0.5));
        assert_eq!(parse_value("true"), toml::Value::Boolean(true));
        let mut t: toml::Table = toml::from_str("[train]\nsteps = 3").unwrap();
        set_path(&mut t, "train.seed", toml::Value::Integer(4)).unwrap();
        set_path(&mut t, "algorithm.name", toml::Value::String("x".into())).unwrap();
        assert_eq!(t["train"]["seed"].as_integer(), Some(4));
        assert_eq!(t["algorithm"]["name"].as_str(), Some("x"));
        assert!(set_path(&mut t, "train.steps.x", toml::Value::Integer(1)).is_err());
        assert!(wanted("auc_d0_task1", &["auc_d*".into()]) && !wanted("logloss", &["auc*".into()]));
        let v = |x: &str| vec![("k".to_string(), toml::Value::String(x.into()))];
        assert_eq!(run_name("sw", &v("recsys.mmoe"), 2), "sw-recsys-mmoe-s2");
        assert_eq!(run_name("sw", &v("a/b:c d"), 1), "sw-a-b-c-d-s1");
        let long = run_name("sw", &v(&"x".repeat(100)), 1);
        assert!(long.len() < 70 && long != run_name("sw", &v(&"x".repeat(101)), 1), "{long}");
        let (m, s) = mean_std(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12 && (s - 1.0).abs() < 1e-12);
    }
}
