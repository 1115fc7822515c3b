//! What the stream has shown of each id of a field, and which ids hold a
//! row of the field's exclusive embedding table.
//!
//! The table's rows are allocated up front (the memory budget, or every id
//! for the full-table baseline) so rows can change hands without changing
//! the optimizer's parameter list; what counts as memory is the rows in use.

use tch::{Device, Kind, Tensor};

/// Features of an id's state that the identity agent and its critic read
/// (beside a learned embedding of the id's side feature):
/// ln(1 + interactions)/4, ln(1 + chunks since first seen)/3,
/// ln(1 + chunks since last seen)/3, has been seen. Whether the id holds a
/// row is left out on purpose: with it, the critic learns that rows pay
/// off for their owners (whose rows have trained) and never for a
/// candidate, and the table never changes hands.
pub const STATE: usize = 4;

/// One field's ids (user or item).
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// Per id: its row, or −1.
    pub slot: Vec<i64>,
    /// Per row: its id, or −1.
    pub owner: Vec<i64>,
    /// Per id: interactions trained on so far.
    pub count: Vec<i64>,
    /// Per id: the chunks it was first and last trained on (−1: never).
    pub first: Vec<i64>,
    pub last: Vec<i64>,
}

impl Field {
    pub fn new(ids: usize, rows: usize) -> Field {
        Field { slot: vec![-1; ids], owner: vec![-1; rows], count: vec![0; ids], first: vec![-1; ids], last: vec![-1; ids] }
    }

    pub fn rows(&self) -> usize {
        self.owner.len()
    }

    pub fn rows_in_use(&self) -> usize {
        self.owner.iter().filter(|&&o| o >= 0).count()
    }

    pub fn free_row(&self) -> Option<usize> {
        self.owner.iter().position(|&o| o < 0)
    }

    pub fn assign(&mut self, id: usize, row: usize) {
        if let Ok(old) = usize::try_from(self.owner[row]) {
            self.slot[old] = -1;
        }
        self.owner[row] = id as i64;
        self.slot[id] = row as i64;
    }

    pub fn evict(&mut self, id: usize) {
        if let Ok(row) = usize::try_from(self.slot[id]) {
            self.owner[row] = -1;
            self.slot[id] = -1;
        }
    }

    /// Counts the interactions of a chunk that has been trained on.
    pub fn observe(&mut self, ids: &[u32], chunk: usize) {
        for &id in ids {
            let id = id as usize;
            self.count[id] += 1;
            if self.first[id] < 0 {
                self.first[id] = chunk as i64;
            }
            self.last[id] = chunk as i64;
        }
    }

    /// `[ids, STATE]` state features as of the start of `chunk`.
    pub fn state(&self, ids: &[u32], chunk: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(ids.len() * STATE);
        for &id in ids {
            let id = id as usize;
            let seen = self.first[id] >= 0;
            let since = |c: i64| if seen { (chunk as i64 - c).max(0) as f32 } else { 0.0 };
            out.extend([(1.0 + self.count[id] as f32).ln() / 4.0, (1.0 + since(self.first[id])).ln() / 3.0, (1.0 + since(self.last[id])).ln() / 3.0, if seen { 1.0 } else { 0.0 }]);
        }
        out
    }

    /// The field as tensors, for checkpoints.
    pub fn save(&self, prefix: &str) -> Vec<(String, Tensor)> {
        [("slot", &self.slot), ("count", &self.count), ("first", &self.first), ("last", &self.last)].into_iter().map(|(k, v)| (format!("{prefix}.{k}"), Tensor::from_slice(v))).collect()
    }

    pub fn load(&mut self, prefix: &str, state: &[(String, Tensor)]) -> Result<(), String> {
        let get = |k: &str| -> Result<Vec<i64>, String> {
            let name = format!("{prefix}.{k}");
            let t = state.iter().find(|(n, _)| *n == name).ok_or_else(|| format!("the checkpoint lacks {name}"))?;
            Vec::<i64>::try_from(t.1.to_device(Device::Cpu).to_kind(Kind::Int64)).map_err(|e| e.to_string())
        };
        let (slot, count, first, last) = (get("slot")?, get("count")?, get("first")?, get("last")?);
        if slot.len() != self.slot.len() {
            return Err(format!("{prefix}: the checkpoint has {} ids, the stream {}", slot.len(), self.slot.len()));
        }
        let mut owner = vec![-1i64; self.owner.len()];
        for (id, &row) in slot.iter().enumerate() {
            if row >= 0 {
                *owner.get_mut(row as usize).ok_or_else(|| format!("{prefix}: row {row} is beyond the table's {}", self.owner.len()))? = id as i64;
            }
        }
        *self = Field { slot, owner, count, first, last };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_change_hands_and_the_state_round_trips() {
        let mut f = Field::new(4, 2);
        f.observe(&[0, 0, 2], 0);
        f.assign(0, 0);
        f.assign(2, 1);
        assert_eq!((f.rows_in_use(), f.free_row()), (2, None));
        f.assign(3, 1);
        assert_eq!((f.slot.clone(), f.owner.clone()), (vec![0, -1, -1, 1], vec![0, 3]));
        f.evict(0);
        assert_eq!((f.rows_in_use(), f.free_row()), (1, Some(0)));
        let s = f.state(&[0, 1], 2);
        assert!((s[0] - 3f32.ln() / 4.0).abs() < 1e-6 && (s[2] - 3f32.ln() / 3.0).abs() < 1e-6 && s[3] == 1.0 && s[7] == 0.0);
        let mut g = Field::new(4, 2);
        g.load("user", &f.save("user")).unwrap();
        assert_eq!(g, f);
    }
}
