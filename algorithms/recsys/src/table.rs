//! Users' own interaction logs as CTR training data: CSV, TSV or JSONL files
//! described by a [`TableSpec`] — categorical ("sparse") fields with a
//! vocabulary built on the training split (unknown values → the reserved id 0),
//! multi-hot fields, dense fields with scaling fitted on the training split,
//! labels by threshold rules, a domain column (or a value → domain map), feature
//! files joined on a key column, and a deterministic train / validation / test
//! split by row order, by time, or by user. [`DataSpec`] is what a job's
//! `[algorithm.data]` table holds: a spec, or a preset ([`TableSpec::movielens_1m`],
//! [`TableSpec::kuairand`]) with keys overriding it.
//!
//! Only the columns a spec names are kept, each interned (a `u32` code per row
//! and its distinct values once), so a log of millions of rows costs a few bytes
//! per cell and every distinct value is parsed once.

use kiln_worker::rng::fnv1a;
use serde::{Deserialize, Deserializer};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Line { path: String, line: usize, message: String },
    #[error("{what} '{name}' is not a column of {path}; its columns are: {available}")]
    UnknownColumn { what: String, name: String, path: String, available: String },
    #[error("{0}")]
    Spec(String),
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MultiHot {
    pub column: String,
    #[serde(default = "bar")]
    pub separator: String,
}

fn bar() -> String {
    "|".into()
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Dense {
    pub column: String,
    /// "standard" (z-score), "log" (z-score of ln(1 + max(x, 0)), for counts
    /// and durations), "minmax" or "none"; fitted on the training split.
    #[serde(default = "standard")]
    pub scale: String,
    /// The raw value used where the cell is empty or NaN (without it such a
    /// cell is an error).
    pub fill: Option<f64>,
}

fn standard() -> String {
    "standard".into()
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Label {
    /// The task's name in metric keys (`auc_<name>`): letters, digits, `_`.
    pub name: String,
    pub column: String,
    /// A comparison with a number: "> 3", ">= 1", "< 2", "<= 0", "== 1", "!= 0".
    pub rule: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DomainSpec {
    pub column: String,
    /// Column value → domain index; without it the column holds the index.
    pub map: Option<BTreeMap<String, usize>>,
    /// With a map: the domain of values it does not list (without it they are
    /// an error).
    pub default: Option<usize>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Split {
    /// "row" (file order), "time" (by `column`, ascending) or "user" (whole
    /// users, by a hash of `column`'s value, into the fractions).
    #[serde(default = "row")]
    pub by: String,
    pub column: Option<String>,
    #[serde(default = "fractions")]
    pub fractions: [f64; 3],
}

fn row() -> String {
    "row".into()
}
fn fractions() -> [f64; 3] {
    [0.8, 0.1, 0.1]
}

impl Default for Split {
    fn default() -> Self {
        Split { by: row(), column: None, fractions: fractions() }
    }
}

/// A feature file joined to the log rows on a key column present in both.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Join {
    pub file: PathBuf,
    pub on: String,
    /// Log rows whose key the file lacks: "error" (default) or "empty" (its
    /// columns read as empty values: the unknown id for sparse fields, `fill`
    /// for dense ones).
    #[serde(default = "error_policy")]
    pub missing: String,
}

fn error_policy() -> String {
    "error".into()
}

/// One path or several (read in order, as one log; their headers must name the
/// same columns).
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(PathBuf),
        Many(Vec<PathBuf>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(p) => vec![p],
        OneOrMany::Many(v) => v,
    })
}

fn one_or_many_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<PathBuf>>, D::Error> {
    one_or_many(d).map(Some)
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    #[serde(deserialize_with = "one_or_many")]
    pub file: Vec<PathBuf>,
    #[serde(default)]
    pub join: Vec<Join>,
    #[serde(default)]
    pub sparse: Vec<String>,
    #[serde(default)]
    pub multi_hot: Vec<MultiHot>,
    #[serde(default)]
    pub dense: Vec<Dense>,
    pub labels: Vec<Label>,
    pub domain: Option<DomainSpec>,
    #[serde(default)]
    pub split: Split,
}

/// A job's `[algorithm.data]`: a preset ("movielens-1m", "kuairand") with the
/// keys given replacing the preset's, or a whole spec (`file` and `labels` at
/// least).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    pub preset: Option<String>,
    #[serde(default, deserialize_with = "one_or_many_opt")]
    pub file: Option<Vec<PathBuf>>,
    pub join: Option<Vec<Join>>,
    pub sparse: Option<Vec<String>>,
    pub multi_hot: Option<Vec<MultiHot>>,
    pub dense: Option<Vec<Dense>>,
    pub labels: Option<Vec<Label>>,
    pub domain: Option<DomainSpec>,
    pub split: Option<Split>,
}

