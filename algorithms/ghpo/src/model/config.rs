//! `config.json` of a Qwen2-family model, as Hugging Face writes it.

use serde::{Deserialize, Serialize};

fn default_max_pos() -> i64 {
    32768
}
fn default_eps() -> f64 {
    1e-6
}
fn default_act() -> String {
    "silu".into()
}
fn default_init() -> f64 {
    0.02
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Qwen2Config {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    /// Grouped-query attention: key/value heads (default: as many as query heads).
    #[serde(default)]
    pub num_key_value_heads: Option<i64>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: i64,
    /// Rotary base as older configs write it (transformers 4.x).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// Rotary settings as transformers 5 writes them: `{"rope_theta", "rope_type"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_init")]
    pub initializer_range: f64,
    #[serde(default)]
    pub use_sliding_window: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
    /// Everything else in the file (token ids, dtype, …), written back unchanged.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Qwen2Config {
    pub fn kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// The rotary base: `rope_parameters.rope_theta`, else `rope_theta`, else
    /// transformers' default of 10000.
    pub fn theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .and_then(|t| t.as_f64())
            .or(self.rope_theta)
            .unwrap_or(10000.0)
    }

    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }

    /// What this implementation cannot run, said before any weight is read.
    pub fn check(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.kv_heads()),
        ];
        for (k, v) in positive {
            if v < 1 {
                return Err(format!("{k} must be at least 1 (is {v})"));
            }
        }
        if self.hidden_size % self.num_attention_heads != 0 || self.head_dim() % 2 != 0 {
            return Err(format!(
                "hidden_size {} must split into {} heads of an even size",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.num_attention_heads % self.kv_heads() != 0 {
            return Err(format!(
                "num_attention_heads {} must be a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.kv_heads()
            ));
        }
        if self.hidden_act != "silu" {
            return Err(format!("hidden_act '{}' is not supported (Qwen2 uses silu)", self.hidden_act));
        }
        if self.use_sliding_window {
            return Err("use_sliding_window = true is not supported".into());
        }
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err("rope_scaling is not supported (plain rotary embeddings only)".into());
        }
        if let Some(kind) = self.rope_parameters.as_ref().and_then(|p| p.get("rope_type")).and_then(|t| t.as_str()) {
            if kind != "default" {
                return Err(format!("rope_parameters.rope_type '{kind}' is not supported (plain rotary embeddings only)"));
            }
        }
        if let Some(types) = self.extra.get("layer_types").and_then(|t| t.as_array()) {
            if types.iter().any(|t| t.as_str() != Some("full_attention")) {
                return Err("layer_types other than full_attention (sliding windows) are not supported".into());
            }
        }
        Ok(())
    }
}
