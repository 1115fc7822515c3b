//! Users' own interaction logs as CTR training data: a CSV, TSV or JSONL file
//! described by a [`TableSpec`] — categorical ("sparse") fields with a
//! vocabulary built on the training split (unknown values → the reserved id 0),
//! multi-hot fields, dense fields with scaling fitted on the training split,
//! labels by threshold rules, a domain column (or a value → domain map), and a
//! deterministic train / validation / test split by row order, by time, or by
//! user. [`TableSpec::movielens_1m`] is the layout M3oE uses.
//!
//! The models still read the generator ([`crate::data`]); feeding them a
//! [`Table`] is the next step of issue 6.

use kiln_worker::rng::fnv1a;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
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
    /// "standard" (z-score), "minmax" or "none"; fitted on the training split.
    #[serde(default = "standard")]
    pub scale: String,
}

fn standard() -> String {
    "standard".into()
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Label {
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

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    pub file: PathBuf,
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

impl TableSpec {
    /// MovieLens-1M joined into one file (user_id, movie_id, rating, timestamp,
    /// title, genres, gender, age, occupation, zip), as M3oE uses it: domains
    /// by age ({1, 18} → 0, {25} → 1, {35, 45, 50, 56} → 2), click = rating > 3,
    /// like = rating > 4, genres multi-hot, age min-max scaled, split 80/10/10
    /// in file order.
    pub fn movielens_1m(file: PathBuf) -> TableSpec {
        let map = [("1", 0), ("18", 0), ("25", 1), ("35", 2), ("45", 2), ("50", 2), ("56", 2)].into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        TableSpec {
            file,
            sparse: ["user_id", "movie_id", "gender", "occupation", "zip"].map(String::from).to_vec(),
            multi_hot: vec![MultiHot { column: "genres".into(), separator: "|".into() }],
            dense: vec![Dense { column: "age".into(), scale: "minmax".into() }],
            labels: vec![
                Label { name: "click".into(), column: "rating".into(), rule: "> 3".into() },
                Label { name: "like".into(), column: "rating".into(), rule: "> 4".into() },
            ],
            domain: Some(DomainSpec { column: "age".into(), map: Some(map) }),
            split: Split::default(),
        }
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

/// Rows of one split, column-major per kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rows {
    /// `[field][row]`.
    pub sparse: Vec<Vec<i64>>,
    /// `[field][row]` → the row's ids.
    pub multi_hot: Vec<Vec<Vec<i64>>>,
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

/// One record: column name → raw text.
type Record = HashMap<String, String>;

fn read_records(path: &Path) -> Result<(Vec<String>, Vec<(usize, Record)>), TableError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| TableError::Io { path: p.clone(), source })?;
    let jsonl = path.extension().is_some_and(|e| e == "jsonl" || e == "json");
    let mut records = Vec::new();
    let mut columns: Vec<String> = Vec::new();
    if jsonl {
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).map_err(|e| TableError::Line { path: p.clone(), line: i + 1, message: format!("not a JSON object: {e}") })?;
            let obj = v.as_object().ok_or_else(|| TableError::Line { path: p.clone(), line: i + 1, message: "not a JSON object".into() })?;
            let rec: Record = obj
                .iter()
                .map(|(k, v)| (k.clone(), match v { serde_json::Value::String(s) => s.clone(), other => other.to_string() }))
                .collect();
            for k in obj.keys() {
                if !columns.contains(k) {
                    columns.push(k.clone());
                }
            }
            records.push((i + 1, rec));
        }
        return Ok((columns, records));
    }
    let mut lines = text.lines().enumerate();
    let (_, header) = lines.next().ok_or_else(|| TableError::Line { path: p.clone(), line: 1, message: "empty file: expected a header line".into() })?;
    let sep = if header.contains('\t') { '\t' } else { ',' };
    columns = header.split(sep).map(|c| c.trim().trim_matches('"').to_string()).collect();
    for (i, line) in lines.filter(|(_, l)| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(sep).collect();
        if fields.len() != columns.len() {
            return Err(TableError::Line { path: p.clone(), line: i + 1, message: format!("{} fields, the header has {}", fields.len(), columns.len()) });
        }
        records.push((i + 1, columns.iter().cloned().zip(fields.iter().map(|f| f.trim().trim_matches('"').to_string())).collect()));
    }
    Ok((columns, records))
}