impl DataSpec {
    pub const PRESETS: [&'static str; 2] = ["movielens-1m", "kuairand"];

    /// The spec this describes; errors name the missing or wrong key.
    pub fn resolve(&self) -> Result<TableSpec, TableError> {
        let file = self.file.clone().filter(|f| !f.is_empty()).ok_or_else(|| TableError::Spec("data.file is missing: the log file (or a list of them) to read".into()))?;
        let mut spec = match self.preset.as_deref() {
            None => {
                let labels = self.labels.clone().ok_or_else(|| TableError::Spec("data.labels is missing: give labels = [{ name, column, rule }], or a preset".into()))?;
                TableSpec { file, join: vec![], sparse: vec![], multi_hot: vec![], dense: vec![], labels, domain: None, split: Split::default() }
            }
            Some("movielens-1m") => TableSpec::movielens_1m(file),
            Some("kuairand") => TableSpec::kuairand(file),
            Some(other) => return Err(TableError::Spec(format!("data.preset '{other}' is not one of {}", Self::PRESETS.join(", ")))),
        };
        if let Some(v) = &self.join {
            spec.join = v.clone();
        }
        if let Some(v) = &self.sparse {
            spec.sparse = v.clone();
        }
        if let Some(v) = &self.multi_hot {
            spec.multi_hot = v.clone();
        }
        if let Some(v) = &self.dense {
            spec.dense = v.clone();
        }
        if let Some(v) = &self.labels {
            spec.labels = v.clone();
        }
        if let Some(v) = &self.domain {
            spec.domain = Some(v.clone());
        }
        if let Some(v) = &self.split {
            spec.split = v.clone();
        }
        spec.check()?;
        Ok(spec)
    }
}

impl TableSpec {
    /// MovieLens-1M joined into one file (user_id, movie_id, rating, timestamp,
    /// title, genres, gender, age, occupation, zip), as M3oE uses it: domains
    /// by age ({1, 18} → 0, {25} → 1, {35, 45, 50, 56} → 2), click = rating > 3,
    /// like = rating > 4, genres multi-hot, age min-max scaled, split 80/10/10
    /// in file order.
    pub fn movielens_1m(file: Vec<PathBuf>) -> TableSpec {
        let map = [("1", 0), ("18", 0), ("25", 1), ("35", 2), ("45", 2), ("50", 2), ("56", 2)].into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        TableSpec {
            file,
            join: vec![],
            sparse: ["user_id", "movie_id", "gender", "occupation", "zip"].map(String::from).to_vec(),
            multi_hot: vec![MultiHot { column: "genres".into(), separator: "|".into() }],
            dense: vec![Dense { column: "age".into(), scale: "minmax".into(), fill: None }],
            labels: vec![
                Label { name: "click".into(), column: "rating".into(), rule: "> 3".into() },
                Label { name: "like".into(), column: "rating".into(), rule: "> 4".into() },
            ],
            domain: Some(DomainSpec { column: "age".into(), map: Some(map), default: None }),
            split: Split::default(),
        }
    }

    /// KuaiRand-Pure's standard logs (user_id, video_id, date, hourmin,
    /// time_ms, is_click, is_like, …, tab) joined with `user_features_pure.csv`
    /// (on user_id) and `video_features_basic_pure.csv` (on video_id), both
    /// looked for beside the first log file. Our choices, as the M3oE paper does
    /// not give its own: tasks click (is_click), long_view and like (is_like);
    /// domains by `tab` (tabs 0, 1 and 2 their own, every other tab domain 3);
    /// the user features KuaiSim uses and the video type, upload type, music
    /// type, tags (multi-hot) and log-scaled duration; split by time_ms 80/10/10.
    pub fn kuairand(file: Vec<PathBuf>) -> TableSpec {
        let dir = file.first().and_then(|f| f.parent()).map(Path::to_path_buf).unwrap_or_default();
        let mut sparse: Vec<String> = ["user_id", "video_id", "user_active_degree", "is_live_streamer", "is_video_author", "follow_user_num_range", "fans_user_num_range", "friend_user_num_range", "register_days_range"]
            .map(String::from)
            .to_vec();
        sparse.extend([0, 1, 6, 9, 10, 11].map(|k| format!("onehot_feat{k}")));
        sparse.extend(["video_type", "upload_type", "music_type"].map(String::from));
        let label = |name: &str, column: &str| Label { name: name.into(), column: column.into(), rule: "== 1".into() };
        TableSpec {
            file,
            join: vec![
                Join { file: dir.join("user_features_pure.csv"), on: "user_id".into(), missing: error_policy() },
                Join { file: dir.join("video_features_basic_pure.csv"), on: "video_id".into(), missing: error_policy() },
            ],
            sparse,
            multi_hot: vec![MultiHot { column: "tag".into(), separator: ",".into() }],
            dense: vec![Dense { column: "video_duration".into(), scale: "log".into(), fill: Some(0.0) }],
            labels: vec![label("click", "is_click"), label("long_view", "long_view"), label("like", "is_like")],
            domain: Some(DomainSpec { column: "tab".into(), map: Some([("0", 0), ("1", 1), ("2", 2)].into_iter().map(|(k, v)| (k.to_string(), v)).collect()), default: Some(3) }),
            split: Split { by: "time".into(), column: Some("time_ms".into()), fractions: fractions() },
        }
    }

    /// Checks what needs no file: rules, names, scales, split, join policies.
    pub fn check(&self) -> Result<(), TableError> {
        let spec = |m: String| Err(TableError::Spec(m));
        if self.file.is_empty() {
            return spec("data.file names no file".into());
        }
        if self.labels.is_empty() {
            return spec("at least one label is needed (labels = [{ name, column, rule }])".into());
        }
        let mut names = BTreeSet::new();
        for l in &self.labels {
            Rule::parse(&l.rule).map_err(|e| TableError::Spec(format!("label '{}': {e}", l.name)))?;
            if l.name.is_empty() || !l.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return spec(format!("label name '{}' must be letters, digits or _ (it names metrics: auc_<name>)", l.name));
            }
            if !names.insert(l.name.as_str()) {
                return spec(format!("two labels are named '{}'", l.name));
            }
        }
        for d in &self.dense {
            if !["standard", "log", "minmax", "none"].contains(&d.scale.as_str()) {
                return spec(format!("dense field {}: scale '{}' is not one of standard, log, minmax, none", d.column, d.scale));
            }
            if d.fill.is_some_and(|f| !f.is_finite()) {
                return spec(format!("dense field {}: fill must be a finite number", d.column));
            }
        }
        for m in &self.multi_hot {
            if m.separator.is_empty() {
                return spec(format!("multi-hot field {}: the separator is empty", m.column));
            }
        }
        for j in &self.join {
            if !["error", "empty"].contains(&j.missing.as_str()) {
                return spec(format!("join {}: missing = '{}' is not one of error, empty", j.file.display(), j.missing));
            }
        }
        if let Some(DomainSpec { map: None, default: Some(_), column }) = &self.domain {
            return spec(format!("domain column {column}: default needs a map (without one the column holds the domain index)"));
        }
        let f = self.split.fractions;
        if f.iter().any(|x| !(0.0..=1.0).contains(x)) || (f.iter().sum::<f64>() - 1.0).abs() > 1e-9 || f[0] == 0.0 {
            return spec(format!("split.fractions {f:?} must be three shares in [0, 1] summing to 1, the first above 0"));
        }
        match self.split.by.as_str() {
            "row" => {}
            "time" | "user" if self.split.column.is_none() => return spec(format!("split.by = \"{}\" needs split.column", self.split.by)),
            "time" | "user" => {}
            other => return spec(format!("split.by '{other}' is not one of row, time, user")),
        }
        Ok(())
    }

