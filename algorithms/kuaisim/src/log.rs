//! KuaiRand-layout interaction logs, processed as KuaiSim does: the log read
//! (one file or several, e.g. both standard logs of KuaiRand-Pure), an
//! iterative k-core filter on users and items, ids re-indexed from 1 (0 is
//! padding), records sorted by (user, time), sessions as user-days, a split
//! per user (the last records to test, the ones before to validation, users
//! whose training part is too small dropped), user and video features joined
//! by id, and each record's history (the user's previous records).

use crate::{BEHAVIOURS, NB};
use kiln_recsys::table::{read_columns, Columns, TableError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("{path} lacks the column{s} {missing}; its columns are: {available}", s = if missing.contains(',') { "s" } else { "" })]
    MissingColumns { path: String, missing: String, available: String },
    #[error("{path}:{line}: {message}")]
    Line { path: String, line: usize, message: String },
    #[error("{0}")]
    Data(String),
}

/// Which files and how to process them (`[algorithm.data]` of KuaiSim jobs).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSpec {
    /// The log file(s), read in order as one log.
    pub log: Vec<PathBuf>,
    pub user_features: Option<PathBuf>,
    pub video_features: Option<PathBuf>,
    /// Categorical user features (one-hot in the reference).
    pub user_fields: Vec<String>,
    /// Categorical video features.
    pub video_fields: Vec<String>,
    /// A multi-hot video feature (comma-separated ids), or none.
    pub video_tags: Option<String>,
    /// Users and items with fewer records are removed, repeatedly, until none is left.
    pub core: usize,
    /// Per user: the last `test_last` records are the test split and the
    /// `val_last` before them validation.
    pub val_last: usize,
    pub test_last: usize,
    /// Users whose training records are fewer than this share of theirs are dropped.
    pub min_train_share: f64,
    /// Users or videos the feature files lack: "unknown" (every feature the
    /// unknown id, counted in the log) or "error".
    pub missing_features: String,
}

impl Default for LogSpec {
    fn default() -> Self {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        LogSpec {
            log: Vec::new(),
            user_features: None,
            video_features: None,
            user_fields: s(&["user_active_degree", "is_live_streamer", "is_video_author", "follow_user_num_range", "fans_user_num_range", "friend_user_num_range", "register_days_range", "onehot_feat0", "onehot_feat1", "onehot_feat6", "onehot_feat9", "onehot_feat10", "onehot_feat11"]),
            video_fields: s(&["video_type", "music_type", "upload_type"]),
            video_tags: Some("tag".into()),
            core: 20,
            val_last: 5,
            test_last: 5,
            min_train_share: 0.6,
            missing_features: "unknown".into(),
        }
    }
}

impl LogSpec {
    /// The same spec with every path absolute (for an export read elsewhere).
    pub fn absolute(&self) -> LogSpec {
        let abs = |p: &PathBuf| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        LogSpec { log: self.log.iter().map(abs).collect(), user_features: self.user_features.as_ref().map(abs), video_features: self.video_features.as_ref().map(abs), ..self.clone() }
    }

    pub fn check(&self) -> Result<(), String> {
        if self.log.is_empty() {
            return Err("log names no file: give the KuaiRand-layout log file(s)".into());
        }
        if !["unknown", "error"].contains(&self.missing_features.as_str()) {
            return Err(format!("missing_features '{}' is not one of unknown, error", self.missing_features));
        }
        if !(0.0..1.0).contains(&self.min_train_share) {
            return Err(format!("min_train_share {} must be in [0, 1)", self.min_train_share));
        }
        Ok(())
    }
}

/// Categorical features of users or videos, by re-indexed id (row 0: padding).
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    pub names: Vec<String>,
    /// Per field, its vocabulary size including the unknown id 0.
    pub vocab: Vec<usize>,
    /// `[id][field]`.
    pub values: Vec<Vec<i64>>,
    /// Multi-hot tags per id (ids into `tag_vocab`, 0 unknown), and the vocabulary size.
    pub tags: Vec<Vec<i64>>,
    pub tag_vocab: usize,
    /// Ids the feature file lacked (read as unknown).
    pub missing: usize,
}

