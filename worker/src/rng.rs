//! Counter-based random numbers for algorithm crates: SplitMix64, so every
//! draw is a pure function of a seed and a position (sample, step, row, …),
//! whatever ran before it — the property exact resume and N-rank equivalence
//! rest on.

/// One SplitMix64 step: a bijective 64-bit mix.
pub fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform number in [0, 1) from 64 mixed bits (their top 53).
pub fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// 64-bit FNV-1a of a byte string: a stable hash (the same on every run and
/// platform) for keying draws or names by text.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// 0..n in the order of a Fisher–Yates shuffle driven by SplitMix64 of
/// (seed, epoch): a fresh, reproducible order for each pass over a data set.
pub fn shuffled(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut state = splitmix(splitmix(seed) ^ epoch);
    for i in (1..n).rev() {
        state = splitmix(state);
        idx.swap(i, (state % (i as u64 + 1)) as usize);
    }
    idx
}

/// An endless stream over `n` rows in epochs, each epoch in its own
/// [`shuffled`] order: position i is row `order_e[i mod n]` of epoch
/// `e = i / n`. Any rank can read any slice of any step, so N ranks and a
/// resumed run see one uninterrupted run's rows. Keeps the last two epochs'
/// orders (a step may straddle two).
pub struct EpochStream {
    n: usize,
    seed: u64,
    orders: std::sync::Mutex<Vec<(u64, Vec<usize>)>>,
}

impl EpochStream {
    /// `n` must be at least 1.
    pub fn new(n: usize, seed: u64) -> EpochStream {
        EpochStream { n: n.max(1), seed, orders: std::sync::Mutex::new(Vec::new()) }
    }

    /// Rows at stream positions `[start, start + count)`.
    pub fn rows(&self, start: u64, count: usize) -> Vec<usize> {
        let len = self.n as u64;
        let mut orders = self.orders.lock().unwrap_or_else(|e| e.into_inner());
        (start..start + count as u64)
            .map(|i| {
                let epoch = i / len;
                let k = match orders.iter().position(|(e, _)| *e == epoch) {
                    Some(k) => k,
                    None => {
                        if orders.len() == 2 {
                            orders.remove(0);
                        }
                        orders.push((epoch, shuffled(self.n, self.seed, epoch)));
                        orders.len() - 1
                    }
                };
                orders[k].1[(i % len) as usize]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn splitmix_matches_the_reference_sequence_and_unit_is_in_range() {
        // SplitMix64 seeded with 0: the first outputs of the reference generator.
        assert_eq!(splitmix(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix(0x9E37_79B9_7F4A_7C15), 0x6E78_9E6A_A1B9_65F4);
        assert!((0..1000).map(|i| unit(splitmix(i))).all(|u| (0.0..1.0).contains(&u)));
    }
}
