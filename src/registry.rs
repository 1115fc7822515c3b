//! The algorithm registry: maps `[algorithm] name = "…"` to a linked-in trainer.

use anyhow::{anyhow, Result};
use kiln_worker::AlgorithmEntry;

/// Every trainer this build knows, in listing order.
pub fn entries() -> Vec<&'static AlgorithmEntry> {
    kiln_recsys::ENTRIES.iter().collect()
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
    let name = spec.algorithm_name().unwrap_or_default().to_string();
    let entry = find(&name).map_err(|e| {
        let line = kiln_worker::spec::locate(&text, "algorithm.name").unwrap_or(1);
        anyhow!("{}:{line}: {e}", path.display())
    })?;
    (entry.validate)(&spec.algorithm_config()).map_err(|e| {
        let line = kiln_worker::spec::locate(&text, &e.spec_path()).or_else(|| kiln_worker::spec::locate(&text, "algorithm.name"));
        anyhow!("{}:{}: invalid job spec {e}", path.display(), line.unwrap_or(1))
    })?;
    Ok((spec, entry))
}
