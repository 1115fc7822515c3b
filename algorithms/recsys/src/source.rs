//! Where a recsys job's samples come from: the generator or a user's table,
//! behind one interface the trainer reads.
//!
//! Both are indexed streams: training sample `i` is a pure function of (seed,
//! i) — for a table, row `perm_e[i mod n]` of epoch `e = i / n`, each epoch's
//! permutation seeded — so any rank can produce any slice of any step and a
//! resumed run sees exactly the samples of an uninterrupted one.

use crate::batch::{Batch, Schema};
use crate::data::Generator;
use crate::table::{Rows, Table};
use kiln_worker::rng::EpochStream;
use tch::Device;

/// A held-out set the trainer evaluates: its metric-key prefix and size.
pub struct EvalSet {
    pub prefix: &'static str,
    pub rows: usize,
}

pub enum Source {
    Generated { data: Generator, eval_samples: usize },
    Table(TableSource),
}

pub struct TableSource {
    table: Table,
    /// The training rows in a seeded order per epoch.
    stream: EpochStream,
}

impl TableSource {
    pub fn new(table: Table, seed: u64) -> TableSource {
        let stream = EpochStream::new(table.train.len(), seed);
        TableSource { table, stream }
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Training rows of stream positions `[start, start + n)`.
    fn train_rows(&self, start: u64, n: usize) -> Vec<usize> {
        self.stream.rows(start, n)
    }
}

impl Source {
    pub fn schema(&self) -> Schema {
        match self {
            Source::Generated { data, .. } => data.schema(),
            Source::Table(s) => {
                let t = &s.table;
                Schema {
                    sparse: t.sparse_names.iter().cloned().zip(t.vocab.iter().map(|&v| v as i64)).collect(),
                    multi_hot: t.multi_hot_names.iter().cloned().zip(t.multi_hot_vocab.iter().map(|&v| v as i64)).collect(),
                    dense: t.dense_names.len() as i64,
                    domains: t.domains as i64,
                    tasks: t.label_names.clone(),
                }
            }
        }
    }

    /// Training samples `[start, start + n)` of the stream.
    pub fn train_batch(&self, start: u64, n: usize, device: Device) -> Batch {
        match self {
            Source::Generated { data, .. } => data.train_batch(start, n, device),
            Source::Table(s) => Batch::from_rows(&s.table.train, &s.train_rows(start, n), device),
        }
    }

    /// The domains of training samples `[start, start + n)`.
    pub fn train_domains(&self, start: u64, n: usize) -> Vec<usize> {
        match self {
            Source::Generated { data, .. } => data.train_domains(start, n),
            Source::Table(s) => s.train_rows(start, n).into_iter().map(|r| s.table.train.domain[r]).collect(),
        }
    }

    /// Validation samples `[start, start + n)` (M3oE's structure search); a
    /// table's validation split is read in order, cyclically.
    pub fn val_batch(&self, start: u64, n: usize, device: Device) -> Batch {
        match self {
            Source::Generated { data, .. } => data.val_batch(start, n, device),
            Source::Table(s) => {
                let len = s.table.val.len().max(1) as u64;
                let idx: Vec<usize> = (start..start + n as u64).map(|i| (i % len) as usize).collect();
                Batch::from_rows(&s.table.val, &idx, device)
            }
        }
    }

    /// What `evaluate` reports on: the generator's held-out stream; a table's
    /// validation split (plain keys, what early stopping reads) and test split
    /// (`test_` keys).
    pub fn eval_sets(&self) -> Vec<EvalSet> {
        match self {
            Source::Generated { eval_samples, .. } => vec![EvalSet { prefix: "", rows: *eval_samples }],
            Source::Table(s) => [("", &s.table.val), ("test_", &s.table.test)].into_iter().filter(|(_, r)| !r.is_empty()).map(|(prefix, r)| EvalSet { prefix, rows: r.len() }).collect(),
        }
    }

    /// Rows `[lo, hi)` of eval set `set` (an index into [`Self::eval_sets`]).
    pub fn eval_batch(&self, set: usize, lo: usize, hi: usize, device: Device) -> Batch {
        match self {
            Source::Generated { data, .. } => data.eval_batch(lo as u64, hi - lo, device),
            Source::Table(s) => {
                let rows: &Rows = match self.eval_sets().get(set).map(|e| e.prefix) {
                    Some("test_") => &s.table.test,
                    _ => &s.table.val,
                };
                Batch::from_rows(rows, &(lo..hi).collect::<Vec<_>>(), device)
            }
        }
    }
}
