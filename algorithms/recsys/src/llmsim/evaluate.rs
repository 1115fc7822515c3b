//! How well the simulator predicts real engagement: each user's last
//! interaction is held out (as SASRec's test set), the voters judge it from
//! the user's earlier interactions (liked: rating ≥ `positive_at`), and
//! their votes are scored against what the user did — AUC of each voter's
//! score, precision and accuracy of its vote — per voter and for the 2-of-3
//! ensemble.

use super::analysis::ItemAnalysis;
use super::embed::SentenceEncoder;
use super::sasrec::{read, Sasrec, SasrecJob};
use super::voters::{embedding_vote, ensemble, keyword_vote, model_vote, Seen};
use crate::metrics::auc;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// A SASRec voter rebuilt from `kiln export` of an `llmsim.sasrec` job.
pub struct SasrecVoter {
    _vs: nn::VarStore,
    model: Sasrec,
    users: HashMap<String, i64>,
    items: HashMap<String, i64>,
    maxlen: usize,
}

impl SasrecVoter {
    pub fn load(dir: &Path) -> Result<SasrecVoter, String> {
        let meta_path = dir.join("sasrec.json");
        let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&meta_path).map_err(|e| format!("{}: {e}", meta_path.display()))?).map_err(|e| format!("{}: {e}", meta_path.display()))?;
        let job: SasrecJob = serde_json::from_value(meta["job"].clone()).map_err(|e| format!("{}: {e}", meta_path.display()))?;
        let names = |k: &str| -> HashMap<String, i64> { meta[k].as_array().map(|a| a.iter().enumerate().filter_map(|(i, v)| v.as_str().map(|s| (s.to_string(), i as i64))).collect()).unwrap_or_default() };
        let (users, items) = (names("users"), names("items"));
        let mut vs = nn::VarStore::new(Device::Cpu);
        let model = Sasrec::new(&vs.root(), users.len(), items.len(), &job);
        vs.load(dir.join("sasrec.safetensors")).map_err(|e| format!("{}: {e}", dir.join("sasrec.safetensors").display()))?;
        Ok(SasrecVoter { _vs: vs, model, users, items, maxlen: job.maxlen })
    }

    /// p(liked) of `item` for `user` after `history` (item names, oldest first); None for unknown names.
    pub fn probability(&self, user: &str, history: &[&str], item: &str) -> Option<f64> {
        let u = *self.users.get(user)?;
        let c = *self.items.get(item)? + 1;
        let past: Vec<i64> = history.iter().rev().take(self.maxlen).rev().filter_map(|h| self.items.get(*h).map(|i| i + 1)).collect();
        let h: Vec<i64> = std::iter::repeat(0).take(self.maxlen - past.len()).chain(past).collect();
        let _g = tch::no_grad_guard();
        let p = self.model.forward(&Tensor::from_slice(&[u]), &Tensor::from_slice(&h).view([1, self.maxlen as i64]), &Tensor::from_slice(&[c])).sigmoid();
        Some(p.double_value(&[0]))
    }
}

