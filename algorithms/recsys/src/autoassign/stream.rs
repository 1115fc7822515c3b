//! The interaction stream AutoAssign+ learns from: interactions in time
//! order, cut into chunks, with ids numbered densely in order of first
//! appearance. Two sources: a generator with a known cold-start structure,
//! and a reader for any timestamped interaction log (MovieLens' `u.data` and
//! `ratings.dat`, or a CSV/TSV with a header).

use kiln_worker::rng::{splitmix, unit};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{0}")]
    Spec(String),
}

/// `[algorithm.stream]`: one source, cut into `chunks`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StreamSpec {
    /// Chunks the stream is cut into (test-then-train, one after another).
    #[serde(default = "chunks")]
    pub chunks: usize,
    pub synthetic: Option<Synthetic>,
    pub log: Option<LogSource>,
}

fn chunks() -> usize {
    20
}

/// The generator. Users and items arrive over the stream (a share at the
/// start, the rest at uniform random chunks); each has a latent group, seen
/// through a noisy side feature (segment, category), and a latent vector of
/// its own. Click logit = −1 + `group_effect`·[same group] + ⟨v_user, w_item⟩
/// + b_item, the latent vectors 4-dimensional with entries of sd `individual`.
/// Activity is Zipf-distributed over the ids that have arrived, so most ids
/// are rare: their group, which the side feature reveals, is all a model can
/// know of them, while frequent ids reward an embedding of their own.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Synthetic {
    #[serde(default = "users")]
    pub users: usize,
    #[serde(default = "items")]
    pub items: usize,
    /// Interactions per chunk.
    #[serde(default = "chunk_size")]
    pub chunk_size: usize,
    #[serde(default = "groups")]
    pub groups: usize,
    /// Zipf exponent of user and item activity.
    #[serde(default = "zipf")]
    pub zipf: f64,
    /// Share of ids present from the first chunk.
    #[serde(default = "initial")]
    pub initial: f64,
    /// Probability that a side feature shows the true group.
    #[serde(default = "side_accuracy")]
    pub side_accuracy: f64,
    #[serde(default = "group_effect")]
    pub group_effect: f64,
    #[serde(default = "individual")]
    pub individual: f64,
    #[serde(default)]
    pub seed: u64,
}

fn group_effect() -> f64 {
    1.5
}
fn individual() -> f64 {
    0.8
}
fn users() -> usize {
    3000
}
fn items() -> usize {
    1500
}
fn chunk_size() -> usize {
    4000
}
fn groups() -> usize {
    8
}
fn zipf() -> f64 {
    1.0
}
fn initial() -> f64 {
    0.3
}
fn side_accuracy() -> f64 {
    0.8
}

/// A timestamped interaction log.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogSource {
    pub path: PathBuf,
    /// Columns of a file with a header. A file without one (MovieLens'
    /// `u.data`, tab-separated, and `ratings.dat`, `::`-separated) is read
    /// as user, item, rating, timestamp.
    #[serde(default = "user_col")]
    pub user_column: String,
    #[serde(default = "item_col")]
    pub item_column: String,
    #[serde(default = "time_col")]
    pub time_column: String,
    #[serde(default = "label_col")]
    pub label_column: String,
    /// A label value at or above this is a positive (MovieLens: rating ≥ 4).
    #[serde(default = "positive_at")]
    pub positive_at: f64,
    /// Optional categorical side-feature columns (files with a header).
    pub user_feature: Option<String>,
    pub item_feature: Option<String>,
}

fn user_col() -> String {
    "user_id".into()
}
fn item_col() -> String {
    "item_id".into()
}
fn time_col() -> String {
    "timestamp".into()
}
fn label_col() -> String {
    "rating".into()
}
fn positive_at() -> f64 {
    4.0
}

impl StreamSpec {
    pub fn check(&self) -> Result<(), String> {
        if self.synthetic.is_some() == self.log.is_some() {
            return Err("give exactly one source: [algorithm.stream.synthetic] or [algorithm.stream.log]".into());
        }
        if self.chunks < 2 {
            return Err(format!("chunks = {} must be >= 2 (each chunk is tested before it is trained on)", self.chunks));
        }
        if let Some(s) = &self.synthetic {
            if s.users < 2 || s.items < 2 || s.chunk_size == 0 || s.groups == 0 {
                return Err("synthetic: users and items must be >= 2, chunk_size and groups >= 1".into());
            }
            if !(s.zipf >= 0.0 && s.zipf.is_finite()) || !(0.0..=1.0).contains(&s.initial) || !(0.0..=1.0).contains(&s.side_accuracy) {
                return Err("synthetic: zipf must be >= 0, initial and side_accuracy in [0, 1]".into());
            }
        }
        Ok(())
    }
}

