//! Retrieval metrics over a divergence matrix: Recall@k (a same-class item
//! among the k nearest) and MAP@R (Musgrave et al., "A Metric Learning
//! Reality Check", 2020: average precision over the first R results, R =
//! the query's number of same-class references).
//!
//! Every query is scored against all other items (leave-one-out); ties in
//! divergence are broken by item index, so the numbers are deterministic.

/// Sums over queries, to be divided once all are in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Retrieval {
    /// Per k: queries with a same-class item among the k nearest.
    pub hits: Vec<(usize, f64)>,
    pub ap_at_r: f64,
    /// Queries with at least one same-class reference.
    pub queries: usize,
}

impl Retrieval {
    pub fn new(ks: &[usize]) -> Retrieval {
        Retrieval { hits: ks.iter().map(|&k| (k, 0.0)).collect(), ap_at_r: 0.0, queries: 0 }
    }

    /// Adds query `q` (an index into `labels`) given its divergence to every item.
    pub fn add(&mut self, q: usize, row: &[f32], labels: &[usize]) {
        let mut order: Vec<usize> = (0..row.len()).filter(|&j| j != q).collect();
        order.sort_by(|&a, &b| row[a].total_cmp(&row[b]).then(a.cmp(&b)));
        let r = order.iter().filter(|&&j| labels[j] == labels[q]).count();
        if r == 0 {
            return;
        }
        self.queries += 1;
        for (k, h) in &mut self.hits {
            if order.iter().take(*k).any(|&j| labels[j] == labels[q]) {
                *h += 1.0;
            }
        }
        let (mut found, mut ap) = (0usize, 0.0);
        for (i, &j) in order.iter().take(r).enumerate() {
            if labels[j] == labels[q] {
                found += 1;
                ap += found as f64 / (i + 1) as f64;
            }
        }
        self.ap_at_r += ap / r as f64;
    }

    /// `recall@k` for each k, and `map@r`.
    pub fn metrics(&self) -> Vec<(String, f64)> {
        let n = self.queries.max(1) as f64;
        let mut out: Vec<(String, f64)> = self.hits.iter().map(|(k, h)| (format!("recall@{k}"), h / n)).collect();
        out.push(("map@r".into(), self.ap_at_r / n));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_and_map_at_r_by_hand() {
        // Items: 0, 1, 2 of class A; 3 of class B.
        let labels = [0, 0, 0, 1];
        let mut r = Retrieval::new(&[1, 2]);
        // Query 0 ranks 3, 1, 2: R = 2; precision at the hit (rank 2) = 1/2 → AP@R = (0 + 1/2)/2.
        r.add(0, &[0.0, 0.2, 0.3, 0.1], &labels);
        // Query 3 has no same-class item: skipped.
        r.add(3, &[0.1, 0.2, 0.3, 0.0], &labels);
        // Query 1 ranks 0, 2 (a tie broken by index), 3: AP@R = 1.
        r.add(1, &[0.5, 0.0, 0.5, 0.9], &labels);
        let m: std::collections::BTreeMap<String, f64> = r.metrics().into_iter().collect();
        assert_eq!(r.queries, 2);
        assert_eq!((m["recall@1"], m["recall@2"]), (0.5, 1.0));
        assert!((m["map@r"] - (0.25 + 1.0) / 2.0).abs() < 1e-12);
    }
}
