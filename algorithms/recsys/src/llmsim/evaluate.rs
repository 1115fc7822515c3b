//! How well the simulator predicts real engagement: each user's last
//! interaction is held out (as SASRec's test set), the voters judge it from
//! the user's earlier interactions (liked: rating ≥ `positive_at`), and
//! their votes are scored against what the user did — AUC of each voter's
//! score, precision and accuracy of its vote — per voter and for the 2-of-3
//! ensemble.

use super::analysis::ItemAnalysis;
use super::embed::SentenceEncoder;
use super::sasrec::{read, Interactions, Sasrec, SasrecJob};
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

/// The three voters over one set of interactions: each item's analysis and
/// pros/cons embeddings (by item index), and the SASRec voter. Both the
/// evaluation below and the simulator's environment ask it.
pub struct Panel {
    pub data: Interactions,
    analyses: Vec<Option<ItemAnalysis>>,
    embeddings: Vec<Option<(Vec<f32>, Vec<f32>)>>,
    sasrec: Option<SasrecVoter>,
}

/// The voters on one (user, history, item): keyword, embedding and SASRec
/// scores (pros overlap − cons overlap; pros similarity − cons similarity;
/// p) and votes. A voter that is not configured scores 0 (SASRec: ½) and
/// never votes yes.
pub struct Verdict {
    pub scores: [f64; 3],
    pub votes: [bool; 3],
}

impl Panel {
    /// `analyses` by item name; the embeddings of the analysed items' pros and cons are computed once here.
    pub fn new(data: Interactions, analyses: &HashMap<String, ItemAnalysis>, encoder: Option<&SentenceEncoder>, sasrec: Option<SasrecVoter>) -> Result<Panel, String> {
        let analyses: Vec<Option<ItemAnalysis>> = data.item_names.iter().map(|n| analyses.get(n).cloned()).collect();
        let mut embeddings = vec![None; analyses.len()];
        if let Some(enc) = encoder {
            let have: Vec<usize> = (0..analyses.len()).filter(|&i| analyses[i].is_some()).collect();
            let texts: Vec<&str> = have.iter().filter_map(|&i| analyses[i].as_ref()).flat_map(|a| [a.pros.as_str(), a.cons.as_str()]).collect();
            let e = enc.embed(&texts, 64).to_device(Device::Cpu).to_kind(Kind::Float);
            let d = e.size()[1] as usize;
            let flat: Vec<f32> = Vec::try_from(e.reshape([-1])).map_err(|e: tch::TchError| e.to_string())?;
            for (k, &i) in have.iter().enumerate() {
                embeddings[i] = Some((flat[2 * k * d..(2 * k + 1) * d].to_vec(), flat[(2 * k + 1) * d..(2 * k + 2) * d].to_vec()));
            }
        }
        Ok(Panel { data, analyses, embeddings, sasrec })
    }

    pub fn analysed(&self) -> usize {
        self.analyses.iter().filter(|a| a.is_some()).count()
    }

    /// Item `item`'s (1-based) analysis and pros/cons embeddings, where present.
    pub fn item(&self, item: i64) -> (Option<&ItemAnalysis>, Option<(&[f32], &[f32])>) {
        let i = (item - 1) as usize;
        (self.analyses.get(i).and_then(Option::as_ref), self.embeddings.get(i).and_then(Option::as_ref).map(|(p, c)| (p.as_slice(), c.as_slice())))
    }

    /// The voters on `item` (1-based) for `user` after `history` ((item, liked)
    /// pairs, oldest first); None when the item has no analysis.
    pub fn verdict(&self, user: usize, history: &[(i64, f32)], item: i64) -> Option<Verdict> {
        let idx = |i: i64| (i - 1) as usize;
        let cand = self.analyses.get(idx(item))?.as_ref()?;
        let seen: Vec<Seen> = history.iter().filter_map(|&(i, y)| self.analyses.get(idx(i)).and_then(Option::as_ref).map(|a| Seen { item: a, liked: y > 0.5 })).collect();
        let (p, c, kv) = keyword_vote(cand, &seen);
        let (es, ev) = match self.embeddings.get(idx(item)).and_then(Option::as_ref) {
            Some((cp, cc)) => {
                let hist: Vec<(&[f32], &[f32], bool)> = history.iter().filter_map(|&(i, y)| self.embeddings.get(idx(i)).and_then(Option::as_ref).map(|(a, b)| (a.as_slice(), b.as_slice(), y > 0.5))).collect();
                let (pos, neg, v) = embedding_vote(cp, cc, &hist);
                ((pos.max(-1.0) - neg.max(-1.0)) as f64, v)
            }
            None => (0.0, false),
        };
        let prob = self.sasrec.as_ref().and_then(|s| {
            let names: Vec<&str> = history.iter().map(|&(i, _)| self.data.item_names[idx(i)].as_str()).collect();
            s.probability(&self.data.user_names[user], &names, &self.data.item_names[idx(item)])
        });
        Some(Verdict { scores: [p as f64 - c as f64, es, prob.unwrap_or(0.5)], votes: [kv, ev, prob.is_some_and(model_vote)] })
    }
}

/// Per voter and for the ensemble: `auc`, `precision`, `accuracy`, `engaged_rate`; and `held_out`, `positive_rate`.
pub fn evaluate(interactions: &SasrecJob, analyses: &HashMap<String, ItemAnalysis>, encoder: Option<&SentenceEncoder>, sasrec: Option<SasrecVoter>, seed: u64) -> Result<BTreeMap<String, f64>, String> {
    let (has_encoder, has_sasrec) = (encoder.is_some(), sasrec.is_some());
    let panel = Panel::new(read(interactions)?, analyses, encoder, sasrec)?;
    // Scores and votes per voter: keyword, embedding, model, ensemble.
    let mut rows: Vec<([f64; 4], [bool; 4], f32)> = Vec::new();
    for (u, seq) in panel.data.users.iter().enumerate() {
        if seq.len() < 3 {
            continue;
        }
        let (last, past) = (seq[seq.len() - 1], &seq[..seq.len() - 1]);
        let Some(v) = panel.verdict(u, past, last.0) else { continue };
        let coin = kiln_worker::rng::unit(kiln_worker::rng::splitmix(seed ^ u as u64)) < 0.5;
        let e = ensemble(v.votes, !past.is_empty(), coin);
        let [ks, es, ms] = v.scores;
        let [kv, ev, mv] = v.votes;
        rows.push(([ks, es, ms, v.votes.iter().filter(|&&x| x).count() as f64], [kv, ev, mv, e], last.1));
    }
    if rows.is_empty() {
        return Err("no held-out interaction has an analysed item (are the analyses of the same items?)".into());
    }
    let y: Vec<f32> = rows.iter().map(|r| r.2).collect();
    let mut out = BTreeMap::new();
    out.insert("held_out".into(), rows.len() as f64);
    out.insert("positive_rate".into(), y.iter().sum::<f32>() as f64 / y.len() as f64);
    for (k, name) in ["keyword", "embedding", "sasrec", "ensemble"].iter().enumerate() {
        if (k == 1 && !has_encoder) || (k == 2 && !has_sasrec) {
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