/// The stream: interaction k is (user[k], item[k]) with label[k]; ids are
/// dense, numbered in order of first appearance; side features are dense
/// codes (one code, 0, when the source has none).
#[derive(Debug, Clone)]
pub struct Stream {
    pub user: Vec<u32>,
    pub item: Vec<u32>,
    pub label: Vec<f32>,
    /// Per id, its side-feature code.
    pub user_side: Vec<u32>,
    pub item_side: Vec<u32>,
    pub user_sides: usize,
    pub item_sides: usize,
    /// Interaction ranges, in time order.
    pub chunks: Vec<std::ops::Range<usize>>,
    /// The generator's click probability of each interaction (the known
    /// ground truth; empty for a log).
    pub truth: Vec<f32>,
}

impl Stream {
    pub fn users(&self) -> usize {
        self.user_side.len()
    }

    pub fn items(&self) -> usize {
        self.item_side.len()
    }

    pub fn len(&self) -> usize {
        self.label.len()
    }

    pub fn is_empty(&self) -> bool {
        self.label.is_empty()
    }
}

pub fn load(spec: &StreamSpec) -> Result<Stream, StreamError> {
    spec.check().map_err(StreamError::Spec)?;
    match (&spec.synthetic, &spec.log) {
        (Some(s), _) => Ok(generate(s, spec.chunks)),
        (_, Some(l)) => read_log(l, spec.chunks),
        _ => Err(StreamError::Spec("no stream source".into())),
    }
}

/// A draw in [0, 1) from a key.
fn draw(key: u64) -> f64 {
    unit(splitmix(key))
}