pub fn load(spec: &TableSpec) -> Result<Table, TableError> {
    let p = spec.file.display().to_string();
    let (columns, records) = read_records(&spec.file)?;
    let need = |what: &str, name: &str| -> Result<(), TableError> {
        if columns.iter().any(|c| c == name) {
            Ok(())
        } else {
            Err(TableError::UnknownColumn { what: what.into(), name: name.into(), path: p.clone(), available: columns.join(", ") })
        }
    };
    spec.sparse.iter().try_for_each(|c| need("sparse field", c))?;
    spec.multi_hot.iter().try_for_each(|m| need("multi-hot field", &m.column))?;
    spec.dense.iter().try_for_each(|d| need("dense field", &d.column))?;
    spec.labels.iter().try_for_each(|l| need(&format!("label '{}'", l.name), &l.column))?;
    if let Some(d) = &spec.domain {
        need("domain", &d.column)?;
    }
    if spec.labels.is_empty() {
        return Err(TableError::Spec("at least one label is needed (labels = [{ name, column, rule }])".into()));
    }
    let rules: Vec<Rule> = spec.labels.iter().map(|l| Rule::parse(&l.rule).map_err(|e| TableError::Spec(format!("label '{}': {e}", l.name)))).collect::<Result<_, _>>()?;
    for d in &spec.dense {
        if !["standard", "minmax", "none"].contains(&d.scale.as_str()) {
            return Err(TableError::Spec(format!("dense field {}: scale '{}' is not one of standard, minmax, none", d.column, d.scale)));
        }
    }
    let f = spec.split.fractions;
    if f.iter().any(|x| !(0.0..=1.0).contains(x)) || (f.iter().sum::<f64>() - 1.0).abs() > 1e-9 || f[0] == 0.0 {
        return Err(TableError::Spec(format!("split.fractions {f:?} must be three shares in [0, 1] summing to 1, the first above 0")));
    }

    // Numbers, with file:line on failure.
    let number = |line: usize, rec: &Record, col: &str, what: &str| -> Result<f64, TableError> {
        let raw = rec.get(col).map(String::as_str).unwrap_or("");
        raw.parse::<f64>().ok().filter(|x| x.is_finite()).ok_or_else(|| TableError::Line { path: p.clone(), line, message: format!("{what} column {col} holds '{raw}', not a number") })
    };
    let n = records.len();
    let mut domain = Vec::with_capacity(n);
    for (line, rec) in &records {
        let d = match &spec.domain {
            None => 0,
            Some(ds) => {
                let raw = rec.get(&ds.column).map(String::as_str).unwrap_or("");
                match &ds.map {
                    Some(m) => *m.get(raw).ok_or_else(|| TableError::Line {
                        path: p.clone(),
                        line: *line,
                        message: format!("domain column {} holds '{raw}', which the domain map does not list ({})", ds.column, m.keys().cloned().collect::<Vec<_>>().join(", ")),
                    })?,
                    None => raw.parse::<usize>().map_err(|_| TableError::Line { path: p.clone(), line: *line, message: format!("domain column {} holds '{raw}', not a domain index", ds.column) })?,
                }
            }
        };
        domain.push(d);
    }
    let domains = domain.iter().copied().max().map_or(1, |m| m + 1);
    if let Some(empty) = (0..domains).find(|d| !domain.contains(d)) {
        return Err(TableError::Spec(format!("domain {empty} has no rows in {p} (domains are 0..{domains}); fix the domain map")));
    }

    // The split: which part each row goes to.
    let part: Vec<usize> = match spec.split.by.as_str() {
        "row" | "time" => {
            let mut order: Vec<usize> = (0..n).collect();
            if spec.split.by == "time" {
                let col = spec.split.column.as_deref().ok_or_else(|| TableError::Spec("split.by = \"time\" needs split.column".into()))?;
                need("split column", col)?;
                let t: Vec<f64> = records.iter().map(|(l, r)| number(*l, r, col, "time")).collect::<Result<_, _>>()?;
                order.sort_by(|&a, &b| t[a].total_cmp(&t[b]).then(a.cmp(&b)));
            }
            let cut1 = ((n as f64) * f[0]).round() as usize;
            let cut2 = ((n as f64) * (f[0] + f[1])).round() as usize;
            let mut part = vec![0; n];
            for (k, &i) in order.iter().enumerate() {
                part[i] = if k < cut1 { 0 } else if k < cut2 { 1 } else { 2 };
            }
            part
        }
        "user" => {
            let col = spec.split.column.as_deref().ok_or_else(|| TableError::Spec("split.by = \"user\" needs split.column (the user id column)".into()))?;
            need("split column", col)?;
            records
                .iter()
                .map(|(_, r)| {
                    let u = (fnv1a(r.get(col).map(String::as_str).unwrap_or("").as_bytes()) >> 11) as f64 / (1u64 << 53) as f64;
                    if u < f[0] { 0 } else if u < f[0] + f[1] { 1 } else { 2 }
                })
                .collect()
        }
        other => return Err(TableError::Spec(format!("split.by '{other}' is not one of row, time, user"))),
    };

    // Vocabularies on the training rows only.
    let mut vocab_maps: Vec<HashMap<String, i64>> = vec![HashMap::new(); spec.sparse.len()];
    let mut mh_maps: Vec<HashMap<String, i64>> = vec![HashMap::new(); spec.multi_hot.len()];
    for ((_, rec), _) in records.iter().zip(&part).filter(|(_, &s)| s == 0) {
        for (m, col) in vocab_maps.iter_mut().zip(&spec.sparse) {
            let v = rec.get(col).cloned().unwrap_or_default();
            let next = m.len() as i64 + 1;
            m.entry(v).or_insert(next);
        }
        for (m, mh) in mh_maps.iter_mut().zip(&spec.multi_hot) {
            for v in rec.get(&mh.column).map(String::as_str).unwrap_or("").split(mh.separator.as_str()).filter(|v| !v.is_empty()) {
                let next = m.len() as i64 + 1;
                m.entry(v.to_string()).or_insert(next);
            }
        }
    }
    // Dense values, then scaling fitted on the training rows.
    let mut dense: Vec<Vec<f64>> = Vec::with_capacity(spec.dense.len());
    for d in &spec.dense {
        dense.push(records.iter().map(|(l, r)| number(*l, r, &d.column, "dense")).collect::<Result<_, _>>()?);
    }
    let scaled: Vec<Vec<f32>> = spec
        .dense
        .iter()
        .zip(&dense)
        .map(|(d, col)| {
            let train: Vec<f64> = col.iter().zip(&part).filter(|(_, &s)| s == 0).map(|(v, _)| *v).collect();
            let (a, b) = match d.scale.as_str() {
                "standard" => {
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
            col.iter().map(|v| ((v - a) / b) as f32).collect()
        })
        .collect();
    let mut labels: Vec<Vec<f32>> = Vec::with_capacity(rules.len());
    for (l, rule) in spec.labels.iter().zip(&rules) {
        labels.push(records.iter().map(|(line, r)| number(*line, r, &l.column, &format!("label '{}'", l.name)).map(|x| if rule.holds(x) { 1.0 } else { 0.0 })).collect::<Result<_, _>>()?);
    }

    let mut splits = [Rows::default(), Rows::default(), Rows::default()];
    for s in &mut splits {
        s.sparse = vec![Vec::new(); spec.sparse.len()];
        s.multi_hot = vec![Vec::new(); spec.multi_hot.len()];
        s.dense = vec![Vec::new(); spec.dense.len()];
        s.labels = vec![Vec::new(); spec.labels.len()];
    }
    for (i, (_, rec)) in records.iter().enumerate() {
        let s = &mut splits[part[i]];
        for (k, (m, col)) in vocab_maps.iter().zip(&spec.sparse).enumerate() {
            s.sparse[k].push(rec.get(col).and_then(|v| m.get(v)).copied().unwrap_or(0));
        }
        for (k, (m, mh)) in mh_maps.iter().zip(&spec.multi_hot).enumerate() {
            let ids = rec.get(&mh.column).map(String::as_str).unwrap_or("").split(mh.separator.as_str()).filter(|v| !v.is_empty()).map(|v| m.get(v).copied().unwrap_or(0)).collect();
            s.multi_hot[k].push(ids);
        }
        for (k, col) in scaled.iter().enumerate() {
            s.dense[k].push(col[i]);
        }
        for (k, col) in labels.iter().enumerate() {
            s.labels[k].push(col[i]);
        }
        s.domain.push(domain[i]);
    }
    let [train, val, test] = splits;
    if train.is_empty() {
        return Err(TableError::Spec(format!("the training split of {p} is empty")));
    }
    Ok(Table {
        sparse_names: spec.sparse.clone(),
        vocab: vocab_maps.iter().map(|m| m.len() + 1).collect(),
        multi_hot_names: spec.multi_hot.iter().map(|m| m.column.clone()).collect(),
        multi_hot_vocab: mh_maps.iter().map(|m| m.len() + 1).collect(),
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
        let t = load(&TableSpec::movielens_1m(movielens(d.path()))).unwrap();
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
        assert!(t.train.dense[0].iter().all(|v| (0.0..=1.0).contains(v)));
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
            file: path.clone(),
            sparse: vec!["u".into()],
            multi_hot: vec![],
            dense: vec![Dense { column: "t".into(), scale: "standard".into() }],
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
    fn bad_input_is_named() {
        let d = tempfile::tempdir().unwrap();
        let path = movielens(d.path());
        let mut s = TableSpec::movielens_1m(path.clone());
        s.sparse.push("zipcode".into());
        let e = load(&s).unwrap_err().to_string();
        assert!(e.contains("sparse field 'zipcode' is not a column") && e.contains("its columns are: user_id, movie_id"), "{e}");
        let mut s = TableSpec::movielens_1m(path.clone());
        s.labels[0].column = "title".into();
        let e = load(&s).unwrap_err().to_string();
        assert!(e.contains("ml.csv:2: label 'click' column title holds 'Movie 0', not a number"), "{e}");
        let mut s = TableSpec::movielens_1m(path.clone());
        s.labels[0].rule = "above 3".into();
        assert!(load(&s).unwrap_err().to_string().contains("must start with one of"));
        let mut s = TableSpec::movielens_1m(path.clone());
        if let Some(m) = s.domain.as_mut().and_then(|d| d.map.as_mut()) {
            m.insert("25".into(), 3);
        }
        let e = load(&s).unwrap_err().to_string();
        assert!(e.contains("domain 1 has no rows"), "{e}");
        let mut s = TableSpec::movielens_1m(path);
        if let Some(m) = s.domain.as_mut().and_then(|d| d.map.as_mut()) {
            m.remove("56");
        }
        let e = load(&s).unwrap_err().to_string();
        assert!(e.contains("domain column age holds '56', which the domain map does not list"), "{e}");
    }
}