/// The processed log.
#[derive(Debug, Clone, PartialEq)]
pub struct Logs {
    /// Raw ids of users and items; re-indexed id k is `users[k - 1]`.
    pub users: Vec<String>,
    pub items: Vec<String>,
    pub user_features: Features,
    pub item_features: Features,
    /// Records sorted by (user, time): re-indexed user and item, time_ms,
    /// session number within the user, the 7 responses, and the split (0
    /// train, 1 validation, 2 test).
    pub user: Vec<u32>,
    pub item: Vec<u32>,
    pub time: Vec<i64>,
    pub session: Vec<u32>,
    /// The record's `date` as a day number (days since 1970-01-01), so return
    /// gaps between sessions are day differences across month ends.
    pub day: Vec<i32>,
    pub response: Vec<[u8; NB]>,
    pub split: Vec<u8>,
    /// Records of user u (re-indexed) are `starts[u - 1]..starts[u]`.
    pub starts: Vec<usize>,
    /// What the processing removed: records dropped by the k-core filter and
    /// users dropped for a too small training part.
    pub dropped_records: usize,
    pub dropped_users: usize,
}

impl Logs {
    pub fn len(&self) -> usize {
        self.user.len()
    }

    pub fn is_empty(&self) -> bool {
        self.user.is_empty()
    }

    /// Record indices of split `s`.
    pub fn split_records(&self, s: u8) -> Vec<usize> {
        (0..self.len()).filter(|&r| self.split[r] == s).collect()
    }

    /// The records before `r` of the same user, at most `n`, oldest first.
    pub fn history(&self, r: usize, n: usize) -> std::ops::Range<usize> {
        let u = self.user[r] as usize;
        let first = self.starts[u - 1];
        r.saturating_sub(n).max(first)..r
    }

    /// Share of positive records per behaviour over the training split.
    pub fn positive_rates(&self) -> [f64; NB] {
        let mut pos = [0usize; NB];
        let mut n = 0usize;
        for (r, resp) in self.response.iter().enumerate() {
            if self.split[r] == 0 {
                n += 1;
                for (p, &x) in pos.iter_mut().zip(resp) {
                    *p += x as usize;
                }
            }
        }
        pos.map(|p| p as f64 / n.max(1) as f64)
    }
}

fn need(cols: &Columns, names: &[&str]) -> Result<(), LogError> {
    let missing: Vec<&str> = names.iter().copied().filter(|n| !cols.has(n)).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(LogError::MissingColumns { path: cols.describe(), missing: missing.join(", "), available: cols.names().join(", ") })
    }
}

/// Days since 1970-01-01 of a `YYYYMMDD` or `YYYY-MM-DD` date (KuaiRand
/// writes the former), or `None` when it is not a valid date.
pub fn day_number(text: &str) -> Option<i32> {
    let digits: String = text.trim().chars().filter(|c| *c != '-').collect();
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) || (text.contains('-') && text.trim().len() != 10) {
        return None;
    }
    let (y, m, d) = (digits[..4].parse::<i32>().ok()?, digits[4..6].parse::<i32>().ok()?, digits[6..].parse::<i32>().ok()?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let len = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&m) || d < 1 || d > len[(m - 1) as usize] {
        return None;
    }
    // Days from civil (proleptic Gregorian), counted from March so the leap day is last.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// Numbers sort numerically, other ids as text.