fn normal(key: u64) -> f64 {
    // Box-Muller from two keyed uniforms.
    let (a, b) = (draw(key).max(1e-12), draw(key ^ 0x5bd1_e995));
    (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
}

pub fn generate(s: &Synthetic, chunks: usize) -> Stream {
    let key = |what: u64, a: u64, b: u64| splitmix(s.seed ^ splitmix(what << 56 ^ splitmix(a ^ (b << 32))));
    struct Side {
        group: Vec<usize>,
        side: Vec<u32>,
        arrival: Vec<usize>,
        weight: Vec<f64>,
        vec: Vec<[f64; 4]>,
    }
    let make = |n: usize, tag: u64| {
        let mut perm: Vec<usize> = (0..n).collect();
        perm.sort_by_key(|&i| key(tag, i as u64, 9));
        let mut weight = vec![0.0; n];
        for (rank, &i) in perm.iter().enumerate() {
            weight[i] = 1.0 / ((rank + 1) as f64).powf(s.zipf);
        }
        let group: Vec<usize> = (0..n).map(|i| (key(tag, i as u64, 1) % s.groups as u64) as usize).collect();
        let side = (0..n).map(|i| if draw(key(tag, i as u64, 2)) < s.side_accuracy { group[i] as u32 } else { (key(tag, i as u64, 3) % s.groups as u64) as u32 }).collect();
        let mut arrival: Vec<usize> = (0..n).map(|i| if draw(key(tag, i as u64, 4)) < s.initial { 0 } else { 1 + (key(tag, i as u64, 5) % (chunks as u64 - 1).max(1)) as usize }).collect();
        // The most active id is there from the start, so the first chunk has someone to draw.
        arrival[perm[0]] = 0;
        let vec = (0..n).map(|i| std::array::from_fn(|d| s.individual * normal(key(tag, i as u64, 10 + d as u64)))).collect();
        Side { group, side, arrival, weight, vec }
    };
    let (us, is) = (make(s.users, 1), make(s.items, 2));
    let bias: Vec<f64> = (0..s.items).map(|i| 0.5 * normal(key(3, i as u64, 0))).collect();
    // The ids that have arrived by chunk c and their cumulative weights: draws by bisection.
    let arrived = |side: &Side, c: usize| {
        let ids: Vec<usize> = (0..side.arrival.len()).filter(|&i| side.arrival[i] <= c).collect();
        let mut cum = Vec::with_capacity(ids.len());
        let mut t = 0.0;
        for &i in &ids {
            t += side.weight[i];
            cum.push(t);
        }
        (ids, cum)
    };
    let pick = |(ids, cum): &(Vec<usize>, Vec<f64>), k: u64| {
        let t = draw(k) * cum.last().copied().unwrap_or(0.0);
        ids[cum.partition_point(|&c| c < t).min(ids.len().saturating_sub(1))]
    };
    let (mut raw_u, mut raw_i, mut label, mut ranges, mut truth) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for c in 0..chunks {
        let start = label.len();
        let (ua, ia) = (arrived(&us, c), arrived(&is, c));
        for k in 0..s.chunk_size {
            let n = (c * s.chunk_size + k) as u64;
            let (u, i) = (pick(&ua, key(4, n, 0)), pick(&ia, key(5, n, 0)));
            let dot: f64 = us.vec[u].iter().zip(&is.vec[i]).map(|(a, b)| a * b).sum();
            let logit = -1.0 + if us.group[u] == is.group[i] { s.group_effect } else { 0.0 } + dot + bias[i];
            let p = 1.0 / (1.0 + (-logit).exp());
            truth.push(p as f32);
            raw_u.push(u);
            raw_i.push(i);
            label.push(if draw(key(6, n, 0)) < p { 1.0 } else { 0.0 });
        }
        ranges.push(start..label.len());
    }
    let (user, user_order) = densify(&raw_u);
    let (item, item_order) = densify(&raw_i);
    Stream {
        user,
        item,
        label,
        user_side: user_order.iter().map(|&u| us.side[u]).collect(),
        item_side: item_order.iter().map(|&i| is.side[i]).collect(),
        user_sides: s.groups,
        item_sides: s.groups,
        chunks: ranges,
        truth,
    }
}

/// Dense ids in order of first appearance, and the raw value of each.
fn densify<T: Copy + Eq + std::hash::Hash>(raw: &[T]) -> (Vec<u32>, Vec<T>) {
    let mut map = HashMap::new();
    let mut order = Vec::new();
    let ids = raw
        .iter()
        .map(|&r| {
            *map.entry(r).or_insert_with(|| {
                order.push(r);
                (order.len() - 1) as u32
            })
        })
        .collect();
    (ids, order)
}

pub fn read_log(l: &LogSource, chunks: usize) -> Result<Stream, StreamError> {
    let path = l.path.display().to_string();
    let err = |line: usize, m: String| StreamError::File { path: path.clone(), message: if line > 0 { format!("line {line}: {m}") } else { m } };
    let text = std::fs::read_to_string(&l.path).map_err(|e| err(0, e.to_string()))?;
    let first = text.lines().next().ok_or_else(|| err(0, "the file is empty".into()))?;
    let sep = if first.contains("::") {
        "::"
    } else if first.contains('\t') {
        "\t"
    } else {
        ","
    };
    let cells = |line: &str| -> Vec<String> { line.split(sep).map(|c| c.trim().trim_matches('"').to_string()).collect() };
    let head = cells(first);
    // A header names its columns: no cell of it is a number.
    let headed = head.iter().all(|c| c.parse::<f64>().is_err());
    // Column positions: user, item, label, time, user feature, item feature.
    let pos = |name: &str| head.iter().position(|h| h == name).ok_or_else(|| err(1, format!("no column '{name}' (columns: {}); set the matching *_column key", head.join(", "))));
    let (cu, ci, cl, ct, cuf, cif) = if headed {
        (pos(&l.user_column)?, pos(&l.item_column)?, pos(&l.label_column)?, pos(&l.time_column)?, l.user_feature.as_deref().map(pos).transpose()?, l.item_feature.as_deref().map(pos).transpose()?)
    } else {
        if l.user_feature.is_some() || l.item_feature.is_some() {
            return Err(err(1, "side-feature columns need a file with a header".into()));
        }
        if head.len() < 4 {
            return Err(err(1, format!("{} fields; a file without a header must hold user, item, rating, timestamp", head.len())));
        }
        (0, 1, 2, 3, None, None)
    };
    struct Row {
        time: f64,
        line: usize,
        user: String,
        item: String,
        label: f32,
        uf: String,
        itf: String,
    }
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().skip(usize::from(headed)) {
        if line.trim().is_empty() {
            continue;
        }
        let c = cells(line);
        let width = [Some(cu), Some(ci), Some(cl), Some(ct), cuf, cif].into_iter().flatten().max().unwrap_or(0);
        if c.len() <= width {
            return Err(err(i + 1, format!("{} fields, expected at least {}", c.len(), width + 1)));
        }
        let num = |k: usize, what: &str| c[k].parse::<f64>().map_err(|_| err(i + 1, format!("{what} '{}' is not a number", c[k])));
        let (time, value) = (num(ct, "timestamp")?, num(cl, "label")?);
        rows.push(Row { time, line: i, user: c[cu].clone(), item: c[ci].clone(), label: if value >= l.positive_at { 1.0 } else { 0.0 }, uf: cuf.map(|k| c[k].clone()).unwrap_or_default(), itf: cif.map(|k| c[k].clone()).unwrap_or_default() });
    }
    if rows.len() < chunks {
        return Err(err(0, format!("{} interactions cannot fill {chunks} chunks", rows.len())));
    }
    // Time order; the file's order among equal times.
    rows.sort_by(|a, b| a.time.total_cmp(&b.time).then(a.line.cmp(&b.line)));
    let (user, user_order) = densify(&rows.iter().map(|r| r.user.as_str()).collect::<Vec<_>>());
    let (item, item_order) = densify(&rows.iter().map(|r| r.item.as_str()).collect::<Vec<_>>());
    let side = |order: &[&str], of: &dyn Fn(&Row) -> (&str, &str)| -> (Vec<u32>, usize) {
        let mut first: HashMap<&str, &str> = HashMap::new();
        for r in &rows {
            let (id, f) = of(r);
            first.entry(id).or_insert(f);
        }
        let feats: Vec<&str> = order.iter().map(|id| first.get(id).copied().unwrap_or("")).collect();
        let (codes, values) = densify(&feats);
        (codes, values.len())
    };
    let (user_side, user_sides) = side(&user_order, &|r: &Row| (r.user.as_str(), r.uf.as_str()));
    let (item_side, item_sides) = side(&item_order, &|r: &Row| (r.item.as_str(), r.itf.as_str()));
    let n = rows.len();
    Ok(Stream {
        user,
        item,
        label: rows.iter().map(|r| r.label).collect(),
        user_side,
        item_side,
        user_sides,
        item_sides,
        chunks: (0..chunks).map(|c| c * n / chunks..(c + 1) * n / chunks).collect(),
        truth: Vec::new(),
    })
}

/// Writes a stream's interactions as a headered CSV (for tests and for
/// reading the generator's output with other tools).
pub fn write_csv(s: &Stream, path: &Path) -> std::io::Result<()> {
    let mut out = String::from("user_id,item_id,rating,timestamp,segment,category\n");
    for k in 0..s.len() {
        let (u, i) = (s.user[k] as usize, s.item[k] as usize);
        out += &format!("u{u},i{i},{},{k},{},{}\n", if s.label[k] > 0.5 { 5 } else { 1 }, s.user_side[u], s.item_side[i]);
    }
    std::fs::write(path, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synth() -> Synthetic {
        Synthetic { users: 400, items: 200, chunk_size: 500, groups: 4, zipf: 1.0, initial: 0.3, side_accuracy: 0.8, group_effect: 1.5, individual: 0.8, seed: 1 }
    }

    #[test]
    fn the_generator_has_a_long_tail_and_ids_keep_arriving() {
        let s = generate(&synth(), 6);
        assert_eq!((s.len(), s.chunks.len()), (3000, 6));
        assert_eq!(generate(&synth(), 6).label, s.label);
        let mut count = vec![0usize; s.users()];
        for &u in &s.user {
            count[u as usize] += 1;
        }
        let rare = count.iter().filter(|&&c| c < 5).count();
        assert!(rare * 2 > s.users(), "{rare} of {} users are rare", s.users());
        // New ids appear in every chunk, not only the first.
        let first_chunk_ids = s.user[s.chunks[0].clone()].iter().copied().max().unwrap();
        let later_new = s.user[s.chunks[5].clone()].iter().filter(|&&u| u > first_chunk_ids).count();
        assert!(later_new > 0);
        let ctr = s.label.iter().sum::<f32>() / s.len() as f32;
        assert!((0.15..0.7).contains(&ctr), "ctr {ctr}");
    }

    #[test]
    fn a_log_round_trips_and_movielens_files_read_without_a_header() {
        let dir = tempfile::tempdir().unwrap();
        let s = generate(&synth(), 4);
        let p = dir.path().join("log.csv");
        write_csv(&s, &p).unwrap();
        let src = LogSource { path: p, user_column: "user_id".into(), item_column: "item_id".into(), time_column: "timestamp".into(), label_column: "rating".into(), positive_at: 4.0, user_feature: Some("segment".into()), item_feature: Some("category".into()) };
        let r = read_log(&src, 4).unwrap();
        assert_eq!((r.user.clone(), r.item.clone(), r.label.clone()), (s.user.clone(), s.item.clone(), s.label.clone()));
        assert_eq!(r.user_side.len(), s.users());
        assert_eq!(r.chunks, s.chunks);
        let ml = dir.path().join("u.data");
        std::fs::write(&ml, "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n196\t51\t5\t881250950\n").unwrap();
        let r = read_log(&LogSource { path: ml.clone(), user_feature: None, item_feature: None, ..src.clone() }, 2).unwrap();
        // Sorted by time: user 22 first.
        assert_eq!((r.user.clone(), r.label.clone(), r.users()), (vec![0, 1, 1, 2], vec![0.0, 0.0, 1.0, 0.0], 3));
        std::fs::write(&ml, "1::2::x::4\n").unwrap();
        let e = read_log(&LogSource { path: ml, user_feature: None, item_feature: None, ..src }, 1).unwrap_err().to_string();
        assert!(e.contains("u.data") && e.contains("line 1") && e.contains("'x'"), "{e}");
    }
}
