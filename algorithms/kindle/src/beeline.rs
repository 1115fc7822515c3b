//! BEELINE's file formats: `ExpressionData.csv` (genes in rows, cells in
//! columns, the first column the gene name), `PseudoTime.csv` (a cell id, then
//! one column per trajectory with `NA` for cells off it), networks
//! (`Gene1,Gene2[,Type]`, Gene1 the regulator, Type `+` or `-`), TF lists (the
//! first column, with a header), and ranked edge lists
//! (`Gene1,Gene2,EdgeWeight`). Comma- or tab-separated, chosen by the header
//! line. Matrices are streamed line by line into one buffer, never held twice.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io { path: String, #[source] source: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Line { path: String, line: usize, message: String },
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{what}: {count} name(s) of {total} do not match, e.g. {examples}; {hint}")]
    Mismatch { what: String, count: usize, total: usize, examples: String, hint: String },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io { path: path.display().to_string(), source }
}

/// Splits a line on the file's separator, trimming spaces and one level of
/// double quotes.
fn fields<'a>(line: &'a str, sep: char) -> impl Iterator<Item = &'a str> + 'a {
    line.split(sep).map(|f| {
        let f = f.trim();
        f.strip_prefix('"').and_then(|f| f.strip_suffix('"')).unwrap_or(f)
    })
}

fn separator(header: &str) -> char {
    if header.contains('\t') {
        '\t'
    } else {
        ','
    }
}

/// Lines of a text file with their 1-based numbers, blank lines skipped.
fn lines(path: &Path) -> Result<impl Iterator<Item = Result<(usize, String), DataError>> + '_, DataError> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    Ok(BufReader::new(file)
        .lines()
        .enumerate()
        .map(move |(i, l)| l.map(|l| (i + 1, l)).map_err(io(path)))
        .filter(|r| !matches!(r, Ok((_, l)) if l.trim().is_empty())))
}

/// A table's header line, its separator, and the data lines after it.
type Rows<'a> = Box<dyn Iterator<Item = Result<(usize, String), DataError>> + 'a>;

fn table(path: &Path) -> Result<(String, char, Rows<'_>), DataError> {
    let mut it = lines(path)?;
    let (_, header) = it.next().transpose()?.ok_or_else(|| DataError::File { path: path.display().to_string(), message: "empty file".into() })?;
    let sep = separator(&header);
    Ok((header, sep, Box::new(it)))
}

/// A genes × cells matrix, row-major (gene g's values are
/// `values[g * cells.len()..(g + 1) * cells.len()]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Expression {
    pub genes: Vec<String>,
    pub cells: Vec<String>,
    pub values: Vec<f32>,
}

impl Expression {
    pub fn row(&self, gene: usize) -> &[f32] {
        let n = self.cells.len();
        &self.values[gene * n..(gene + 1) * n]
    }

    pub fn gene_index(&self) -> HashMap<&str, usize> {
        self.genes.iter().enumerate().map(|(i, g)| (g.as_str(), i)).collect()
    }
}

/// Reads `ExpressionData.csv` (or a TSV of the same layout).
pub fn read_expression(path: &Path) -> Result<Expression, DataError> {
    let p = path.display().to_string();
    let (header, sep, it) = table(path)?;
    let cells: Vec<String> = fields(&header, sep).skip(1).map(str::to_string).collect();
    if cells.is_empty() {
        return Err(DataError::Line { path: p, line: 1, message: "no cell columns in the header (expected: an empty first field, then cell ids)".into() });
    }
    let mut genes = Vec::new();
    let mut seen = HashSet::new();
    let mut values = Vec::new();
    for row in it {
        let (line, text) = row?;
        let err = |message: String| DataError::Line { path: p.clone(), line, message };
        let mut f = fields(&text, sep);
        let gene = f.next().unwrap_or("").to_string();
        if gene.is_empty() {
            return Err(err("a row without a gene name".into()));
        }
        if !seen.insert(gene.clone()) {
            return Err(err(format!("gene {gene} appears twice")));
        }
        let before = values.len();
        for (i, v) in f.enumerate() {
            let x: f32 = v.parse().map_err(|_| err(format!("cell {} of gene {gene}: {v:?} is not a number", i + 1)))?;
            if !x.is_finite() {
                return Err(err(format!("cell {} of gene {gene}: {v} is not finite", i + 1)));
            }
            values.push(x);
        }
        if values.len() - before != cells.len() {
            return Err(err(format!("gene {gene} has {} values, the header names {} cells", values.len() - before, cells.len())));
        }
        genes.push(gene);
    }
    if genes.is_empty() {
        return Err(DataError::File { path: p, message: "no gene rows".into() });
    }
    Ok(Expression { genes, cells, values })
}

