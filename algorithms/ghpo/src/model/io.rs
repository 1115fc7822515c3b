//! Reading and writing Hugging Face model folders: `config.json` plus
//! `model.safetensors`, or shards listed in `model.safetensors.index.json`.

use super::{Qwen2, Qwen2Config};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io { path: String, #[source] source: std::io::Error },
    #[error("{path}: {message}")]
    Format { path: String, message: String },
    #[error("{path}: the checkpoint lacks {count} parameter(s) the config needs, e.g. {examples}")]
    Missing { path: String, count: usize, examples: String },
    #[error("{path}: parameter {name} has shape {found:?}, the config says {expected:?}")]
    Shape { path: String, name: String, expected: Vec<i64>, found: Vec<i64> },
    #[error("{path}: tensor {name} is not a Qwen2 parameter (is this a Qwen2-family checkpoint?)")]
    Unexpected { path: String, name: String },
    #[error("{path}: {source}")]
    Tch { path: String, #[source] source: tch::TchError },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io { path: path.display().to_string(), source }
}

fn format(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::Format { path: path.display().to_string(), message: message.into() }
}

/// Reads `dir/config.json`.
pub fn read_config(dir: &Path) -> Result<Qwen2Config, ModelError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let cfg: Qwen2Config = serde_json::from_str(&text).map_err(|e| format(&path, e.to_string()))?;
    cfg.check().map_err(|m| format(&path, m))?;
    Ok(cfg)
}

/// The weight files of a folder: the single file, or the shards of the index.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.exists() {
        return Err(format(dir, "no model.safetensors and no model.safetensors.index.json"));
    }
    let text = std::fs::read_to_string(&index).map_err(io(&index))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format(&index, e.to_string()))?;
    let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| format(&index, "no weight_map"))?;
    let mut files = BTreeSet::new();
    for (name, file) in map {
        let f = file.as_str().ok_or_else(|| format(&index, format!("weight_map[{name}] is not a file name")))?;
        if f.contains('/') || f.contains("..") {
            return Err(format(&index, format!("weight_map[{name}] = {f:?} leaves the folder")));
        }
        files.insert(f.to_string());
    }
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Loads a model folder onto `device` in `kind` (f32 or bf16, whatever the
/// files hold).
pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Qwen2, ModelError> {
    let cfg = read_config(dir)?;
    let model = Qwen2::new(cfg, device, kind).map_err(|m| format(dir, m))?;
    load_weights(&model, &weight_files(dir)?, dir)?;
    Ok(model)
}

/// Copies every parameter of `model` from safetensors `files`, by name: a tensor
/// that is not a parameter, a shape that differs, or a parameter no file holds
/// is an error (`what` names the source in the missing-parameters message).
pub fn load_weights(model: &Qwen2, files: &[PathBuf], what: &Path) -> Result<(), ModelError> {
    let vars = model.vs.variables();
    let mut seen = BTreeSet::new();
    for file in files {
        let tch_err = |source| ModelError::Tch { path: file.display().to_string(), source };
        let mut tensors = Tensor::read_safetensors(file).map_err(tch_err)?;
        // By name, so the first problem reported is the same on every run.
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, t) in tensors {
            // Old checkpoints store rotary tables; a tied head is the embedding.
            if name.ends_with("rotary_emb.inv_freq") || (model.cfg.tie_word_embeddings && name == "lm_head.weight") {
                continue;
            }
            let Some(var) = vars.get(&name) else {
                return Err(ModelError::Unexpected { path: file.display().to_string(), name });
            };
            if var.size() != t.size() {
                return Err(ModelError::Shape { path: file.display().to_string(), name, expected: var.size(), found: t.size() });
            }
            tch::no_grad(|| var.shallow_clone().copy_(&t));
            seen.insert(name);
        }
    }
    let missing: Vec<&String> = vars.keys().filter(|k| !seen.contains(*k)).collect();
    if !missing.is_empty() {
        let mut examples: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
        examples.sort();
        examples.truncate(3);
        return Err(ModelError::Missing { path: what.display().to_string(), count: missing.len(), examples: examples.join(", ") });
    }
    Ok(())
}

/// Writes `config.json` and the weights; in shards of at most `max_shard_bytes`
/// with an index when they do not fit in one (as `save_pretrained` does).
pub fn save(model: &Qwen2, dir: &Path, max_shard_bytes: Option<usize>) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let cfg_path = dir.join("config.json");
    let mut cfg = serde_json::to_value(&model.cfg).map_err(|e| format(&cfg_path, e.to_string()))?;
    if let Some(o) = cfg.as_object_mut() {
        o.entry("architectures").or_insert_with(|| serde_json::json!(["Qwen2ForCausalLM"]));
        o.entry("model_type").or_insert_with(|| serde_json::json!("qwen2"));
    }
    let text = serde_json::to_string_pretty(&cfg).map_err(|e| format(&cfg_path, e.to_string()))?;
    std::fs::write(&cfg_path, text).map_err(io(&cfg_path))?;

    let params = model.named_parameters();
    let bytes = |t: &Tensor| t.numel() * t.kind().elt_size_in_bytes();
    let limit = max_shard_bytes.unwrap_or(usize::MAX).max(1);
    let mut shards: Vec<Vec<(String, Tensor)>> = vec![vec![]];
    let mut size = 0;
    for (name, t) in params {
        let n = bytes(&t);
        if size > 0 && size + n > limit {
            shards.push(vec![]);
            size = 0;
        }
        size += n;
        if let Some(last) = shards.last_mut() {
            last.push((name, t.detach().to_device(Device::Cpu).contiguous()));
        }
    }
    let write = |path: &Path, tensors: &[(String, Tensor)]| {
        Tensor::write_safetensors(tensors, path).map_err(|source| ModelError::Tch { path: path.display().to_string(), source })
    };
    // A stale single file or index would shadow what is written now.
    for stale in ["model.safetensors", "model.safetensors.index.json"] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    if shards.len() == 1 {
        return write(&dir.join("model.safetensors"), &shards[0]);
    }
    let n = shards.len();
    let mut weight_map = BTreeMap::new();
    let mut total = 0usize;
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, n);
        write(&dir.join(&file), shard)?;
        for (name, t) in shard {
            total += bytes(t);
            weight_map.insert(name.clone(), file.clone());
        }
    }
    let index = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
    let path = dir.join("model.safetensors.index.json");
    std::fs::write(&path, serde_json::to_string_pretty(&index).unwrap_or_default()).map_err(io(&path))
}
