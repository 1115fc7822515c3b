//! The algorithm registry: maps `[algorithm] name = "…"` to a linked-in trainer.

use anyhow::{anyhow, Result};
use kiln_worker::AlgorithmEntry;

/// Every trainer this build knows, in listing order.
pub fn entries() -> Vec<&'static AlgorithmEntry> {
    kiln_recsys::ENTRIES.iter().chain(kiln_ghpo::ENTRIES).chain(kiln_kindle::ENTRIES).chain(kiln_kuaisim::ENTRIES).chain(kiln_kuaisim::AGENTS).chain(kiln_retention::ENTRIES).chain(kiln_metric::ENTRIES).collect()
}

/// Finds a trainer, or says which ones exist.
pub fn find(name: &str) -> Result<&'static AlgorithmEntry> {
    entries().into_iter().find(|e| e.name == name).ok_or_else(|| {
        let known: Vec<&str> = entries().iter().map(|e| e.name).collect();
        anyhow!("unknown algorithm '{name}'; this build knows: {} (see `kiln algorithms`)", known.join(", "))
    })
}

/// Loads a spec and checks everything that can be checked before launching:
/// the file, the algorithm name and its `[algorithm]` table.
pub fn load_spec(path: &std::path::Path) -> Result<(kiln_worker::JobSpec, &'static AlgorithmEntry)> {
    let (spec, text) = kiln_worker::JobSpec::load(path).map_err(|e| anyhow!(e))?;
    let entry = check(&spec, &text, &path.display().to_string()).map_err(|e| anyhow!(e))?;
    Ok((spec, entry))
}

/// Checks a parsed spec's algorithm against this build; errors name `origin`
/// and the line in `text`. (The coordinator checks submissions with this too.)
pub fn check(spec: &kiln_worker::JobSpec, text: &str, origin: &str) -> Result<&'static AlgorithmEntry, String> {
    let name = spec.algorithm_name().unwrap_or_default().to_string();
    let entry = find(&name).map_err(|e| {
        let line = kiln_worker::spec::locate(text, "algorithm.name").unwrap_or(1);
        format!("{origin}:{line}: {e}")
    })?;
    (entry.validate)(&spec.algorithm_config()).map_err(|e| {
        let line = kiln_worker::spec::locate(text, &e.spec_path()).or_else(|| kiln_worker::spec::locate(text, "algorithm.name"));
        format!("{origin}:{}: invalid job spec {e}", line.unwrap_or(1))
    })?;
    Ok(entry)
}