    /// Every column the spec reads.
    fn columns(&self) -> BTreeSet<String> {
        let mut c: BTreeSet<String> = self.sparse.iter().cloned().collect();
        c.extend(self.multi_hot.iter().map(|m| m.column.clone()));
        c.extend(self.dense.iter().map(|d| d.column.clone()));
        c.extend(self.labels.iter().map(|l| l.column.clone()));
        c.extend(self.domain.iter().map(|d| d.column.clone()));
        c.extend(self.split.column.iter().cloned());
        c.extend(self.join.iter().map(|j| j.on.clone()));
        c
    }
}

/// A parsed threshold rule.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Rule {
    Gt(f64),
    Ge(f64),
    Lt(f64),
    Le(f64),
    Eq(f64),
    Ne(f64),
}

impl Rule {
    fn parse(s: &str) -> Result<Rule, String> {
        let s = s.trim();
        let (op, rest) = ["<=", ">=", "==", "!=", "<", ">"].iter().find_map(|op| s.strip_prefix(op).map(|r| (*op, r))).ok_or_else(|| format!("rule '{s}' must start with one of > >= < <= == !="))?;
        let v: f64 = rest.trim().parse().map_err(|_| format!("rule '{s}': '{}' is not a number", rest.trim()))?;
        Ok(match op {
            ">" => Rule::Gt(v),
            ">=" => Rule::Ge(v),
            "<" => Rule::Lt(v),
            "<=" => Rule::Le(v),
            "==" => Rule::Eq(v),
            _ => Rule::Ne(v),
        })
    }

    fn holds(self, x: f64) -> bool {
        match self {
            Rule::Gt(v) => x > v,
            Rule::Ge(v) => x >= v,
            Rule::Lt(v) => x < v,
            Rule::Le(v) => x <= v,
            Rule::Eq(v) => x == v,
            Rule::Ne(v) => x != v,
        }
    }
}

/// The loaded table, split. Ids are per field: 0 is "unknown" (a value not in
/// the training split), known values 1.. in order of first appearance in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub sparse_names: Vec<String>,
    /// Per sparse field, its vocabulary size including the reserved 0.
    pub vocab: Vec<usize>,
    pub multi_hot_names: Vec<String>,
    pub multi_hot_vocab: Vec<usize>,
    pub dense_names: Vec<String>,
    pub label_names: Vec<String>,
    pub domains: usize,
    pub train: Rows,
    pub val: Rows,
    pub test: Rows,
}

/// One multi-hot field of a split, compressed: row r's ids are
/// `ids[offsets[r]..offsets[r + 1]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Bags {
    pub offsets: Vec<usize>,
    pub ids: Vec<i64>,
}

impl Default for Bags {
    fn default() -> Self {
        Bags { offsets: vec![0], ids: Vec::new() }
    }
}

impl Bags {
    pub fn row(&self, r: usize) -> &[i64] {
        &self.ids[self.offsets[r]..self.offsets[r + 1]]
    }
}

/// Rows of one split, column-major per kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rows {
    /// `[field][row]`.
    pub sparse: Vec<Vec<i64>>,
    pub multi_hot: Vec<Bags>,
    /// `[field][row]`, scaled.
    pub dense: Vec<Vec<f32>>,
    /// `[label][row]` in {0, 1}.
    pub labels: Vec<Vec<f32>>,
    pub domain: Vec<usize>,
}

impl Rows {
    pub fn len(&self) -> usize {
        self.domain.len()
    }

    pub fn is_empty(&self) -> bool {
        self.domain.is_empty()
    }
}

/// One kept column: a code per row into its distinct values.
#[derive(Debug, Default)]
struct Interned {
    codes: Vec<u32>,
    values: Vec<String>,
    index: HashMap<String, u32>,
}

impl Interned {
    fn push(&mut self, v: &str) {
        let code = match self.index.get(v) {
            Some(&c) => c,
            None => {
                let c = self.values.len() as u32;
                self.values.push(v.to_string());
                self.index.insert(v.to_string(), c);
                c
            }
        };
        self.codes.push(code);
    }
}

/// The kept columns of one or more files read as one, with each row's origin.
struct FileData {
    /// Every column of the header (for error messages).
    columns: Vec<String>,
    kept: HashMap<String, Interned>,
    /// Per row, its line in its file; `starts[k]` = (first row, path) of file k.
    lines: Vec<u32>,
    starts: Vec<(usize, String)>,
}

impl FileData {
    fn rows(&self) -> usize {
        self.lines.len()
    }

    /// (path, line) of row `r`.
    fn place(&self, r: usize) -> (String, usize) {
        let k = self.starts.partition_point(|(s, _)| *s <= r).saturating_sub(1);
        (self.starts.get(k).map(|s| s.1.clone()).unwrap_or_default(), self.lines[r] as usize)
    }

    fn describe(&self) -> String {
        self.starts.iter().map(|s| s.1.as_str()).collect::<Vec<_>>().join(" + ")
    }
}

/// Calls `f(line, fields)` for each record of delimited text: quoted fields may
/// hold the separator, doubled quotes and newlines; blank lines are skipped.
fn for_each_record(text: &str, sep: u8, path: &str, mut f: impl FnMut(usize, &[String]) -> Result<(), TableError>) -> Result<(), TableError> {
    let b = text.as_bytes();
    let (mut i, mut line) = (0usize, 1usize);
    let mut fields: Vec<String> = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    while i < b.len() {
        let start_line = line;
        fields.clear();
        loop {
            cur.clear();
            if b[i..].first() == Some(&b'"') {
                i += 1;
                loop {
                    match b.get(i) {
                        None => return Err(TableError::Line { path: path.into(), line: start_line, message: "a quoted field is never closed".into() }),
                        Some(b'"') if b.get(i + 1) == Some(&b'"') => {
                            cur.push(b'"');
                            i += 2;
                        }
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(&c) => {
                            line += (c == b'\n') as usize;
                            cur.push(c);
                            i += 1;
                        }
                    }
                }
            }
            while let Some(&c) = b.get(i) {
                if c == sep || c == b'\n' {
                    break;
                }
                cur.push(c);
                i += 1;
            }
            fields.push(String::from_utf8_lossy(&cur).trim().to_string());
            match b.get(i) {
                Some(&c) if c == sep => i += 1,
                Some(_) => {
                    i += 1;
                    line += 1;
                    break;
                }
                None => break,
            }
        }
        if fields.len() == 1 && fields[0].is_empty() {
            continue;
        }
        f(start_line, &fields)?;
    }
    Ok(())
}