/// `PseudoTime.csv`: per cell, its time on each trajectory (`None` off it).
#[derive(Debug, Clone, PartialEq)]
pub struct PseudoTime {
    pub trajectories: Vec<String>,
    pub cells: Vec<String>,
    /// `times[c][t]`: cell c on trajectory t.
    pub times: Vec<Vec<Option<f64>>>,
}

pub fn read_pseudotime(path: &Path) -> Result<PseudoTime, DataError> {
    let p = path.display().to_string();
    let (header, sep, it) = table(path)?;
    let names: Vec<String> = fields(&header, sep).map(str::to_string).collect();
    // Usually the header names the cell-id column too (often with an empty
    // name); some files (BEELINE's curated GSD example) leave it out, so the
    // first row decides: one field more than the header means every header
    // name is a trajectory.
    let mut trajectories: Option<Vec<String>> = None;
    let (mut cells, mut times) = (Vec::new(), Vec::new());
    for row in it {
        let (line, text) = row?;
        let err = |message: String| DataError::Line { path: p.clone(), line, message };
        let mut f = fields(&text, sep);
        cells.push(f.next().unwrap_or("").to_string());
        let t: Vec<Option<f64>> = f
            .map(|v| match v {
                "NA" | "NaN" | "nan" | "" => Ok(None),
                v => v.parse::<f64>().ok().filter(|x| x.is_finite()).map(Some).ok_or_else(|| err(format!("{v:?} is not a time or NA"))),
            })
            .collect::<Result<_, _>>()?;
        let names = trajectories.get_or_insert_with(|| if t.len() == names.len() { names.clone() } else { names.iter().skip(1).cloned().collect() });
        if names.is_empty() {
            return Err(DataError::Line { path: p, line: 1, message: "no trajectory columns (expected: cell id, then PseudoTime or PseudoTime1..k)".into() });
        }
        if t.len() != names.len() {
            return Err(err(format!("{} values for {} trajectories", t.len(), names.len())));
        }
        times.push(t);
    }
    let trajectories = trajectories.unwrap_or_default();
    if trajectories.is_empty() {
        return Err(DataError::Line { path: p, line: 1, message: "no trajectory columns or no cells (expected: cell id, then PseudoTime or PseudoTime1..k)".into() });
    }
    for (j, name) in trajectories.iter().enumerate() {
        if times.iter().all(|t| t[j].is_none()) {
            return Err(DataError::File { path: p, message: format!("trajectory {name} is NA for every cell") });
        }
    }
    Ok(PseudoTime { trajectories, cells, times })
}

impl PseudoTime {
    /// Checks that every expression cell has a row here.
    pub fn check_cells(&self, expression: &Expression, path: &Path) -> Result<(), DataError> {
        let known: HashSet<&str> = self.cells.iter().map(String::as_str).collect();
        let missing: Vec<&String> = expression.cells.iter().filter(|c| !known.contains(c.as_str())).collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(DataError::Mismatch {
            what: format!("cells of the expression matrix missing from {}", path.display()),
            count: missing.len(),
            total: expression.cells.len(),
            examples: examples(&missing),
            hint: "the pseudotime file must list every cell of the matrix (NA for cells off a trajectory)".into(),
        })
    }
}

