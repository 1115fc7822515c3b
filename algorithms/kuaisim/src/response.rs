//! The immediate user response model (KuaiSim's UIRM): given a user and their
//! history (items with the 7 responses each got), the probability of each
//! behaviour for any item.
//!
//! - **Item and user encoders**: an id embedding plus one embedding per
//!   categorical feature (a one-hot times a matrix) and the sum of the tag
//!   embeddings (a multi-hot times a matrix), stacked, LayerNorm, one shared
//!   linear map to `enc_dim`, summed over the features, LayerNorm.
//! - **History**: each token is (item encoding + learned position), dropout,
//!   LayerNorm, concatenated with a linear embedding of its 7 responses;
//!   a causal Transformer over the (left-padded) tokens; the last position is
//!   the history state (2·enc_dim).
//! - **User state**: history state ⊕ user encoding (3·enc_dim) — what the
//!   environments expose.
//! - **Scorer**: an MLP maps the state to one query per behaviour; the logit of
//!   behaviour b for item i is the mean of query_b ⊙ encoding_i.
//!
//! Trained with BCE on logits (the reference applies a logits-BCE to
//! probabilities, a double sigmoid; not copied), negatives of each behaviour
//! optionally reweighted by its positive/negative ratio.

use crate::layers::{causal_mask, EncoderLayer};
use crate::log::{Features, Logs};
use crate::NB;
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module, ModuleT};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ResponseConfig {
    /// Width of the id and feature embeddings.
    pub id_dim: i64,
    /// Width of item and user encodings.
    pub enc_dim: i64,
    pub layers: i64,
    pub heads: i64,
    pub ffn: i64,
    pub scorer_hidden: i64,
    pub dropout: f64,
    /// History length (most recent records).
    pub history: usize,
}

impl Default for ResponseConfig {
    /// The reference's script values (`run_multibehavior.sh`).
    fn default() -> Self {
        ResponseConfig { id_dim: 32, enc_dim: 64, layers: 2, heads: 4, ffn: 64, scorer_hidden: 128, dropout: 0.1, history: 100 }
    }
}

impl ResponseConfig {
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        for (k, v) in [("id_dim", self.id_dim), ("enc_dim", self.enc_dim), ("layers", self.layers), ("heads", self.heads), ("ffn", self.ffn), ("scorer_hidden", self.scorer_hidden)] {
            if !(1..=1 << 16).contains(&v) {
                return Err((k, "must be between 1 and 65536".into()));
            }
        }
        if (2 * self.enc_dim) % self.heads != 0 {
            return Err(("heads", format!("must divide the token width 2·enc_dim = {}", 2 * self.enc_dim)));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(("dropout", "must be in [0, 1)".into()));
        }
        if !(1..=4096).contains(&self.history) {
            return Err(("history", "must be between 1 and 4096".into()));
        }
        Ok(())
    }
}

/// Encodes ids of one kind (items or users) from their id and features.
struct Encoder {
    id: nn::Embedding,
    fields: Vec<nn::Embedding>,
    tags: Option<nn::Embedding>,
    norm_in: nn::LayerNorm,
    proj: nn::Linear,
    norm_out: nn::LayerNorm,
    /// `[ids + 1, fields]` feature ids and `[ids + 1, max tags]` tag ids (0 padding): buffers.
    feature_ids: Tensor,
    tag_ids: Tensor,
}

impl Encoder {
    fn new(p: &nn::Path, count: usize, f: &Features, c: &ResponseConfig) -> Encoder {
        let d = c.id_dim;
        let fields = f.vocab.iter().enumerate().map(|(k, &v)| nn::embedding(p / format!("field{k}"), v as i64, d, Default::default())).collect();
        let max_tags = f.tags.iter().map(Vec::len).max().unwrap_or(0);
        let tags = (max_tags > 0).then(|| nn::embedding(p / "tags", f.tag_vocab as i64, d, Default::default()));
        let rows = count as i64 + 1;
        let flat: Vec<i64> = (0..rows as usize).flat_map(|i| f.values.get(i).cloned().unwrap_or_else(|| vec![0; f.vocab.len()])).collect();
        let mut tag_flat = vec![0i64; rows as usize * max_tags];
        for (i, t) in f.tags.iter().enumerate().take(rows as usize) {
            tag_flat[i * max_tags..i * max_tags + t.len()].copy_from_slice(t);
        }
        let dev = p.device();
        Encoder {
            id: nn::embedding(p / "id", rows, d, Default::default()),
            fields,
            tags,
            norm_in: nn::layer_norm(p / "norm_in", vec![d], Default::default()),
            proj: nn::linear(p / "proj", d, c.enc_dim, Default::default()),
            norm_out: nn::layer_norm(p / "norm_out", vec![c.enc_dim], Default::default()),
            feature_ids: Tensor::from_slice(&flat).view([rows, f.vocab.len() as i64]).to_device(dev),
            tag_ids: Tensor::from_slice(&tag_flat).view([rows, max_tags as i64]).to_device(dev),
        }
    }