/// Reads `paths` as one table, keeping the columns in `wanted`.
fn read_files(paths: &[PathBuf], wanted: &BTreeSet<String>) -> Result<FileData, TableError> {
    let mut data = FileData { columns: Vec::new(), kept: HashMap::new(), lines: Vec::new(), starts: Vec::new() };
    for path in paths {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TableError::Io { path: p.clone(), source })?;
        data.starts.push((data.lines.len(), p.clone()));
        let jsonl = path.extension().is_some_and(|e| e == "jsonl" || e == "json");
        if jsonl {
            for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let v: serde_json::Value = serde_json::from_str(line).map_err(|e| TableError::Line { path: p.clone(), line: i + 1, message: format!("not a JSON object: {e}") })?;
                let obj = v.as_object().ok_or_else(|| TableError::Line { path: p.clone(), line: i + 1, message: "not a JSON object".into() })?;
                for k in obj.keys() {
                    if !data.columns.contains(k) {
                        data.columns.push(k.clone());
                    }
                }
                for w in wanted {
                    let text = match obj.get(w) {
                        None | Some(serde_json::Value::Null) => String::new(),
                        Some(serde_json::Value::String(s)) => s.clone(),
                        Some(other) => other.to_string(),
                    };
                    data.kept.entry(w.clone()).or_default().push(&text);
                }
                data.lines.push((i + 1) as u32);
            }
            // A wanted key no row has is not a column.
            data.kept.retain(|k, _| data.columns.contains(k));
            continue;
        }
        let header_end = text.find('\n').unwrap_or(text.len());
        let sep = if text[..header_end].contains('\t') { b'\t' } else { b',' };
        let mut header: Option<Vec<(usize, String)>> = None;
        let mut width = 0;
        for_each_record(&text, sep, &p, |line, fields| {
            let Some(keep) = &header else {
                if data.starts.len() > 1 {
                    let mut a: Vec<&String> = data.columns.iter().collect();
                    let mut b: Vec<&String> = fields.iter().collect();
                    a.sort();
                    b.sort();
                    if a != b {
                        return Err(TableError::Line { path: p.clone(), line, message: format!("its header ({}) does not name the columns of {} ({})", fields.join(", "), data.starts[0].1, data.columns.join(", ")) });
                    }
                } else {
                    data.columns = fields.to_vec();
                }
                width = fields.len();
                header = Some(fields.iter().enumerate().filter(|(_, c)| wanted.contains(*c)).map(|(i, c)| (i, c.clone())).collect());
                return Ok(());
            };
            if fields.len() != width {
                return Err(TableError::Line { path: p.clone(), line, message: format!("{} fields, the header has {width}", fields.len()) });
            }
            for (i, c) in keep {
                data.kept.entry(c.clone()).or_default().push(&fields[*i]);
            }
            data.lines.push(line as u32);
            Ok(())
        })?;
        if header.is_none() {
            return Err(TableError::Line { path: p, line: 1, message: "empty file: expected a header line".into() });
        }
    }
    Ok(data)
}

/// Columns read from CSV/TSV/JSONL files by name, for readers other than a
/// [`TableSpec`] (the KuaiSim log reader): the same quote-aware parsing and
/// interned storage, each row's file and line kept for error messages.
pub struct Columns {
    data: FileData,
}

impl Columns {
    pub fn rows(&self) -> usize {
        self.data.rows()
    }

    /// Every column of the header(s).
    pub fn names(&self) -> &[String] {
        &self.data.columns
    }

    /// Whether `name` was read (asked for and present).
    pub fn has(&self, name: &str) -> bool {
        self.data.kept.contains_key(name)
    }

    /// Column `name`: each row's code into its distinct values.
    pub fn codes(&self, name: &str) -> Option<(&[u32], &[String])> {
        self.data.kept.get(name).map(|c| (c.codes.as_slice(), c.values.as_slice()))
    }

    pub fn text(&self, name: &str, row: usize) -> Option<&str> {
        self.codes(name).map(|(codes, values)| values[codes[row] as usize].as_str())
    }

    /// (path, line) of row `row`.
    pub fn place(&self, row: usize) -> (String, usize) {
        self.data.place(row)
    }

    /// The files, joined with " + ".
    pub fn describe(&self) -> String {
        self.data.describe()
    }
}

/// Reads `paths` as one table (their headers must name the same columns),
/// keeping the columns in `wanted` that exist.
pub fn read_columns(paths: &[PathBuf], wanted: &[&str]) -> Result<Columns, TableError> {
    let wanted: BTreeSet<String> = wanted.iter().map(|w| w.to_string()).collect();
    read_files(paths, &wanted).map(|data| Columns { data })
}

/// Where a column's values come from: the log itself or a joined file.
struct Column<'a> {
    data: &'a Interned,
    file: &'a FileData,
    /// For a joined column: each log row's row in the joined file (`u32::MAX`: absent).
    rows: Option<&'a [u32]>,
}

impl Column<'_> {
    /// The value code of log row `r` (`None`: the joined file lacks its key).
    fn code(&self, r: usize) -> Option<u32> {
        match self.rows {
            None => Some(self.data.codes[r]),
            Some(m) => (m[r] != u32::MAX).then(|| self.data.codes[m[r] as usize]),
        }
    }

    fn text(&self, r: usize) -> &str {
        self.code(r).map_or("", |c| self.data.values[c as usize].as_str())
    }

    /// (path, line) where log row `r`'s value was read.
    fn place(&self, log: &FileData, r: usize) -> (String, usize) {
        match self.rows {
            Some(m) if m[r] != u32::MAX => self.file.place(m[r] as usize),
            _ => log.place(r),
        }
    }
}