/// Per voter and for the ensemble: `auc`, `precision`, `accuracy`, `engaged_rate`; and `held_out`, `positive_rate`.
pub fn evaluate(interactions: &SasrecJob, analyses: &HashMap<String, ItemAnalysis>, encoder: Option<&SentenceEncoder>, sasrec: Option<&SasrecVoter>, seed: u64) -> Result<BTreeMap<String, f64>, String> {
    let data = read(interactions)?;
    // Embeddings of every analysed item's pros and cons, once.
    let names: Vec<&String> = analyses.keys().collect();
    let emb: HashMap<&str, (Vec<f32>, Vec<f32>)> = match encoder {
        Some(enc) => {
            let texts: Vec<&str> = names.iter().flat_map(|n| [analyses[*n].pros.as_str(), analyses[*n].cons.as_str()]).collect();
            let e = enc.embed(&texts, 64).to_device(Device::Cpu).to_kind(Kind::Float);
            let d = e.size()[1] as usize;
            let flat: Vec<f32> = Vec::try_from(e.reshape([-1])).map_err(|e: tch::TchError| e.to_string())?;
            names.iter().enumerate().map(|(k, n)| (n.as_str(), (flat[2 * k * d..(2 * k + 1) * d].to_vec(), flat[(2 * k + 1) * d..(2 * k + 2) * d].to_vec()))).collect()
        }
        None => HashMap::new(),
    };
    // Scores and votes per voter: keyword, embedding, model, ensemble.
    let mut rows: Vec<([f64; 4], [bool; 4], f32)> = Vec::new();
    for (u, seq) in data.users.iter().enumerate() {
        if seq.len() < 3 {
            continue;
        }
        let (last, past) = (seq[seq.len() - 1], &seq[..seq.len() - 1]);
        let item_name = |i: i64| data.item_names[(i - 1) as usize].as_str();
        let Some(cand) = analyses.get(item_name(last.0)) else { continue };
        let history: Vec<Seen> = past.iter().filter_map(|&(i, y)| analyses.get(item_name(i)).map(|a| Seen { item: a, liked: y > 0.5 })).collect();
        let (p, c, kv) = keyword_vote(cand, &history);
        let (es, ev) = match emb.get(item_name(last.0)) {
            Some((cp, cc)) => {
                let hist: Vec<(&[f32], &[f32], bool)> = past.iter().filter_map(|&(i, y)| emb.get(item_name(i)).map(|(a, b)| (a.as_slice(), b.as_slice(), y > 0.5))).collect();
                let (pos, neg, v) = embedding_vote(cp, cc, &hist);
                ((pos.max(-1.0) - neg.max(-1.0)) as f64, v)
            }
            None => (0.0, false),
        };
        let past_names: Vec<&str> = past.iter().map(|&(i, _)| item_name(i)).collect();
        let prob = sasrec.and_then(|s| s.probability(&data.user_names[u], &past_names, item_name(last.0)));
        let (ms, mv) = (prob.unwrap_or(0.5), prob.is_some_and(model_vote));
        let coin = kiln_worker::rng::unit(kiln_worker::rng::splitmix(seed ^ u as u64)) < 0.5;
        let votes = [kv, ev, mv];
        let e = ensemble(votes, !history.is_empty(), coin);
        rows.push(([p as f64 - c as f64, es, ms, votes.iter().filter(|&&v| v).count() as f64], [kv, ev, mv, e], last.1));
    }
    if rows.is_empty() {
        return Err("no held-out interaction has an analysed item (are the analyses of the same items?)".into());
    }
    let y: Vec<f32> = rows.iter().map(|r| r.2).collect();
    let mut out = BTreeMap::new();
    out.insert("held_out".into(), rows.len() as f64);
    out.insert("positive_rate".into(), y.iter().sum::<f32>() as f64 / y.len() as f64);
    for (k, name) in ["keyword", "embedding", "sasrec", "ensemble"].iter().enumerate() {
        if (k == 1 && encoder.is_none()) || (k == 2 && sasrec.is_none()) {
            continue;
        }
        let s: Vec<f32> = rows.iter().map(|r| r.0[k] as f32).collect();
        let v: Vec<bool> = rows.iter().map(|r| r.1[k]).collect();
        let said = v.iter().filter(|&&x| x).count();
        let hits = v.iter().zip(&y).filter(|(&x, &t)| x && t > 0.5).count();
        let right = v.iter().zip(&y).filter(|(&x, &t)| x == (t > 0.5)).count();
        out.insert(format!("{name}_auc"), auc(&s, &y).unwrap_or(f64::NAN));
        out.insert(format!("{name}_precision"), if said > 0 { hits as f64 / said as f64 } else { f64::NAN });
        out.insert(format!("{name}_accuracy"), right as f64 / y.len() as f64);
        out.insert(format!("{name}_engaged_rate"), said as f64 / y.len() as f64);
    }
    Ok(out)
}