    /// `ids` of any shape → `[..., enc_dim]`.
    fn forward(&self, ids: &Tensor) -> Tensor {
        let mut parts = vec![self.id.forward(ids)];
        let feats = self.feature_ids.index_select(0, &ids.reshape([-1]));
        for (k, e) in self.fields.iter().enumerate() {
            parts.push(e.forward(&feats.select(1, k as i64)).view_as(&parts[0]));
        }
        if let Some(t) = &self.tags {
            let ti = self.tag_ids.index_select(0, &ids.reshape([-1])); // [N, T]
            let mask = ti.gt(0).unsqueeze(-1).to_kind(Kind::Float);
            parts.push((t.forward(&ti) * mask).sum_dim_intlist([1i64].as_slice(), false, Kind::Float).view_as(&parts[0]));
        }
        let stacked = Tensor::stack(&parts, -2); // [..., F, d]
        let x = self.proj.forward(&self.norm_in.forward(&stacked)).sum_dim_intlist([-2i64].as_slice(), false, Kind::Float);
        self.norm_out.forward(&x)
    }
}

/// A batch of (user, history, target items) for the response model.
pub struct Batch {
    /// `[B]` re-indexed user ids.
    pub user: Tensor,
    /// `[B, H]` item ids, left-padded with 0.
    pub history: Tensor,
    /// `[B, H, 7]` their responses.
    pub history_response: Tensor,
    /// `[B, H]` true where a real record.
    pub real: Tensor,
    /// `[B]` the target item.
    pub target: Tensor,
    /// `[B, 7]` its responses.
    pub labels: Tensor,
}

impl Batch {
    /// Records `rs` of `logs`, each with its `h` previous records as history.
    pub fn from_records(logs: &Logs, rs: &[usize], h: usize, device: Device) -> Batch {
        let ranges: Vec<_> = rs.iter().map(|&r| logs.history(r, h)).collect();
        let users: Vec<i64> = rs.iter().map(|&r| logs.user[r] as i64).collect();
        let (user, history, history_response, real) = histories(logs, &users, &ranges, h, device);
        let labels: Vec<f32> = rs.iter().flat_map(|&r| logs.response[r].map(|x| x as f32)).collect();
        Batch {
            user,
            history,
            history_response,
            real,
            target: Tensor::from_slice(&rs.iter().map(|&r| logs.item[r] as i64).collect::<Vec<_>>()).to_device(device),
            labels: Tensor::from_slice(&labels).view([rs.len() as i64, NB as i64]).to_device(device),
        }
    }
}

/// The model's inputs for users `users` with the records `ranges` (oldest
/// first, at most `h`) as histories: `[B]` users, `[B, h]` items left-padded
/// with 0, `[B, h, 7]` responses, `[B, h]` real.
pub fn histories(logs: &Logs, users: &[i64], ranges: &[std::ops::Range<usize>], h: usize, device: Device) -> (Tensor, Tensor, Tensor, Tensor) {
    let b = ranges.len();
    let mut history = vec![0i64; b * h];
    let mut resp = vec![0f32; b * h * NB];
    let mut real = vec![false; b * h];
    for (k, range) in ranges.iter().enumerate() {
        let range = range.start.max(range.end.saturating_sub(h))..range.end;
        let offset = h - range.len();
        for (j, q) in range.enumerate() {
            history[k * h + offset + j] = logs.item[q] as i64;
            real[k * h + offset + j] = true;
            for (x, &y) in resp[(k * h + offset + j) * NB..][..NB].iter_mut().zip(&logs.response[q]) {
                *x = y as f32;
            }
        }
    }
    let (b, h) = (b as i64, h as i64);
    (
        Tensor::from_slice(users).to_device(device),
        Tensor::from_slice(&history).view([b, h]).to_device(device),
        Tensor::from_slice(&resp).view([b, h, NB as i64]).to_device(device),
        Tensor::from_slice(&real).view([b, h]).to_device(device),
    )
}