fn is_missing(s: &str) -> bool {
    s.is_empty() || s.eq_ignore_ascii_case("nan") || s.eq_ignore_ascii_case("na") || s.eq_ignore_ascii_case("null")
}

pub fn load(spec: &TableSpec) -> Result<Table, TableError> {
    spec.check()?;
    let wanted = spec.columns();
    let log = read_files(&spec.file, &wanted)?;
    let n = log.rows();
    let mut joined: Vec<(FileData, Vec<u32>)> = Vec::with_capacity(spec.join.len());
    for j in &spec.join {
        let jd = read_files(std::slice::from_ref(&j.file), &wanted)?;
        let (Some(lk), Some(jk)) = (log.kept.get(&j.on), jd.kept.get(&j.on)) else {
            let (what, file) = if log.kept.contains_key(&j.on) { (&jd, &j.file) } else { (&log, &spec.file[0]) };
            return Err(TableError::UnknownColumn { what: "join key".into(), name: j.on.clone(), path: file.display().to_string(), available: what.columns.join(", ") });
        };
        // Key value (as text) → the joined file's row.
        let mut by_key: HashMap<&str, u32> = HashMap::with_capacity(jd.rows());
        for r in 0..jd.rows() {
            let key = jk.values[jk.codes[r] as usize].as_str();
            if let Some(first) = by_key.insert(key, r as u32) {
                let (path, line) = jd.place(r);
                return Err(TableError::Line { path, line, message: format!("{} '{key}' appears twice (first at line {}); a joined file needs one row per key", j.on, jd.place(first as usize).1) });
            }
        }
        let per_code: Vec<u32> = lk.values.iter().map(|v| by_key.get(v.as_str()).copied().unwrap_or(u32::MAX)).collect();
        let rows: Vec<u32> = lk.codes.iter().map(|&c| per_code[c as usize]).collect();
        let absent = rows.iter().filter(|&&r| r == u32::MAX).count();
        if absent > 0 && j.missing == "error" {
            let first = rows.iter().position(|&r| r == u32::MAX).unwrap_or(0);
            let (path, line) = log.place(first);
            return Err(TableError::Spec(format!(
                "{absent} of {n} rows of {} have a {} absent from {} (first: '{}' at {path}:{line}); set missing = \"empty\" on that join to read their columns as empty values",
                log.describe(),
                j.on,
                j.file.display(),
                lk.values[lk.codes[first] as usize]
            )));
        }
        joined.push((jd, rows));
    }
    let column = |what: &str, name: &str| -> Result<Column, TableError> {
        if let Some(data) = log.kept.get(name) {
            return Ok(Column { data, file: &log, rows: None });
        }
        for (jd, rows) in &joined {
            if let Some(data) = jd.kept.get(name) {
                return Ok(Column { data, file: jd, rows: Some(rows) });
            }
        }
        let mut available = log.columns.clone();
        for (jd, _) in &joined {
            available.extend(jd.columns.iter().filter(|c| !available.contains(c)).cloned().collect::<Vec<_>>());
        }
        let path = std::iter::once(log.describe()).chain(joined.iter().map(|(jd, _)| jd.describe())).collect::<Vec<_>>().join(" + ");
        Err(TableError::UnknownColumn { what: what.into(), name: name.into(), path, available: available.join(", ") })
    };
    let sparse: Vec<Column> = spec.sparse.iter().map(|c| column("sparse field", c)).collect::<Result<_, _>>()?;
    let multi: Vec<Column> = spec.multi_hot.iter().map(|m| column("multi-hot field", &m.column)).collect::<Result<_, _>>()?;
    let dense_cols: Vec<Column> = spec.dense.iter().map(|d| column("dense field", &d.column)).collect::<Result<_, _>>()?;
    let label_cols: Vec<Column> = spec.labels.iter().map(|l| column(&format!("label '{}'", l.name), &l.column)).collect::<Result<_, _>>()?;
    let domain_col = spec.domain.as_ref().map(|d| column("domain", &d.column)).transpose()?;
    let split_col = spec.split.column.as_ref().filter(|_| spec.split.by != "row").map(|c| column("split column", c)).transpose()?;

    // Numbers of a column, each distinct value parsed once; `fill` for missing
    // cells where given; errors name the file and line.
    let numbers = |col: &Column, what: &str, fill: Option<f64>| -> Result<Vec<f64>, TableError> {
        let parsed: Vec<Option<f64>> = col.data.values.iter().map(|v| if is_missing(v) { fill } else { v.parse::<f64>().ok().filter(|x| x.is_finite()) }).collect();
        (0..n)
            .map(|r| {
                match col.code(r) {
                    Some(c) => parsed[c as usize],
                    None => fill,
                }
                .ok_or_else(|| {
                    let (path, line) = col.place(&log, r);
                    let raw = col.text(r);
                    let hint = if is_missing(raw) { " (missing; give the field a fill value to use for missing cells)" } else { "" };
                    TableError::Line { path, line, message: format!("{what} holds '{raw}', not a number{hint}") }
                })
            })
            .collect()
    };

    let mut domain = vec![0usize; n];
    if let (Some(ds), Some(col)) = (&spec.domain, &domain_col) {
        let per_code: Vec<Option<usize>> = col.data.values.iter().map(|v| match &ds.map {
            Some(m) => m.get(v).copied().or(ds.default),
            None => v.parse::<usize>().ok(),
        }).collect();
        for (r, d) in domain.iter_mut().enumerate() {
            *d = col.code(r).and_then(|c| per_code[c as usize]).ok_or_else(|| {
                let (path, line) = col.place(&log, r);
                let raw = col.text(r);
                let message = match &ds.map {
                    Some(m) => format!("domain column {} holds '{raw}', which the domain map does not list ({}); add it or set domain.default", ds.column, m.keys().cloned().collect::<Vec<_>>().join(", ")),
                    None => format!("domain column {} holds '{raw}', not a domain index", ds.column),
                };
                TableError::Line { path, line, message }
            })?;
        }
    }
    let domains = domain.iter().copied().max().map_or(1, |m| m + 1);
    let mut seen = vec![false; domains];
    for &d in &domain {
        seen[d] = true;
    }
    if let Some(empty) = seen.iter().position(|s| !s) {
        return Err(TableError::Spec(format!("domain {empty} has no rows in {} (domains are 0..{domains}); fix the domain map", log.describe())));
    }

    // The split: which part each row goes to.
    let f = spec.split.fractions;
    let part: Vec<u8> = match (spec.split.by.as_str(), &split_col) {
        ("user", Some(col)) => {
            let per_code: Vec<u8> = col
                .data
                .values
                .iter()
                .map(|v| {
                    let u = (fnv1a(v.as_bytes()) >> 11) as f64 / (1u64 << 53) as f64;
                    if u < f[0] { 0 } else if u < f[0] + f[1] { 1 } else { 2 }
                })
                .collect();
            let empty = if f[0] > 0.0 { 0 } else { 2 };
            (0..n).map(|r| col.code(r).map_or(empty, |c| per_code[c as usize])).collect()
        }
        (by, col) => {
            let mut order: Vec<usize> = (0..n).collect();
            if let ("time", Some(col)) = (by, col) {
                let t = numbers(col, &format!("time column {}", spec.split.column.as_deref().unwrap_or("")), None)?;
                order.sort_by(|&a, &b| t[a].total_cmp(&t[b]).then(a.cmp(&b)));
            }
            let cut1 = ((n as f64) * f[0]).round() as usize;
            let cut2 = ((n as f64) * (f[0] + f[1])).round() as usize;
            let mut part = vec![0u8; n];
            for (k, &i) in order.iter().enumerate() {
                part[i] = if k < cut1 { 0 } else if k < cut2 { 1 } else { 2 };
            }
            part
        }
    };

    // Vocabularies on the training rows only, over value codes: id 0 unknown,
    // 1.. in order of first appearance in training.
    let vocab_of = |col: &Column| -> (Vec<i64>, usize) {
        let mut ids = vec![0i64; col.data.values.len()];
        let mut next = 1;
        for r in (0..n).filter(|&r| part[r] == 0) {
            if let Some(c) = col.code(r) {
                if ids[c as usize] == 0 {
                    ids[c as usize] = next;
                    next += 1;
                }
            }
        }
        (ids, next as usize)
    };
    let sparse_ids: Vec<(Vec<i64>, usize)> = sparse.iter().map(vocab_of).collect();
    // Multi-hot: each distinct cell split once into its items.
    let mut mh_ids: Vec<(Vec<Vec<i64>>, usize)> = Vec::with_capacity(multi.len());
    for (m, col) in spec.multi_hot.iter().zip(&multi) {
        let items: Vec<Vec<&str>> = col.data.values.iter().map(|v| v.split(m.separator.as_str()).map(str::trim).filter(|s| !s.is_empty()).collect()).collect();
        let mut vocab: HashMap<&str, i64> = HashMap::new();
        for r in (0..n).filter(|&r| part[r] == 0) {
            if let Some(c) = col.code(r) {
                for it in &items[c as usize] {
                    let next = vocab.len() as i64 + 1;
                    vocab.entry(it).or_insert(next);
                }
            }
        }
        let per_code = items.iter().map(|its| its.iter().map(|it| vocab.get(it).copied().unwrap_or(0)).collect()).collect();
        mh_ids.push((per_code, vocab.len() + 1));
    }
    // Dense values, scaled by statistics of the training rows.
    let mut scaled: Vec<Vec<f32>> = Vec::with_capacity(spec.dense.len());
    for (d, col) in spec.dense.iter().zip(&dense_cols) {
        let mut x = numbers(col, &format!("dense column {}", d.column), d.fill)?;
        if d.scale == "log" {
            x.iter_mut().for_each(|v| *v = v.max(0.0).ln_1p());
        }
        let train: Vec<f64> = x.iter().zip(&part).filter(|(_, &s)| s == 0).map(|(v, _)| *v).collect();
        let (a, b) = match d.scale.as_str() {
            "standard" | "log" => {
                let m = train.iter().sum::<f64>() / train.len().max(1) as f64;
                let sd = (train.iter().map(|v| (v - m).powi(2)).sum::<f64>() / train.len().max(1) as f64).sqrt();
                (m, if sd > 0.0 { sd } else { 1.0 })
            }
            "minmax" => {
                let lo = train.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = train.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                (lo, if hi > lo { hi - lo } else { 1.0 })
            }
            _ => (0.0, 1.0),
        };
        scaled.push(x.iter().map(|v| ((v - a) / b) as f32).collect());
    }
    let mut labels: Vec<Vec<f32>> = Vec::with_capacity(spec.labels.len());
    for (l, col) in spec.labels.iter().zip(&label_cols) {
        let rule = Rule::parse(&l.rule).map_err(|e| TableError::Spec(format!("label '{}': {e}", l.name)))?;
        labels.push(numbers(col, &format!("label '{}' column {}", l.name, l.column), None)?.into_iter().map(|x| if rule.holds(x) { 1.0 } else { 0.0 }).collect());
    }

    let mut splits = [Rows::default(), Rows::default(), Rows::default()];
    for s in &mut splits {
        s.sparse = vec![Vec::new(); spec.sparse.len()];
        s.multi_hot = vec![Bags::default(); spec.multi_hot.len()];
        s.dense = vec![Vec::new(); spec.dense.len()];
        s.labels = vec![Vec::new(); spec.labels.len()];
    }
    for r in 0..n {
        let s = &mut splits[part[r] as usize];
        for (k, (col, (ids, _))) in sparse.iter().zip(&sparse_ids).enumerate() {
            s.sparse[k].push(col.code(r).map_or(0, |c| ids[c as usize]));
        }
        for (k, (col, (per_code, _))) in multi.iter().zip(&mh_ids).enumerate() {
            if let Some(c) = col.code(r) {
                s.multi_hot[k].ids.extend_from_slice(&per_code[c as usize]);
            }
            let end = s.multi_hot[k].ids.len();
            s.multi_hot[k].offsets.push(end);
        }
        for (k, col) in scaled.iter().enumerate() {
            s.dense[k].push(col[r]);
        }
        for (k, col) in labels.iter().enumerate() {
            s.labels[k].push(col[r]);
        }
        s.domain.push(domain[r]);
    }
    let [train, val, test] = splits;
    if train.is_empty() {
        return Err(TableError::Spec(format!("the training split of {} is empty", log.describe())));
    }
    Ok(Table {
        sparse_names: spec.sparse.clone(),
        vocab: sparse_ids.iter().map(|(_, v)| *v).collect(),
        multi_hot_names: spec.multi_hot.iter().map(|m| m.column.clone()).collect(),
        multi_hot_vocab: mh_ids.iter().map(|(_, v)| *v).collect(),
        dense_names: spec.dense.iter().map(|d| d.column.clone()).collect(),
        label_names: spec.labels.iter().map(|l| l.name.clone()).collect(),
        domains,
        train,
        val,
        test,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small file in the joined MovieLens-1M layout.
    fn movielens(dir: &Path) -> PathBuf {
        let mut text = String::from("user_id,movie_id,rating,timestamp,title,genres,gender,age,occupation,zip\n");
        let ages = [1, 18, 25, 35, 45, 50, 56];
        for i in 0..50 {
            text += &format!("{},{},{},{},Movie {i},Comedy|Drama,{},{},{},{}\n", i % 7 + 1, i % 11 + 1, i % 5 + 1, 1000 + i, if i % 2 == 0 { "F" } else { "M" }, ages[i % 7], i % 3, 10000 + i % 4);
        }
        let path = dir.join("ml.csv");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn the_movielens_preset_reads_its_layout() {
        let d = tempfile::tempdir().unwrap();
        let t = load(&TableSpec::movielens_1m(vec![movielens(d.path())])).unwrap();
        assert_eq!((t.train.len(), t.val.len(), t.test.len()), (40, 5, 5));
        assert_eq!(t.domains, 3);
        assert_eq!(t.label_names, vec!["click", "like"]);
        // Row 0: rating 1 → neither; row 3: rating 4 → click only; row 4: rating 5 → both.
        assert_eq!((t.train.labels[0][0], t.train.labels[0][3], t.train.labels[1][3], t.train.labels[1][4]), (0.0, 1.0, 0.0, 1.0));
        // Age 1 and 18 → domain 0, 25 → 1, 35+ → 2.
        assert_eq!(&t.train.domain[..4], &[0, 0, 1, 2]);
        // Vocabularies from the training rows, 0 reserved; min-max age in [0, 1].
        assert_eq!(t.vocab[0], 8, "7 users + unknown");
        assert_eq!(t.multi_hot_vocab[0], 3, "Comedy, Drama + unknown");
        assert_eq!(t.train.multi_hot[0].row(5), &[1, 2]);
        assert!(t.train.dense[0].iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn the_kuairand_preset_joins_its_feature_files() {
        let d = tempfile::tempdir().unwrap();
        let log = crate::samples::kuairand(d.path(), 6, 9, 60, 1).unwrap();
        let spec = DataSpec { preset: Some("kuairand".into()), file: Some(vec![log.clone()]), ..Default::default() }.resolve().unwrap();
        let t = load(&spec).unwrap();
        assert_eq!(t.label_names, vec!["click", "long_view", "like"]);
        assert_eq!(t.domains, 4, "tabs 0, 1, 2 and the rest");
        assert_eq!((t.train.len(), t.val.len(), t.test.len()), (48, 6, 6));
        // The funnel: a long view needs a click, a like a long view.
        let y = &t.train.labels;
        assert!((0..48).all(|r| y[1][r] <= y[0][r] && y[2][r] <= y[1][r]));
        assert!(y[0].contains(&1.0) && y[0].contains(&0.0));
        // Quoted "(0,10]" is one value; the joined range column has one value + unknown.
        let k = t.sparse_names.iter().position(|c| c == "follow_user_num_range").unwrap();
        assert_eq!(t.vocab[k], 2);
        let k = t.sparse_names.iter().position(|c| c == "user_active_degree").unwrap();
        assert_eq!(t.vocab[k], 4, "three degrees + unknown");
        // Tags "a,b" inside quotes are a multi-hot of two.
        assert!(t.train.multi_hot[0].offsets.windows(2).all(|w| w[1] - w[0] == 2));
        // Empty durations are filled, then log-scaled with the rest.
        assert!(t.train.dense[0].iter().all(|v| v.is_finite()));
        // Domains: tabs 3 and 4 share domain 3.
        assert!(t.train.domain.iter().all(|&x| x < 4) && t.train.domain.contains(&3));
        // A log user the features lack: an error naming the count, or empty values.
        let mut text = std::fs::read_to_string(&log).unwrap();
        text += "77,1,20220408,1400,1,1,0,0,0,0,0,0,1000,2000,0,0,0,0,1\n";
        std::fs::write(&log, &text).unwrap();
        let e = load(&spec).unwrap_err().to_string();
        assert!(e.contains("1 of 61 rows") && e.contains("user_id absent from") && e.contains("'77'") && e.contains("missing = \"empty\""), "{e}");
        let mut lenient = spec.clone();
        lenient.join[0].missing = "empty".into();
        let t = load(&lenient).unwrap();
        assert_eq!(t.train.len() + t.val.len() + t.test.len(), 61);
    }

    #[test]
    fn unknown_values_splits_and_jsonl() {
        let d = tempfile::tempdir().unwrap();
        let mut text = String::new();
        for i in 0..20 {
            text += &format!("{{\"u\": \"user{}\", \"t\": {}, \"y\": {}}}\n", i, 100 - i, i % 2);
        }
        let path = d.path().join("log.jsonl");
        std::fs::write(&path, text).unwrap();
        let spec = |by: &str| TableSpec {
            file: vec![path.clone()],
            join: vec![],
            sparse: vec!["u".into()],
            multi_hot: vec![],
            dense: vec![Dense { column: "t".into(), scale: "standard".into(), fill: None }],
            labels: vec![Label { name: "y".into(), column: "y".into(), rule: "== 1".into() }],
            domain: None,
            split: Split { by: by.into(), column: Some(if by == "user" { "u" } else { "t" }.into()), fractions: [0.5, 0.25, 0.25] },
        };
        let t = load(&spec("row")).unwrap();
        // Users of later splits were never seen in training: all unknown (0).
        assert!(t.val.sparse[0].iter().chain(&t.test.sparse[0]).all(|&id| id == 0));
        assert!(t.train.sparse[0].iter().all(|&id| id > 0));
        // By time: t falls with the row, so the earliest times (training) are
        // the last rows and the first rows (the latest times) are the test split.
        let by_time = load(&spec("time")).unwrap();
        assert_eq!((by_time.train.len(), by_time.val.len(), by_time.test.len()), (10, 5, 5));
        let mean: f32 = by_time.train.dense[0].iter().sum::<f32>() / 10.0;
        assert!(mean.abs() < 1e-5, "standardised on the training rows: {mean}");
        assert!(by_time.test.dense[0].iter().all(|&v| v > 1.0), "{:?}", by_time.test.dense[0]);
        // By user: deterministic, and each user lands in exactly one split.
        let a = load(&spec("user")).unwrap();
        assert_eq!(a, load(&spec("user")).unwrap());
        assert_eq!(a.train.len() + a.val.len() + a.test.len(), 20);
    }

    #[test]
    fn quoted_fields_several_files_and_fills() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.csv");
        let b = d.path().join("b.tsv");
        std::fs::write(&a, "id,x,note,y\n1,2.5,\"a, \"\"quoted\"\" note\",1\r\n2,,\"two\nlines\",0\n").unwrap();
        std::fs::write(&b, "y\tid\tnote\tx\n1\t3\tplain\t4\n").unwrap();
        let mut spec = TableSpec {
            file: vec![a.clone(), b],
            join: vec![],
            sparse: vec!["id".into(), "note".into()],
            multi_hot: vec![],
            dense: vec![Dense { column: "x".into(), scale: "none".into(), fill: None }],
            labels: vec![Label { name: "y".into(), column: "y".into(), rule: "> 0".into() }],
            domain: None,
            split: Split { by: "row".into(), column: None, fractions: [1.0, 0.0, 0.0] },
        };
        let e = load(&spec).unwrap_err().to_string();
        assert!(e.contains("a.csv:3: dense column x holds '', not a number (missing; give the field a fill value"), "{e}");
        spec.dense[0].fill = Some(-1.0);
        let t = load(&spec).unwrap();
        assert_eq!(t.train.dense[0], vec![2.5, -1.0, 4.0]);
        assert_eq!(t.train.labels[0], vec![1.0, 0.0, 1.0]);
        assert_eq!(t.vocab[1], 4, "three notes, one with a comma and quotes, one over two lines");
        // A file whose header names other columns is refused.
        std::fs::write(d.path().join("c.csv"), "id,x,y\n1,2,3\n").unwrap();
        spec.file = vec![a, d.path().join("c.csv")];
        let e = load(&spec).unwrap_err().to_string();
        assert!(e.contains("c.csv:1: its header (id, x, y) does not name the columns of"), "{e}");
    }

    #[test]
    fn bad_input_is_named() {
        let d = tempfile::tempdir().unwrap();
        let path = movielens(d.path());
        let ml = || TableSpec::movielens_1m(vec![path.clone()]);
        let mut s = ml();
        s.sparse.push("zipcode".into());
        let e = load(&s).unwrap_err().to_string();
        assert!(e.contains("sparse field 'zipcode' is not a column") && e.contains("its columns are: user_id, movie_id"), "{e}");
        let mut s = ml();
        s.labels[0].column = "title".into();
        let e = load(&s).unwrap_err().to_string();
        assert!(e.contains("ml.csv:2: label 'click' column title holds 'Movie 0', not a number"), "{e}");
        let mut s = ml();
        s.labels[0].rule = "above 3".into();
        assert!(load(&s).unwrap_err().to_string().contains("must start with one of"));
        let mut s = ml();
        s.labels[1].name = "click".into();
        assert!(load(&s).unwrap_err().to_string().contains("two labels are named 'click'"));
        let mut s = ml();
        if let Some(m) = s.domain.as_mut().and_then(|d| d.map.as_mut()) {
            m.insert("25".into(), 3);
        }
        let e = load(&s).unwrap_err().to_string();
        assert!(e.contains("domain 1 has no rows"), "{e}");
        let mut s = ml();
        if let Some(m) = s.domain.as_mut().and_then(|d| d.map.as_mut()) {
            m.remove("56");
        }
        let e = load(&s).unwrap_err().to_string();
        assert!(e.contains("domain column age holds '56', which the domain map does not list"), "{e}");
        let e = DataSpec { preset: Some("movielens".into()), file: Some(vec![path.clone()]), ..Default::default() }.resolve().unwrap_err().to_string();
        assert!(e.contains("'movielens' is not one of movielens-1m, kuairand"), "{e}");
        let e = DataSpec { file: Some(vec![path.clone()]), ..Default::default() }.resolve().unwrap_err().to_string();
        assert!(e.contains("data.labels is missing"), "{e}");
        let mut s = ml();
        s.join = vec![Join { file: path.clone(), on: "uid".into(), missing: "error".into() }];
        let e = load(&s).unwrap_err().to_string();
        assert!(e.contains("join key 'uid' is not a column of"), "{e}");
        // A preset with a key replaced.
        let s = DataSpec { preset: Some("movielens-1m".into()), file: Some(vec![path]), sparse: Some(vec!["user_id".into()]), ..Default::default() }.resolve().unwrap();
        assert_eq!(s.sparse, vec!["user_id"]);
        assert_eq!(s.labels.len(), 2);
    }
}
