//! Small Transformer pieces: multi-head self-attention with an additive mask
//! and a post-norm encoder layer (PyTorch's `TransformerEncoderLayer` default:
//! `x = LN(x + SA(x)); x = LN(x + FFN(x))`, ReLU, dropout).

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// A large negative instead of −∞ in masks: a row whose keys are all masked
/// (an empty history) then attends evenly instead of producing NaN.
const MASKED: f64 = -1e9;

/// The additive mask `[B, 1, T, T]` for causal attention over left-padded
/// sequences: position i sees positions ≤ i that are real (`real` `[B, T]`).
pub fn causal_mask(real: &Tensor) -> Tensor {
    let t = real.size()[1];
    let future = Tensor::ones([t, t], (Kind::Bool, real.device())).triu(1);
    let pad = real.logical_not().unsqueeze(1).unsqueeze(1); // [B, 1, 1, T]
    let blocked = pad.logical_or(&future.unsqueeze(0).unsqueeze(0));
    Tensor::zeros(blocked.size(), (Kind::Float, real.device())).masked_fill(&blocked, MASKED)
}

pub struct EncoderLayer {
    qkv: nn::Linear,
    out: nn::Linear,
    ff1: nn::Linear,
    ff2: nn::Linear,
    n1: nn::LayerNorm,
    n2: nn::LayerNorm,
    heads: i64,
    dropout: f64,
}

impl EncoderLayer {
    pub fn new(p: &nn::Path, width: i64, heads: i64, ffn: i64, dropout: f64) -> EncoderLayer {
        EncoderLayer {
            qkv: nn::linear(p / "qkv", width, 3 * width, Default::default()),
            out: nn::linear(p / "out", width, width, Default::default()),
            ff1: nn::linear(p / "ff1", width, ffn, Default::default()),
            ff2: nn::linear(p / "ff2", ffn, width, Default::default()),
            n1: nn::layer_norm(p / "n1", vec![width], Default::default()),
            n2: nn::layer_norm(p / "n2", vec![width], Default::default()),
            heads,
            dropout,
        }
    }

    /// `x` `[B, T, W]`, `mask` additive `[B, 1, T, T]`.
    pub fn forward(&self, x: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        let (b, t, w) = x.size3().unwrap_or((0, 0, 0));
        let dh = w / self.heads;
        let qkv = self.qkv.forward(x).view([b, t, 3, self.heads, dh]).permute([2, 0, 3, 1, 4]); // [3, B, H, T, dh]
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let scores = q.matmul(&k.transpose(-2, -1)) / (dh as f64).sqrt() + mask;
        let attn = scores.softmax(-1, Kind::Float).dropout(self.dropout, train);
        let ctx = attn.matmul(&v).transpose(1, 2).contiguous().view([b, t, w]);
        let x = self.n1.forward(&(x + self.out.forward(&ctx).dropout(self.dropout, train)));
        let ff = self.ff2.forward(&self.ff1.forward(&x).relu().dropout(self.dropout, train));
        self.n2.forward(&(&x + ff.dropout(self.dropout, train)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn causal_attention_never_looks_ahead_or_at_padding() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let layer = EncoderLayer::new(&vs.root(), 8, 2, 16, 0.0);
        let x = Tensor::randn([1, 4, 8], (Kind::Float, Device::Cpu));
        let real = Tensor::from_slice(&[false, true, true, true]).unsqueeze(0);
        let y = layer.forward(&x, &causal_mask(&real), false);
        // Changing the last token or the padded first one leaves position 2 alone.
        let x2 = x.copy();
        x2.get(0).get(3).copy_(&Tensor::randn([8], (Kind::Float, Device::Cpu)));
        x2.get(0).get(0).copy_(&Tensor::randn([8], (Kind::Float, Device::Cpu)));
        let y2 = layer.forward(&x2, &causal_mask(&real), false);
        let d = (y.get(0).get(2) - y2.get(0).get(2)).abs().max().double_value(&[]);
        assert!(d < 1e-6, "{d}");
        assert!((y.get(0).get(3) - y2.get(0).get(3)).abs().max().double_value(&[]) > 1e-3);
        // An all-padding row stays finite.
        let none = Tensor::from_slice(&[false, false, false, false]).unsqueeze(0);
        assert!(layer.forward(&x, &causal_mask(&none), false).isfinite().all().int64_value(&[]) == 1);
    }
}