fn examples(names: &[&String]) -> String {
    names.iter().take(3).map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sign {
    Activation,
    Repression,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Edge {
    /// The regulator.
    pub from: String,
    pub to: String,
    pub sign: Option<Sign>,
}

/// A reference (or prior) network.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    pub edges: Vec<Edge>,
}

impl Network {
    /// Every gene named by an edge.
    pub fn genes(&self) -> BTreeSet<&str> {
        self.edges.iter().flat_map(|e| [e.from.as_str(), e.to.as_str()]).collect()
    }

    /// Regulators (sources of edges).
    pub fn regulators(&self) -> BTreeSet<&str> {
        self.edges.iter().map(|e| e.from.as_str()).collect()
    }

    /// The edges between `genes` only; a prior with none of its edges there
    /// is refused (it would mask everything).
    pub fn restricted_to(&self, genes: &HashSet<&str>, what: &str) -> Result<Network, DataError> {
        let edges: Vec<Edge> = self.edges.iter().filter(|e| genes.contains(e.from.as_str()) && genes.contains(e.to.as_str())).cloned().collect();
        if edges.is_empty() && !self.edges.is_empty() {
            let names: Vec<&String> = self.edges.iter().flat_map(|e| [&e.from, &e.to]).collect();
            return Err(DataError::Mismatch {
                what: format!("{what}: no edge joins two of the {} selected genes", genes.len()),
                count: names.len(),
                total: names.len(),
                examples: examples(&names),
                hint: "check that the network and the expression matrix use the same gene names (case included)".into(),
            });
        }
        Ok(Network { edges })
    }
}

/// Reads `Gene1,Gene2[,Type]`; self-loops are kept as written (metrics drop them).
pub fn read_network(path: &Path) -> Result<Network, DataError> {
    let p = path.display().to_string();
    let (header, sep, it) = table(path)?;
    let cols: Vec<&str> = fields(&header, sep).collect();
    if cols.len() < 2 || !cols[0].eq_ignore_ascii_case("gene1") || !cols[1].eq_ignore_ascii_case("gene2") {
        return Err(DataError::Line { path: p, line: 1, message: format!("header {header:?}: expected Gene1,Gene2[,Type]") });
    }
    let typed = cols.get(2).is_some_and(|c| c.eq_ignore_ascii_case("type"));
    let mut edges = Vec::new();
    for row in it {
        let (line, text) = row?;
        let f: Vec<&str> = fields(&text, sep).collect();
        let err = |message: String| DataError::Line { path: p.clone(), line, message };
        if f.len() < 2 || f[0].is_empty() || f[1].is_empty() {
            return Err(err(format!("{text:?}: expected two gene names")));
        }
        let sign = match (typed, f.get(2).copied()) {
            (true, Some("+")) => Some(Sign::Activation),
            (true, Some("-")) => Some(Sign::Repression),
            (true, Some(other)) => return Err(err(format!("Type {other:?} is neither + nor -"))),
            _ => None,
        };
        edges.push(Edge { from: f[0].to_string(), to: f[1].to_string(), sign });
    }
    Ok(Network { edges })
}

/// A TF list: the first column of each row after the header.
pub fn read_tfs(path: &Path) -> Result<BTreeSet<String>, DataError> {
    let (_, sep, it) = table(path)?;
    let mut tfs = BTreeSet::new();
    for row in it {
        let (_, text) = row?;
        let tf = fields(&text, sep).next().unwrap_or("").to_string();
        if !tf.is_empty() {
            tfs.insert(tf);
        }
    }
    Ok(tfs)
}

/// One predicted edge with its score (any sign; metrics use |weight|).
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredEdge {
    pub from: String,
    pub to: String,
    pub weight: f64,
}

/// Reads a ranked edge list `Gene1,Gene2,EdgeWeight` (BEELINE's
/// `rankedEdges.csv` is tab-separated; both work).
pub fn read_edges(path: &Path) -> Result<Vec<ScoredEdge>, DataError> {
    let p = path.display().to_string();
    let (header, sep, it) = table(path)?;
    let cols: Vec<&str> = fields(&header, sep).collect();
    if cols.len() < 3 || !cols[0].eq_ignore_ascii_case("gene1") || !cols[2].eq_ignore_ascii_case("edgeweight") {
        return Err(DataError::Line { path: p, line: 1, message: format!("header {header:?}: expected Gene1,Gene2,EdgeWeight") });
    }
    let mut out = Vec::new();
    for row in it {
        let (line, text) = row?;
        let f: Vec<&str> = fields(&text, sep).collect();
        let err = |message: String| DataError::Line { path: p.clone(), line, message };
        if f.len() < 3 {
            return Err(err(format!("{text:?}: expected Gene1, Gene2 and EdgeWeight")));
        }
        let weight: f64 = f[2].parse().ok().filter(|w: &f64| w.is_finite()).ok_or_else(|| err(format!("EdgeWeight {:?} is not a finite number", f[2])))?;
        out.push(ScoredEdge { from: f[0].to_string(), to: f[1].to_string(), weight });
    }
    Ok(out)
}

/// Writes a ranked edge list, highest |weight| first (ties by name, so the
/// file is deterministic), through a temporary file renamed into place.
pub fn write_edges(path: &Path, edges: &[ScoredEdge]) -> Result<(), DataError> {
    let mut sorted: Vec<&ScoredEdge> = edges.iter().collect();
    sorted.sort_by(|a, b| b.weight.abs().total_cmp(&a.weight.abs()).then_with(|| (&a.from, &a.to).cmp(&(&b.from, &b.to))));
    let tmp = PathBuf::from(format!("{}.partial", path.display()));
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io(&tmp))?);
    writeln!(w, "Gene1,Gene2,EdgeWeight").map_err(io(&tmp))?;
    for e in sorted {
        writeln!(w, "{},{},{}", e.from, e.to, e.weight).map_err(io(&tmp))?;
    }
    w.flush().map_err(io(&tmp))?;
    drop(w);
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Checks that `names` (from `what`) are genes of the matrix; reports how many
/// are not, with examples.
pub fn check_genes<'a>(expression: &Expression, names: impl IntoIterator<Item = &'a str>, what: &str) -> Result<(), DataError> {
    let known: HashSet<&str> = expression.genes.iter().map(String::as_str).collect();
    let names: BTreeSet<&str> = names.into_iter().collect();
    let missing: Vec<String> = names.iter().filter(|n| !known.contains(*n)).map(|s| s.to_string()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let refs: Vec<&String> = missing.iter().collect();
    Err(DataError::Mismatch {
        what: format!("genes of {what} not in the expression matrix"),
        count: missing.len(),
        total: names.len(),
        examples: examples(&refs),
        hint: "use the same gene names in both files (BEELINE's real data is upper-case)".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn expression_pseudotime_networks_and_edges_round_trip_in_csv_and_tsv() {
        let d = tempfile::tempdir().unwrap();
        let e = read_expression(&write(d.path(), "e.csv", ",c1,c2,c3\ng1,1,2,3\n\"g2\",0.5,0,1e-3\n")).unwrap();
        assert_eq!(e.genes, vec!["g1", "g2"]);
        assert_eq!(e.row(1), &[0.5, 0.0, 0.001]);
        let t = read_expression(&write(d.path(), "e.tsv", "\tc1\tc2\ng1\t1\t2\n")).unwrap();
        assert_eq!(t.cells, vec!["c1", "c2"]);
        let pt = read_pseudotime(&write(d.path(), "p.csv", ",PseudoTime1,PseudoTime2\nc1,0.1,NA\nc2,NA,0.5\nc3,0.3,0.2\n")).unwrap();
        assert_eq!(pt.times[1], vec![None, Some(0.5)]);
        pt.check_cells(&e, Path::new("p.csv")).unwrap();
        // A header without the cell-id column's name (BEELINE's GSD example).
        let bare = read_pseudotime(&write(d.path(), "b.csv", "PseudoTime1,PseudoTime2\nc1,0.1,NA\nc2,NA,0.5\n")).unwrap();
        assert_eq!((bare.trajectories.len(), bare.cells[1].as_str(), bare.times[1][1]), (2, "c2", Some(0.5)));
        let n = read_network(&write(d.path(), "n.csv", "Gene1,Gene2,Type\ng1,g2,+\ng2,g1,-\n")).unwrap();
        assert_eq!(n.edges[1].sign, Some(Sign::Repression));
        let unsigned = read_network(&write(d.path(), "u.csv", "Gene1,Gene2\nA,B\n")).unwrap();
        assert_eq!(unsigned.edges[0].sign, None);
        let tfs = read_tfs(&write(d.path(), "tf.csv", "TF,Sources\nA,x\nB,y\n")).unwrap();
        assert_eq!(tfs.len(), 2);
        let out = d.path().join("ranked.csv");
        let edges = vec![
            ScoredEdge { from: "a".into(), to: "b".into(), weight: 0.2 },
            ScoredEdge { from: "b".into(), to: "a".into(), weight: -0.9 },
        ];
        write_edges(&out, &edges).unwrap();
        let back = read_edges(&out).unwrap();
        assert_eq!(back[0].from, "b", "highest |weight| first");
        assert_eq!(back.len(), 2);
        let beeline = read_edges(&write(d.path(), "r.tsv", "Gene1\tGene2\tEdgeWeight\ng1\tg2\t0.5\n")).unwrap();
        assert_eq!(beeline[0].weight, 0.5);
    }

    #[test]
    fn bad_files_are_refused_with_the_place_and_what_to_do() {
        let d = tempfile::tempdir().unwrap();
        let err = |name: &str, text: &str, f: fn(&Path) -> Result<(), DataError>| f(&write(d.path(), name, text)).unwrap_err().to_string();
        let e = err("e1.csv", ",c1,c2\ng1,1\n", |p| read_expression(p).map(|_| ()));
        assert!(e.contains("e1.csv:2:") && e.contains("1 values") && e.contains("2 cells"), "{e}");
        let e = err("e2.csv", ",c1\ng1,x\n", |p| read_expression(p).map(|_| ()));
        assert!(e.contains("e2.csv:2:") && e.contains("not a number"), "{e}");
        let e = err("e3.csv", ",c1\ng1,1\ng1,2\n", |p| read_expression(p).map(|_| ()));
        assert!(e.contains("twice"), "{e}");
        let e = err("p.csv", ",PseudoTime1,PseudoTime2\nc1,0.1,NA\nc2,0.2,NA\n", |p| read_pseudotime(p).map(|_| ()));
        assert!(e.contains("PseudoTime2 is NA for every cell"), "{e}");
        let e = err("n.csv", "Gene1,Gene2,Type\nA,B,?\n", |p| read_network(p).map(|_| ()));
        assert!(e.contains("n.csv:2:") && e.contains("neither + nor -"), "{e}");
        let e = err("n2.csv", "from,to\nA,B\n", |p| read_network(p).map(|_| ()));
        assert!(e.contains("expected Gene1,Gene2"), "{e}");

        let expr = read_expression(&write(d.path(), "e.csv", ",c1,c2\nG1,1,2\nG2,3,4\n")).unwrap();
        let pt = read_pseudotime(&write(d.path(), "pt.csv", ",PseudoTime\nc1,0.5\n")).unwrap();
        let e = pt.check_cells(&expr, Path::new("pt.csv")).unwrap_err().to_string();
        assert!(e.contains("1 name(s) of 2") && e.contains("c2"), "{e}");
        let e = check_genes(&expr, ["G1", "g2", "G3"], "refNetwork.csv").unwrap_err().to_string();
        assert!(e.contains("2 name(s) of 3") && e.contains("G3, g2"), "{e}");
        let prior = Network { edges: vec![Edge { from: "g1".into(), to: "g2".into(), sign: None }] };
        let genes: HashSet<&str> = expr.genes.iter().map(String::as_str).collect();
        let e = prior.restricted_to(&genes, "the prior").unwrap_err().to_string();
        assert!(e.contains("no edge joins two of the 2 selected genes"), "{e}");
    }
}
