//! The Qwen2 architecture in tch, with Hugging Face parameter names: token
//! embedding, RMSNorm, rotary position embeddings with the config's theta,
//! grouped-query attention with q/k/v biases, SwiGLU MLP, tied or untied LM
//! head. It follows `transformers`' eager Qwen2 implementation step by step
//! (norms in f32, softmax in f32), and `tests/qwen2.rs` compares its logits with
//! that implementation's.

pub mod config;
pub mod io;

pub use config::Qwen2Config;

use tch::nn::{self, Init};
use tch::{Device, Kind, Tensor};

/// One decoder layer's parameters.
struct Layer {
    input_norm: Tensor,
    q: (Tensor, Tensor),
    k: (Tensor, Tensor),
    v: (Tensor, Tensor),
    o: Tensor,
    post_norm: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

/// Keys and values of the positions seen so far, per layer.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// Positions cached so far.
    pub fn len(&self) -> i64 {
        self.layers.first().and_then(|l| l.as_ref()).map(|(k, _)| k.size()[2]).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps only the batch rows in `rows` (finished sequences dropped).
    pub fn select(&mut self, rows: &Tensor) {
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.index_select(0, rows);
            *v = v.index_select(0, rows);
        }
    }
}

pub struct Qwen2 {
    pub cfg: Qwen2Config,
    pub vs: nn::VarStore,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Option<Tensor>,
    inv_freq: Tensor,
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Tensor {
    let kind = x.kind();
    let xf = x.to_kind(Kind::Float);
    let var = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
    let normed = xf * (var + eps).rsqrt();
    w * normed.to_kind(kind)
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[x.dim() - 1] / 2;
    let x1 = x.narrow(-1, 0, half);
    let x2 = x.narrow(-1, half, half);
    Tensor::cat(&[-x2, x1], -1)
}

impl Qwen2 {
    /// A model with freshly initialised weights (normal with the config's
    /// `initializer_range`, norms at one, biases at zero), as `transformers` does.
    pub fn new(cfg: Qwen2Config, device: Device, kind: Kind) -> Result<Qwen2, String> {
        cfg.check()?;
        let mut vs = nn::VarStore::new(device);
        let root = vs.root();
        let m = &root / "model";
        let h = cfg.hidden_size;
        let (hd, nh, nkv) = (cfg.head_dim(), cfg.num_attention_heads, cfg.kv_heads());
        let normal = Init::Randn { mean: 0.0, stdev: cfg.initializer_range };
        let embed = (&m / "embed_tokens").var("weight", &[cfg.vocab_size, h], normal);
        let mut layers = Vec::new();
        for i in 0..cfg.num_hidden_layers {
            let l = &m / "layers" / i;
            let a = &l / "self_attn";
            let proj = |name: &str, out: i64| {
                let p = &a / name;
                (p.var("weight", &[out, h], normal), p.var("bias", &[out], Init::Const(0.0)))
            };
            let q = proj("q_proj", nh * hd);
            let k = proj("k_proj", nkv * hd);
            let v = proj("v_proj", nkv * hd);
            let o = (&a / "o_proj").var("weight", &[h, nh * hd], normal);
            let mlp = &l / "mlp";
            layers.push(Layer {
                input_norm: (&l / "input_layernorm").var("weight", &[h], Init::Const(1.0)),
                q,
                k,
                v,
                o,
                post_norm: (&l / "post_attention_layernorm").var("weight", &[h], Init::Const(1.0)),
                gate: (&mlp / "gate_proj").var("weight", &[cfg.intermediate_size, h], normal),
                up: (&mlp / "up_proj").var("weight", &[cfg.intermediate_size, h], normal),
                down: (&mlp / "down_proj").var("weight", &[h, cfg.intermediate_size], normal),
            });
        }
        let norm = (&m / "norm").var("weight", &[h], Init::Const(1.0));
        let lm_head = (!cfg.tie_word_embeddings).then(|| (&root / "lm_head").var("weight", &[cfg.vocab_size, h], normal));
        if kind != Kind::Float {
            vs.set_kind(kind);
        }
        let inv_freq = {
            let idx = Tensor::arange_start_step(0, hd, 2, (Kind::Int64, Device::Cpu)).to_kind(Kind::Double) / hd as f64;
            (Tensor::from(cfg.theta()).to_kind(Kind::Double).pow(&idx)).reciprocal().to_kind(Kind::Float).to_device(device)
        };
        Ok(Qwen2 { cfg, vs, embed, layers, norm, lm_head, inv_freq })
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    pub fn kind(&self) -> Kind {
        self.embed.kind()
    }

    /// Parameters with their Hugging Face names, sorted by name.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        kiln_worker::sorted_variables(&self.vs)
    }

