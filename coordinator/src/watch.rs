//! Watching an attempt through its ranks' heartbeats: progress, hangs and
//! stragglers.
//!
//! Every rank reports its step, how many collectives it has entered and how long
//! its last step computed (time in collectives excluded — in synchronous data
//! parallelism every rank's wall time per step is the slowest rank's). A hang is
//! no new step and no new collective anywhere for the hang timeout; the ranks to
//! blame are those behind the others in collectives entered (their peers wait in
//! a collective they never reached) or silent.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// One rank's report, as posted to `/v1/jobs/{id}/heartbeat`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub attempt: u32,
    pub rank: usize,
    pub world: usize,
    pub step: u64,
    pub collectives: u64,
    #[serde(default)]
    pub compute_s: f64,
    /// Rank 0's latest train metrics (loss, samples/s, …).
    #[serde(default)]
    pub metrics: Option<serde_json::Value>,
}

#[derive(Debug, Clone)]
struct Seen {
    step: u64,
    collectives: u64,
    compute_s: f64,
    at: Instant,
}

/// What the coordinator knows of the attempt that is running now.
#[derive(Debug, Clone)]
pub struct AttemptWatch {
    pub attempt: u32,
    world: usize,
    ranks: BTreeMap<usize, Seen>,
    /// When the step or collective count last moved (None: no report yet).
    last_progress: Option<Instant>,
    progress_mark: (u64, u64),
    last_report: Option<Instant>,
    stragglers: BTreeSet<usize>,
}

/// A rank flagged as slow.
#[derive(Debug, Clone, PartialEq)]
pub struct Straggler {
    pub rank: usize,
    pub compute_s: f64,
    pub median_s: f64,
}

impl AttemptWatch {
    pub fn new(attempt: u32) -> AttemptWatch {
        AttemptWatch {
            attempt,
            world: 0,
            ranks: BTreeMap::new(),
            last_progress: None,
            progress_mark: (0, 0),
            last_report: None,
            stragglers: BTreeSet::new(),
        }
    }

    pub fn report(&mut self, hb: &Heartbeat, now: Instant) {
        self.world = self.world.max(hb.world);
        self.ranks.insert(hb.rank, Seen { step: hb.step, collectives: hb.collectives, compute_s: hb.compute_s, at: now });
        let mark = (
            self.ranks.values().map(|s| s.step).max().unwrap_or(0),
            self.ranks.values().map(|s| s.collectives).sum(),
        );
        if self.last_progress.is_none() || mark != self.progress_mark {
            self.progress_mark = mark;
            self.last_progress = Some(now);
        }
        self.last_report = Some(now);
    }

    /// The highest step any rank finished.
    pub fn step(&self) -> u64 {
        self.progress_mark.0
    }

    /// Seconds since the last report of any rank.
    pub fn heartbeat_age(&self, now: Instant) -> Option<f64> {
        self.last_report.map(|t| now.saturating_duration_since(t).as_secs_f64())
    }

    /// The ranks to blame when nothing moved for `timeout`; `None` while the
    /// attempt progresses (or before its first report: start-up is not a hang).
    pub fn hang(&self, now: Instant, timeout: Duration) -> Option<Vec<usize>> {
        let since = self.last_progress?;
        if now.saturating_duration_since(since) < timeout {
            return None;
        }
        let ahead = self.ranks.values().map(|s| s.collectives).max().unwrap_or(0);
        let mut stuck: Vec<usize> = (0..self.world)
            .filter(|r| match self.ranks.get(r) {
                None => true,
                Some(s) => s.collectives < ahead || now.saturating_duration_since(s.at) >= timeout,
            })
            .collect();
        if stuck.is_empty() {
            // Everyone reached the same collective and it never finished: all are in it.
            stuck = (0..self.world).collect();
        }
        Some(stuck)
    }

