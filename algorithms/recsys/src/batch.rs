//! What the models read: a data source's [`Schema`] (its fields, domains and
//! tasks) and [`Batch`]es of samples, whether they come from the generator
//! ([`crate::data`]) or from a user's table ([`crate::table`]).

use crate::table::Rows;
use tch::{Device, Kind, Tensor};

/// The fields, domains and tasks of a data source.
#[derive(Debug, Clone, PartialEq)]
pub struct Schema {
    /// Categorical fields: (name, vocabulary size including the unknown id 0).
    pub sparse: Vec<(String, i64)>,
    /// Multi-hot fields: (name, vocabulary size).
    pub multi_hot: Vec<(String, i64)>,
    /// Dense features.
    pub dense: i64,
    pub domains: i64,
    /// Task names, in label order (metric keys: `auc_<name>`).
    pub tasks: Vec<String>,
}

/// One multi-hot field of a batch, as `embedding_bag` takes it: every row's ids
/// concatenated, and where each row's start.
pub struct Bag {
    pub ids: Tensor,
    pub offsets: Tensor,
}

/// A batch on the CPU or a device.
pub struct Batch {
    /// `[n, sparse fields]` ids.
    pub sparse: Tensor,
    pub multi_hot: Vec<Bag>,
    /// `[n, dense]`.
    pub dense: Tensor,
    /// `[n]`.
    pub domain: Tensor,
    /// `[n, tasks]` in {0, 1}.
    pub labels: Tensor,
    /// `[n, tasks]` true probabilities, where the source knows them (the generator).
    pub truth: Option<Tensor>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.domain.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows `idx` of a table split.
    pub fn from_rows(rows: &Rows, idx: &[usize], device: Device) -> Batch {
        let n = idx.len() as i64;
        let (f, d, t) = (rows.sparse.len() as i64, rows.dense.len() as i64, rows.labels.len() as i64);
        let mut sparse = Vec::with_capacity(idx.len() * f as usize);
        let mut dense = Vec::with_capacity(idx.len() * d as usize);
        let mut labels = Vec::with_capacity(idx.len() * t as usize);
        for &r in idx {
            sparse.extend(rows.sparse.iter().map(|c| c[r]));
            dense.extend(rows.dense.iter().map(|c| c[r]));
            labels.extend(rows.labels.iter().map(|c| c[r]));
        }
        let multi_hot = rows
            .multi_hot
            .iter()
            .map(|bags| {
                let mut ids = Vec::new();
                let mut offsets = Vec::with_capacity(idx.len());
                for &r in idx {
                    offsets.push(ids.len() as i64);
                    ids.extend_from_slice(bags.row(r));
                }
                Bag { ids: Tensor::from_slice(&ids).to_device(device), offsets: Tensor::from_slice(&offsets).to_device(device) }
            })
            .collect();
        let domain: Vec<i64> = idx.iter().map(|&r| rows.domain[r] as i64).collect();
        Batch {
            sparse: Tensor::from_slice(&sparse).reshape([n, f]).to_device(device),
            multi_hot,
            dense: Tensor::from_slice(&dense).reshape([n, d]).to_kind(Kind::Float).to_device(device),
            domain: Tensor::from_slice(&domain).to_device(device),
            labels: Tensor::from_slice(&labels).reshape([n, t]).to_kind(Kind::Float).to_device(device),
            truth: None,
        }
    }
}