    /// Logits `[batch, new, vocab]` for `ids` `[batch, new]` at `positions`
    /// `[batch, new]`. `key_mask` `[batch, cached + new]` marks the keys each
    /// row may attend to (0 for left padding); with a `cache`, the new keys and
    /// values are appended to it.
    pub fn forward(&self, ids: &Tensor, positions: &Tensor, key_mask: &Tensor, mut cache: Option<&mut KvCache>) -> Tensor {
        let (b, t) = (ids.size()[0], ids.size()[1]);
        let cfg = &self.cfg;
        let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.kv_heads(), cfg.head_dim());
        let kind = self.kind();
        let past = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        if let Some(c) = cache.as_mut() {
            if c.layers.len() != self.layers.len() {
                c.layers = (0..self.layers.len()).map(|_| None).collect();
            }
        }
        let mut x = Tensor::embedding(&self.embed, ids, -1, false, false);

        // Rotary tables for these positions, in f32, then the model's kind.
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * self.inv_freq.view([1, 1, -1]);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        let (cos, sin) = (emb.cos().to_kind(kind).unsqueeze(1), emb.sin().to_kind(kind).unsqueeze(1));

        // Additive mask [b, 1, t, past + t]: causal within the sequence, and no
        // padded key.
        let s = past + t;
        let q_pos = Tensor::arange(t, (Kind::Int64, ids.device())) + past;
        let k_pos = Tensor::arange(s, (Kind::Int64, ids.device()));
        let causal = k_pos.unsqueeze(0).le_tensor(&q_pos.unsqueeze(1));
        let allowed = causal.unsqueeze(0).unsqueeze(0).logical_and(&key_mask.to_kind(Kind::Bool).view([b, 1, 1, s]));
        let min = match kind {
            Kind::BFloat16 => -3.3895e38,
            Kind::Half => -65504.0,
            _ => f32::MIN as f64,
        };
        let mask = Tensor::zeros([b, 1, t, s], (kind, ids.device())).masked_fill(&allowed.logical_not(), min);

        let scale = 1.0 / (hd as f64).sqrt();
        for (i, l) in self.layers.iter().enumerate() {
            let hnorm = rms_norm(&x, &l.input_norm, cfg.rms_norm_eps);
            let q = hnorm.linear(&l.q.0, Some(&l.q.1)).view([b, t, nh, hd]).transpose(1, 2);
            let k = hnorm.linear(&l.k.0, Some(&l.k.1)).view([b, t, nkv, hd]).transpose(1, 2);
            let v = hnorm.linear(&l.v.0, Some(&l.v.1)).view([b, t, nkv, hd]).transpose(1, 2);
            let q = &q * &cos + rotate_half(&q) * &sin;
            let k = &k * &cos + rotate_half(&k) * &sin;
            let (k, v) = match cache.as_mut() {
                Some(c) => {
                    let kv = match c.layers[i].take() {
                        Some((pk, pv)) => (Tensor::cat(&[pk, k], 2), Tensor::cat(&[pv, v], 2)),
                        None => (k, v),
                    };
                    c.layers[i] = Some((kv.0.shallow_clone(), kv.1.shallow_clone()));
                    kv
                }
                None => (k, v),
            };
            let rep = nh / nkv;
            let expand = |x: &Tensor| {
                if rep == 1 {
                    x.shallow_clone()
                } else {
                    x.unsqueeze(2).expand([b, nkv, rep, s, hd], false).reshape([b, nh, s, hd])
                }
            };
            let (k, v) = (expand(&k), expand(&v));
            let scores = q.matmul(&k.transpose(2, 3)) * scale + &mask;
            let probs = scores.softmax(-1, Kind::Float).to_kind(kind);
            let attn = probs.matmul(&v).transpose(1, 2).reshape([b, t, nh * hd]);
            x = x + attn.linear::<Tensor>(&l.o, None);
            let hnorm = rms_norm(&x, &l.post_norm, cfg.rms_norm_eps);
            let mlp = (hnorm.linear::<Tensor>(&l.gate, None).silu() * hnorm.linear::<Tensor>(&l.up, None)).linear::<Tensor>(&l.down, None);
            x = x + mlp;
        }
        let x = rms_norm(&x, &self.norm, cfg.rms_norm_eps);
        x.linear::<Tensor>(self.lm_head.as_ref().unwrap_or(&self.embed), None)
    }
}

/// Positions for a left-padded batch: 0 at each row's first real token.
pub fn positions_from_mask(mask: &Tensor) -> Tensor {
    (mask.to_kind(Kind::Int64).cumsum(-1, Kind::Int64) - 1).clamp_min(0)
}