    /// Ranks newly found computing slower than `factor` × the median of their
    /// peers (the other ranks; with two ranks, the other one). Each is reported
    /// once per attempt, and only once every rank has reported.
    pub fn new_stragglers(&mut self, factor: f64) -> Vec<Straggler> {
        if self.ranks.len() < 2 || self.ranks.len() < self.world {
            return vec![];
        }
        let mut out = Vec::new();
        let all: Vec<(usize, f64)> = self.ranks.iter().map(|(r, s)| (*r, s.compute_s)).collect();
        for &(rank, mine) in &all {
            let mut peers: Vec<f64> = all.iter().filter(|(r, _)| *r != rank).map(|(_, t)| *t).collect();
            peers.sort_by(f64::total_cmp);
            let n = peers.len();
            let median = if n % 2 == 1 { peers[n / 2] } else { (peers[n / 2 - 1] + peers[n / 2]) / 2.0 };
            if median > 0.0 && mine > factor * median && self.stragglers.insert(rank) {
                out.push(Straggler { rank, compute_s: mine, median_s: median });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(rank: usize, step: u64, collectives: u64, compute_s: f64) -> Heartbeat {
        Heartbeat { attempt: 1, rank, world: 3, step, collectives, compute_s, metrics: None }
    }

    #[test]
    fn progress_is_not_a_hang_and_startup_is_not_either() {
        let t0 = Instant::now();
        let mut w = AttemptWatch::new(1);
        assert_eq!(w.hang(t0 + Duration::from_secs(1000), Duration::from_secs(10)), None);
        for r in 0..3 {
            w.report(&hb(r, 1, 5, 0.1), t0);
        }
        for r in 0..3 {
            w.report(&hb(r, 2, 9, 0.1), t0 + Duration::from_secs(8));
        }
        assert_eq!(w.hang(t0 + Duration::from_secs(15), Duration::from_secs(10)), None);
        assert_eq!(w.step(), 2);
    }

    #[test]
    fn the_rank_that_never_reached_the_collective_is_named() {
        let t0 = Instant::now();
        let mut w = AttemptWatch::new(1);
        // Ranks 0 and 2 entered collective 7 and wait in it; rank 1 is still at 6.
        for s in 0..30 {
            let now = t0 + Duration::from_secs(s);
            w.report(&hb(0, 3, 7, 0.1), now);
            w.report(&hb(1, 3, 6, 0.1), now);
            w.report(&hb(2, 3, 7, 0.1), now);
        }
        assert_eq!(w.hang(t0 + Duration::from_secs(5), Duration::from_secs(10)), None);
        assert_eq!(w.hang(t0 + Duration::from_secs(30), Duration::from_secs(10)), Some(vec![1]));
    }

    #[test]
    fn silent_ranks_are_stuck_too_and_a_common_deadlock_names_everyone() {
        let t0 = Instant::now();
        let mut w = AttemptWatch::new(1);
        w.report(&hb(0, 1, 4, 0.1), t0);
        w.report(&hb(1, 1, 4, 0.1), t0);
        // Rank 2 never reported.
        assert_eq!(w.hang(t0 + Duration::from_secs(11), Duration::from_secs(10)), Some(vec![0, 1, 2]));
        let mut all = AttemptWatch::new(1);
        for r in 0..3 {
            all.report(&hb(r, 1, 4, 0.1), t0);
        }
        for r in 0..3 {
            all.report(&hb(r, 1, 4, 0.1), t0 + Duration::from_secs(9));
        }
        assert_eq!(all.hang(t0 + Duration::from_secs(12), Duration::from_secs(10)), Some(vec![0, 1, 2]));
    }

    #[test]
    fn stragglers_are_flagged_once_against_the_median() {
        let t0 = Instant::now();
        let mut w = AttemptWatch::new(1);
        w.report(&hb(0, 1, 1, 0.10), t0);
        w.report(&hb(1, 1, 1, 0.11), t0);
        assert!(w.new_stragglers(2.0).is_empty(), "not everyone has reported");
        w.report(&hb(2, 1, 1, 0.50), t0);
        let s = w.new_stragglers(2.0);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].rank, 2);
        assert!((s[0].median_s - 0.105).abs() < 1e-12, "{}", s[0].median_s);
        // Two ranks: each is compared with the other.
        let mut two = AttemptWatch::new(1);
        let h = |rank, c| Heartbeat { attempt: 1, rank, world: 2, step: 1, collectives: 1, compute_s: c, metrics: None };
        two.report(&h(0, 0.01), t0);
        two.report(&h(1, 0.05), t0);
        assert_eq!(two.new_stragglers(1.5).iter().map(|s| s.rank).collect::<Vec<_>>(), vec![1]);
        assert!(w.new_stragglers(2.0).is_empty(), "reported once");
    }
}