fn id_order(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<i64>(), b.parse::<i64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

pub fn load(spec: &LogSpec) -> Result<Logs, LogError> {
    spec.check().map_err(LogError::Data)?;
    let mut wanted = vec!["user_id", "video_id", "date", "time_ms"];
    wanted.extend(BEHAVIOURS);
    let cols = read_columns(&spec.log, &wanted)?;
    need(&cols, &wanted)?;
    let n = cols.rows();
    let text = |c: &str, r: usize| cols.text(c, r).unwrap_or("");
    let number = |c: &str, r: usize| -> Result<f64, LogError> {
        text(c, r).parse::<f64>().ok().filter(|x| x.is_finite()).ok_or_else(|| {
            let (path, line) = cols.place(r);
            LogError::Line { path, line, message: format!("{c} holds '{}', not a number", text(c, r)) }
        })
    };
    let mut time = Vec::with_capacity(n);
    let mut response = Vec::with_capacity(n);
    for r in 0..n {
        time.push(number("time_ms", r)? as i64);
        let mut resp = [0u8; NB];
        for (b, name) in BEHAVIOURS.iter().enumerate() {
            resp[b] = (number(name, r)? > 0.0) as u8;
        }
        response.push(resp);
    }
    let (ucodes, uvalues) = cols.codes("user_id").ok_or_else(|| LogError::Data("user_id was not read".into()))?;
    let (icodes, ivalues) = cols.codes("video_id").ok_or_else(|| LogError::Data("video_id was not read".into()))?;
    let (dcodes, dvalues) = cols.codes("date").ok_or_else(|| LogError::Data("date was not read".into()))?;
    // Each distinct date parsed once.
    let mut day_of = Vec::with_capacity(dvalues.len());
    for v in dvalues.iter() {
        day_of.push(day_number(v));
    }
    for r in 0..n {
        if day_of[dcodes[r] as usize].is_none() {
            let (path, line) = cols.place(r);
            return Err(LogError::Line { path, line, message: format!("date holds '{}', not a date (YYYYMMDD or YYYY-MM-DD)", text("date", r)) });
        }
    }

    // Iterative k-core on users and items.
    let mut keep = vec![true; n];
    loop {
        let mut uc = vec![0usize; uvalues.len()];
        let mut ic = vec![0usize; ivalues.len()];
        for r in (0..n).filter(|&r| keep[r]) {
            uc[ucodes[r] as usize] += 1;
            ic[icodes[r] as usize] += 1;
        }
        let mut changed = false;
        for r in 0..n {
            if keep[r] && (uc[ucodes[r] as usize] < spec.core || ic[icodes[r] as usize] < spec.core) {
                keep[r] = false;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let dropped_records = keep.iter().filter(|k| !**k).count();

    // Per user (sorted by raw id), records by time, then the split.
    let mut by_user: HashMap<u32, Vec<usize>> = HashMap::new();
    for r in (0..n).filter(|&r| keep[r]) {
        by_user.entry(ucodes[r]).or_default().push(r);
    }
    let mut user_codes: Vec<u32> = by_user.keys().copied().collect();
    user_codes.sort_by(|a, b| id_order(&uvalues[*a as usize], &uvalues[*b as usize]));
    let mut order: Vec<(u32, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut dropped_users = 0usize;
    for uc in user_codes {
        let mut rs = by_user.remove(&uc).unwrap_or_default();
        rs.sort_by_key(|&r| (time[r], r));
        let len = rs.len();
        let test = spec.test_last.min(len);
        let val = spec.val_last.min(len - test);
        let train = len - test - val;
        if train == 0 || (train as f64) < spec.min_train_share * len as f64 {
            dropped_users += 1;
            continue;
        }
        let split = (0..len).map(|k| if k < train { 0 } else if k < train + val { 1 } else { 2 }).collect();
        order.push((uc, rs, split));
    }
    if order.is_empty() {
        return Err(LogError::Data(format!(
            "no user is left in {} after the {}-core filter and the split (dropped {dropped_records} records, {dropped_users} users); lower core or val_last/test_last",
            cols.describe(),
            spec.core
        )));
    }
    // Items re-indexed by raw id among the kept records.
    let mut item_codes: Vec<u32> = order.iter().flat_map(|(_, rs, _)| rs.iter().map(|&r| icodes[r])).collect();
    item_codes.sort_by(|a, b| id_order(&ivalues[*a as usize], &ivalues[*b as usize]));
    item_codes.dedup();
    let item_index: HashMap<u32, u32> = item_codes.iter().enumerate().map(|(k, &c)| (c, k as u32 + 1)).collect();

    let total: usize = order.iter().map(|(_, rs, _)| rs.len()).sum();
    let mut logs = Logs {
        users: order.iter().map(|(uc, _, _)| uvalues[*uc as usize].clone()).collect(),
        items: item_codes.iter().map(|&c| ivalues[c as usize].clone()).collect(),
        user_features: Features { names: vec![], vocab: vec![], values: vec![], tags: vec![], tag_vocab: 1, missing: 0 },
        item_features: Features { names: vec![], vocab: vec![], values: vec![], tags: vec![], tag_vocab: 1, missing: 0 },
        user: Vec::with_capacity(total),
        item: Vec::with_capacity(total),
        time: Vec::with_capacity(total),
        session: Vec::with_capacity(total),
        day: Vec::with_capacity(total),
        response: Vec::with_capacity(total),
        split: Vec::with_capacity(total),
        starts: vec![0],
        dropped_records,
        dropped_users,
    };
    for (u, (_, rs, split)) in order.iter().enumerate() {
        let mut session = 0u32;
        let mut last_date = None;
        for (&r, &s) in rs.iter().zip(split) {
            if last_date.is_some_and(|d| d != dcodes[r]) {
                session += 1;
            }
            last_date = Some(dcodes[r]);
            logs.user.push(u as u32 + 1);
            logs.item.push(item_index[&icodes[r]]);
            logs.time.push(time[r]);
            logs.session.push(session);
            logs.day.push(day_of[dcodes[r] as usize].unwrap_or(0));
            logs.response.push(response[r]);
            logs.split.push(s);
        }
        logs.starts.push(logs.user.len());
    }
    logs.user_features = features(spec.user_features.as_ref(), "user_id", &spec.user_fields, None, &logs.users, &spec.missing_features)?;
    logs.item_features = features(spec.video_features.as_ref(), "video_id", &spec.video_fields, spec.video_tags.as_deref(), &logs.items, &spec.missing_features)?;
    Ok(logs)
}

/// Reads a feature file's fields for `ids` (raw, in re-indexed order).
fn features(file: Option<&PathBuf>, key: &str, fields: &[String], tags: Option<&str>, ids: &[String], missing: &str) -> Result<Features, LogError> {
    let Some(file) = file else {
        // No feature file: no features (ids alone).
        return Ok(Features { names: vec![], vocab: vec![], values: vec![vec![]; ids.len() + 1], tags: vec![vec![]; ids.len() + 1], tag_vocab: 1, missing: 0 });
    };
    let mut wanted: Vec<&str> = vec![key];
    wanted.extend(fields.iter().map(String::as_str));
    wanted.extend(tags);
    let cols = read_columns(std::slice::from_ref(file), &wanted)?;
    need(&cols, &wanted)?;
    let (kcodes, kvalues) = cols.codes(key).ok_or_else(|| LogError::Data(format!("{key} was not read")))?;
    let mut row_of: HashMap<&str, usize> = HashMap::new();
    for r in 0..cols.rows() {
        let k = kvalues[kcodes[r] as usize].as_str();
        if row_of.insert(k, r).is_some() {
            let (path, line) = cols.place(r);
            return Err(LogError::Line { path, line, message: format!("{key} '{k}' appears twice; a feature file needs one row per id") });
        }
    }
    let absent: Vec<&String> = ids.iter().filter(|id| !row_of.contains_key(id.as_str())).collect();
    if !absent.is_empty() && missing == "error" {
        return Err(LogError::Data(format!(
            "{} of the log's {} {key} values are absent from {} (first: '{}'); set missing_features = \"unknown\" to give them the unknown features",
            absent.len(),
            ids.len(),
            file.display(),
            absent[0]
        )));
    }
    if !absent.is_empty() {
        tracing::warn!(count = absent.len(), of = ids.len(), file = %file.display(), "ids absent from the feature file get the unknown features");
    }
    // Vocabularies over the values of the ids in the log (0 unknown).
    let mut values = vec![vec![0i64; fields.len()]; ids.len() + 1];
    let mut vocab = Vec::with_capacity(fields.len());
    for (f, name) in fields.iter().enumerate() {
        let (codes, _) = cols.codes(name).ok_or_else(|| LogError::Data(format!("{name} was not read")))?;
        let mut map: HashMap<u32, i64> = HashMap::new();
        for (k, id) in ids.iter().enumerate() {
            if let Some(&r) = row_of.get(id.as_str()) {
                let next = map.len() as i64 + 1;
                values[k + 1][f] = *map.entry(codes[r]).or_insert(next);
            }
        }
        vocab.push(map.len() + 1);
    }
    let mut tag_lists = vec![Vec::new(); ids.len() + 1];
    let mut tag_map: HashMap<String, i64> = HashMap::new();
    if let Some(t) = tags {
        for (k, id) in ids.iter().enumerate() {
            if let Some(&r) = row_of.get(id.as_str()) {
                for tag in cols.text(t, r).unwrap_or("").split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let next = tag_map.len() as i64 + 1;
                    tag_lists[k + 1].push(*tag_map.entry(tag.to_string()).or_insert(next));
                }
            }
        }
    }
    Ok(Features { names: fields.to_vec(), vocab, values, tags: tag_lists, tag_vocab: tag_map.len() + 1, missing: absent.len() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth;

    fn spec(dir: &std::path::Path, log: PathBuf) -> LogSpec {
        LogSpec {
            log: vec![log],
            user_features: Some(dir.join("user_features_pure.csv")),
            video_features: Some(dir.join("video_features_basic_pure.csv")),
            core: 5,
            ..LogSpec::default()
        }
    }

    #[test]
    fn dates_become_day_numbers_across_month_and_year_ends() {
        assert_eq!(day_number("19700101"), Some(0));
        assert_eq!(day_number("2022-04-08"), day_number("20220408"));
        assert_eq!(day_number("20220501").zip(day_number("20220430")).map(|(a, b)| a - b), Some(1));
        assert_eq!(day_number("20240301").zip(day_number("20240228")).map(|(a, b)| a - b), Some(2));
        assert_eq!(day_number("20230101").zip(day_number("20221231")).map(|(a, b)| a - b), Some(1));
        assert_eq!(day_number("20220408"), Some(19090));
        for bad in ["20221301", "20220230", "2022048", "yesterday", "2022-0408", ""] {
            assert_eq!(day_number(bad), None, "{bad}");
        }
    }

    #[test]
    fn synthetic_logs_are_filtered_split_and_sessioned() {
        let d = tempfile::tempdir().unwrap();
        let (log, _) = synth::write(d.path(), synth::Shape { users: 60, items: 40, days: 12, ..Default::default() }).unwrap();
        let logs = load(&spec(d.path(), log)).unwrap();
        eprintln!("{} records, {} users, {} items, dropped {} records {} users, rates {:?}", logs.len(), logs.users.len(), logs.items.len(), logs.dropped_records, logs.dropped_users, logs.positive_rates());
        // Every kept user and item has at least `core` records... of the filtered log.
        let mut per_item = vec![0usize; logs.items.len() + 1];
        for &i in &logs.item {
            per_item[i as usize] += 1;
        }
        assert!(per_item[1..].iter().all(|&c| c >= 1));
        for u in 1..=logs.users.len() {
            let rs = logs.starts[u - 1]..logs.starts[u];
            let splits: Vec<u8> = rs.clone().map(|r| logs.split[r]).collect();
            // The last 5 are test, the 5 before validation, in time order.
            assert_eq!(&splits[splits.len() - 10..], &[1, 1, 1, 1, 1, 2, 2, 2, 2, 2]);
            assert!(rs.clone().zip(rs.clone().skip(1)).all(|(a, b)| logs.time[a] <= logs.time[b] && logs.session[a] <= logs.session[b]));
            // A new session exactly when the day moves on.
            assert!(rs.clone().zip(rs.clone().skip(1)).all(|(a, b)| (logs.day[b] > logs.day[a]) == (logs.session[b] == logs.session[a] + 1) && logs.day[b] >= logs.day[a]));
            // History: the user's previous records only.
            let last = rs.end - 1;
            assert_eq!(logs.history(last, 3), last - 3..last);
            assert_eq!(logs.history(rs.start, 3), rs.start..rs.start);
        }
        assert!(logs.session.iter().any(|&s| s > 2), "users come back on other days");
        assert_eq!(logs.user_features.names.len(), 13);
        assert_eq!(logs.user_features.vocab[0], 4, "three activity degrees + unknown");
        assert_eq!(logs.item_features.missing, 0);
        assert!(logs.item_features.tags[1].len() == 2);
    }

    #[test]
    fn bad_logs_are_named() {
        let d = tempfile::tempdir().unwrap();
        let (log, _) = synth::write(d.path(), synth::Shape { users: 20, items: 15, days: 6, ..Default::default() }).unwrap();
        // A missing behaviour column.
        let text = std::fs::read_to_string(&log).unwrap().replace("is_hate", "hate");
        let broken = d.path().join("broken.csv");
        std::fs::write(&broken, text).unwrap();
        let e = load(&spec(d.path(), broken.clone())).unwrap_err().to_string();
        assert!(e.contains("broken.csv lacks the column is_hate; its columns are: user_id, video_id"), "{e}");
        // A date that is not one, with its line.
        let text = std::fs::read_to_string(&log).unwrap();
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        lines[3] = lines[3].replacen(",2022", ",2022-13-", 1);
        std::fs::write(&broken, lines.join("\n") + "\n").unwrap();
        let e = load(&spec(d.path(), broken)).unwrap_err().to_string();
        assert!(e.contains("broken.csv:4: date holds '2022-13-04") && e.contains("not a date (YYYYMMDD or YYYY-MM-DD)"), "{e}");
        // Videos absent from the feature file: an error with the count, or unknown features.
        let vf = d.path().join("video_features_basic_pure.csv");
        let text = std::fs::read_to_string(&vf).unwrap();
        let kept: String = text.lines().take(6).map(|l| format!("{l}\n")).collect();
        std::fs::write(&vf, kept).unwrap();
        let mut s = spec(d.path(), log.clone());
        s.core = 1;
        s.missing_features = "error".into();
        let e = load(&s).unwrap_err().to_string();
        assert!(e.contains("of the log's 15 video_id values are absent from") && e.contains("missing_features = \"unknown\""), "{e}");
        s.missing_features = "unknown".into();
        let logs = load(&s).unwrap();
        assert_eq!(logs.item_features.missing, 10);
        // A core nobody meets.
        s.core = 100_000;
        assert!(load(&s).unwrap_err().to_string().contains("no user is left"));
    }
}