pub struct ResponseModel {
    items: Encoder,
    users: Encoder,
    position: Tensor,
    history_norm: nn::LayerNorm,
    response_emb: nn::Linear,
    layers: Vec<EncoderLayer>,
    scorer: nn::SequentialT,
    query_norm: nn::LayerNorm,
    cfg: ResponseConfig,
}

impl ResponseModel {
    pub fn new(p: &nn::Path, logs: &Logs, cfg: &ResponseConfig) -> ResponseModel {
        let e = cfg.enc_dim;
        let scorer_path = p / "scorer";
        let dropout = cfg.dropout;
        ResponseModel {
            items: Encoder::new(&(p / "item"), logs.items.len(), &logs.item_features, cfg),
            users: Encoder::new(&(p / "user"), logs.users.len(), &logs.user_features, cfg),
            position: p.var("position", &[cfg.history as i64, e], nn::Init::Randn { mean: 0.0, stdev: 0.02 }),
            history_norm: nn::layer_norm(p / "history_norm", vec![e], Default::default()),
            response_emb: nn::linear(p / "response_emb", NB as i64, e, Default::default()),
            layers: (0..cfg.layers).map(|l| EncoderLayer::new(&(p / format!("layer{l}")), 2 * e, cfg.heads, cfg.ffn, cfg.dropout)).collect(),
            scorer: nn::seq_t()
                .add(nn::linear(&scorer_path / "l1", 3 * e, cfg.scorer_hidden, Default::default()))
                .add_fn(|x| x.relu())
                .add_fn_t(move |x, train| x.dropout(dropout, train))
                .add(nn::layer_norm(&scorer_path / "n1", vec![cfg.scorer_hidden], Default::default()))
                .add(nn::linear(&scorer_path / "out", cfg.scorer_hidden, NB as i64 * e, Default::default())),
            query_norm: nn::layer_norm(p / "query_norm", vec![e], Default::default()),
            cfg: cfg.clone(),
        }
    }

    pub fn enc_dim(&self) -> i64 {
        self.cfg.enc_dim
    }

    /// Item encodings `[..., enc_dim]`.
    pub fn encode_items(&self, ids: &Tensor) -> Tensor {
        self.items.forward(ids)
    }

    /// The user state `[B, 3·enc_dim]` after their history.
    pub fn state(&self, user: &Tensor, history: &Tensor, history_response: &Tensor, real: &Tensor, train: bool) -> Tensor {
        let h = history.size()[1];
        let pos = self.position.narrow(0, self.cfg.history as i64 - h, h);
        let items = (self.items.forward(history) + pos).dropout(self.cfg.dropout, train);
        let tokens = Tensor::cat(&[self.history_norm.forward(&items), self.response_emb.forward(history_response)], -1);
        let mask = causal_mask(real);
        let mut x = tokens;
        for l in &self.layers {
            x = l.forward(&x, &mask, train);
        }
        Tensor::cat(&[x.select(1, h - 1), self.users.forward(user)], -1)
    }

    /// Logits `[B, N, 7]` of each behaviour for items with encodings `items`
    /// (`[B, N, enc]`, or `[N, enc]` shared by the batch).
    pub fn logits(&self, state: &Tensor, items: &Tensor, train: bool) -> Tensor {
        let b = state.size()[0];
        let q = self.query_norm.forward(&self.scorer.forward_t(state, train).view([b, NB as i64, self.cfg.enc_dim]));
        let items = if items.dim() == 2 { items.unsqueeze(0).expand([b, -1, -1], false) } else { items.shallow_clone() };
        items.matmul(&q.transpose(1, 2)) / self.cfg.enc_dim as f64
    }

    /// Logits `[B, 7]` for each row's target.
    pub fn forward(&self, b: &Batch, train: bool) -> Tensor {
        let s = self.state(&b.user, &b.history, &b.history_response, &b.real, train);
        self.logits(&s, &self.items.forward(&b.target).unsqueeze(1), train).squeeze_dim(1)
    }
}
