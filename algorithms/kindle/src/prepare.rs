//! From a BEELINE dataset to what KINDLE's models read: a gene selection
//! (all genes, the N most variable, or the TFs plus the N most variable other
//! genes, as BEELINE's "TFs+500" settings), a normalisation (log1p and/or a
//! per-gene z-score), each trajectory's cells ordered by pseudotime, and
//! sliding windows of T cells whose next W cells are the prediction target.

use crate::beeline::{DataError, Expression, PseudoTime};
use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Clone, PartialEq)]
pub enum GeneSelection {
    All,
    /// The N genes of highest variance (after log1p).
    TopVariable(usize),
    /// Every TF of the list present in the matrix, plus the N most variable others.
    TfsPlus { tfs: BTreeSet<String>, n: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Normalise {
    pub log1p: bool,
    pub zscore: bool,
}

/// One trajectory's cells in pseudotime order, cells × genes row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub trajectory: String,
    /// Cell ids, earliest first.
    pub cells: Vec<String>,
    pub values: Vec<f32>,
}

impl Series {
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub genes: Vec<String>,
    pub series: Vec<Series>,
    /// Per gene, what a raw expression of 0 becomes after normalisation (the
    /// input value of a knocked-out gene).
    pub zero: Vec<f32>,
}

fn variance(x: &[f64]) -> f64 {
    let n = x.len().max(1) as f64;
    let mean = x.iter().sum::<f64>() / n;
    x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n
}

/// Indices of the selected genes, in matrix order.
pub fn select_genes(expr: &Expression, selection: &GeneSelection) -> Result<Vec<usize>, DataError> {
    let var: Vec<f64> = (0..expr.genes.len()).map(|g| variance(&expr.row(g).iter().map(|v| f64::from(*v).max(0.0).ln_1p()).collect::<Vec<_>>())).collect();
    // Most variable first; ties by matrix order, so the choice is deterministic.
    let by_variance = |candidates: Vec<usize>, n: usize| -> Vec<usize> {
        let mut c = candidates;
        c.sort_by(|&a, &b| var[b].total_cmp(&var[a]).then(a.cmp(&b)));
        c.truncate(n);
        c
    };
    let mut chosen = match selection {
        GeneSelection::All => (0..expr.genes.len()).collect(),
        GeneSelection::TopVariable(n) => by_variance((0..expr.genes.len()).collect(), *n),
        GeneSelection::TfsPlus { tfs, n } => {
            let (tf, other): (Vec<usize>, Vec<usize>) = (0..expr.genes.len()).partition(|&g| tfs.contains(&expr.genes[g]));
            if tf.is_empty() {
                let names: Vec<&String> = tfs.iter().take(3).collect();
                return Err(DataError::Mismatch {
                    what: "TFs of the list in the expression matrix".into(),
                    count: tfs.len(),
                    total: tfs.len(),
                    examples: names.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                    hint: "the TF list and the matrix must use the same gene names (BEELINE's real data is upper-case)".into(),
                });
            }
            let mut c = tf;
            c.extend(by_variance(other, *n));
            c
        }
    };
    chosen.sort_unstable();
    if chosen.len() < 2 {
        return Err(DataError::File { path: "gene selection".into(), message: format!("{} gene(s) selected; a network needs at least 2", chosen.len()) });
    }
    Ok(chosen)
}

/// Selects, normalises and orders the dataset; cells that are NA on every
/// trajectory are left out, and a cell on several trajectories appears in each.
pub fn prepare(expr: &Expression, pt: &PseudoTime, selection: &GeneSelection, norm: Normalise) -> Result<Prepared, DataError> {
    let genes = select_genes(expr, selection)?;
    let n = expr.cells.len();
    // Normalised rows of the selected genes, and the image of a raw 0.
    let (rows, zero): (Vec<Vec<f32>>, Vec<f32>) = genes
        .iter()
        .map(|&g| {
            let mut x: Vec<f64> = expr.row(g).iter().map(|v| f64::from(*v)).collect();
            if norm.log1p {
                x.iter_mut().for_each(|v| *v = v.max(0.0).ln_1p());
            }
            let mut zero = 0.0;
            if norm.zscore {
                let mean = x.iter().sum::<f64>() / n as f64;
                let sd = variance(&x).sqrt();
                x.iter_mut().for_each(|v| *v = if sd > 0.0 { (*v - mean) / sd } else { 0.0 });
                zero = if sd > 0.0 { -mean / sd } else { 0.0 };
            }
            (x.into_iter().map(|v| v as f32).collect(), zero as f32)
        })
        .unzip();
    let col: HashMap<&str, usize> = expr.cells.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
    let mut series = Vec::new();
    for (t, name) in pt.trajectories.iter().enumerate() {
        let mut on: Vec<(f64, usize, &str)> = pt
            .cells
            .iter()
            .zip(&pt.times)
            .filter_map(|(c, times)| Some((times[t]?, *col.get(c.as_str())?, c.as_str())))
            .collect();
        // Pseudotime, then matrix order for equal times: deterministic.
        on.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut values = Vec::with_capacity(on.len() * genes.len());
        for (_, c, _) in &on {
            values.extend(rows.iter().map(|r| r[*c]));
        }
        series.push(Series { trajectory: name.clone(), cells: on.iter().map(|x| x.2.to_string()).collect(), values });
    }
    if series.iter().all(|s| s.is_empty()) {
        return Err(DataError::File { path: "pseudotime".into(), message: "no cell of the matrix has a pseudotime on any trajectory".into() });
    }
    Ok(Prepared { genes: genes.iter().map(|&g| expr.genes[g].clone()).collect(), series, zero })
}

/// Start indices of windows of `t` input cells followed by `w` target cells,
/// every `stride` cells, over each series: (series, start) pairs. Refused when
/// no series is long enough.
pub fn windows(p: &Prepared, t: usize, w: usize, stride: usize) -> Result<Vec<(usize, usize)>, String> {
    if t == 0 || w == 0 || stride == 0 {
        return Err("window length T, horizon W and stride must all be at least 1".into());
    }
    let out: Vec<(usize, usize)> = p
        .series
        .iter()
        .enumerate()
        .flat_map(|(s, series)| (0..).map(move |k| k * stride).take_while(move |start| start + t + w <= series.len()).map(move |start| (s, start)))
        .collect();
    if out.is_empty() {
        let longest = p.series.iter().map(Series::len).max().unwrap_or(0);
        return Err(format!("T + W = {} cells exceeds the longest trajectory ({longest} cells); lower window or horizon", t + w));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> (Expression, PseudoTime) {
        let expr = Expression {
            genes: vec!["TF1".into(), "A".into(), "B".into(), "C".into()],
            cells: vec!["c1".into(), "c2".into(), "c3".into(), "c4".into()],
            values: vec![
                1.0, 1.0, 1.0, 1.1, // TF1: nearly constant
                0.0, 10.0, 0.0, 10.0, // A: most variable
                1.0, 2.0, 3.0, 4.0, // B
                5.0, 5.0, 5.0, 5.0, // C: constant
            ],
        };
        let pt = PseudoTime {
            trajectories: vec!["PseudoTime1".into(), "PseudoTime2".into()],
            cells: vec!["c1".into(), "c2".into(), "c3".into(), "c4".into()],
            times: vec![vec![Some(0.9), None], vec![Some(0.1), Some(0.5)], vec![None, Some(0.2)], vec![Some(0.5), None]],
        };
        (expr, pt)
    }

    #[test]
    fn genes_are_chosen_by_variance_with_tfs_kept() {
        let (e, _) = data();
        assert_eq!(select_genes(&e, &GeneSelection::TopVariable(2)).unwrap(), vec![1, 2]);
        let tfs: BTreeSet<String> = ["TF1".to_string(), "ZZZ".to_string()].into();
        assert_eq!(select_genes(&e, &GeneSelection::TfsPlus { tfs, n: 1 }).unwrap(), vec![0, 1]);
        let none: BTreeSet<String> = ["tf1".to_string()].into();
        let err = select_genes(&e, &GeneSelection::TfsPlus { tfs: none, n: 1 }).unwrap_err().to_string();
        assert!(err.contains("same gene names"), "{err}");
        assert!(select_genes(&e, &GeneSelection::TopVariable(1)).is_err());
    }

    #[test]
    fn series_follow_pseudotime_per_trajectory_and_windows_fit_or_are_refused() {
        let (e, pt) = data();
        let p = prepare(&e, &pt, &GeneSelection::All, Normalise { log1p: false, zscore: true }).unwrap();
        assert_eq!(p.series[0].cells, vec!["c2", "c4", "c1"]);
        assert_eq!(p.series[1].cells, vec!["c3", "c2"]);
        // z-scored B over all 4 cells: (x − 2.5) / sd; c2 has B = 2.
        let sd = (1.25f64).sqrt();
        assert!((f64::from(p.series[0].values[2]) - (2.0 - 2.5) / sd).abs() < 1e-6);
        assert!(p.series[0].values.chunks(4).all(|c| c[3] == 0.0), "a constant gene z-scores to 0");
        assert!((f64::from(p.zero[2]) - (0.0 - 2.5) / sd).abs() < 1e-6, "a knocked-out B enters as z(0)");
        assert_eq!(windows(&p, 1, 1, 1).unwrap(), vec![(0, 0), (0, 1), (1, 0)]);
        assert_eq!(windows(&p, 2, 1, 1).unwrap(), vec![(0, 0)]);
        let err = windows(&p, 3, 1, 1).unwrap_err();
        assert!(err.contains("T + W = 4") && err.contains("3 cells"), "{err}");
    }
}
