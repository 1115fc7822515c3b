//! Synthetic interaction logs from a known user model, written in the
//! KuaiRand-Pure layout (log, user features, video features), so tests can
//! check that the simulator learns what generated the data.
//!
//! The ground truth ([`Truth`]): users and items have latent vectors; an item
//! has a category (its `upload_type`) and tags. A user's affinity to an item is
//! their dot product plus the user's taste for the category; having just seen
//! the same category lowers interest (fatigue over the last five items, so the
//! history matters). The seven behaviours form a funnel: a click, then a long
//! view and, after it, a like; comment, forward and follow need a click; hate
//! comes from low affinity. Users return after a gap whose next-day chance
//! grows with how much they clicked in their last session (a retention
//! signal), and a session ends early when the user is bored (several
//! non-clicks in a row).

use kiln_worker::rng::{splitmix, unit};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

const LATENT: usize = 4;
const CATEGORIES: u64 = 6;
const DEGREES: [&str; 3] = ["full_active", "high_active", "middle_active"];

/// The generator's user model.
#[derive(Debug, Clone)]
pub struct Truth {
    seed: u64,
    pub users: u64,
    pub items: u64,
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl Truth {
    pub fn new(seed: u64, users: u64, items: u64) -> Truth {
        Truth { seed: splitmix(seed ^ 0x6b75_6169), users, items }
    }

    fn uniform(&self, tag: u64, a: u64, b: u64) -> f64 {
        unit(splitmix(self.seed ^ splitmix(tag ^ splitmix(a.wrapping_mul(0x9E37) ^ splitmix(b)))))
    }

    fn normal(&self, tag: u64, a: u64, b: u64) -> f64 {
        let u1 = self.uniform(tag, a, 2 * b).max(1e-12);
        let u2 = self.uniform(tag, a, 2 * b + 1);
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    fn vector(&self, tag: u64, i: u64) -> [f64; LATENT] {
        let mut v = [0.0; LATENT];
        for (k, x) in v.iter_mut().enumerate() {
            *x = self.normal(tag, i, k as u64) / (LATENT as f64).sqrt() * 1.5;
        }
        v
    }

    pub fn category(&self, item: u64) -> u64 {
        splitmix(self.seed ^ item.wrapping_mul(31)) % CATEGORIES
    }

    pub fn degree(&self, user: u64) -> usize {
        (splitmix(self.seed ^ user.wrapping_mul(17)) % 3) as usize
    }

    /// How much `user` likes `item` before fatigue.
    pub fn affinity(&self, user: u64, item: u64) -> f64 {
        let (a, b) = (self.vector(1, user), self.vector(2, item));
        let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        dot + 0.8 * self.normal(3, user, self.category(item)) + 0.4 * self.normal(4, item, 0)
    }

    /// The marginal probability of each behaviour (in [`crate::BEHAVIOURS`] order)
    /// when `user` is shown `item` right after the items in `recent` (the
    /// last ones first or last: only their categories count).
    pub fn probs(&self, user: u64, item: u64, recent: &[u64]) -> [f64; 7] {
        let c = self.category(item);
        let last: Vec<&u64> = recent.iter().rev().take(5).collect();
        let fatigue = if last.is_empty() { 0.0 } else { last.iter().filter(|&&&r| self.category(r) == c).count() as f64 / 5.0 };
        let a = self.affinity(user, item);
        let click = sigmoid(1.4 * a - 0.4 - 2.0 * fatigue + 0.3 * (self.degree(user) == 0) as u8 as f64);
        let long_view = click * sigmoid(1.2 * a - 0.3);
        let like = long_view * sigmoid(1.5 * a - 1.2);
        let comment = click * sigmoid(a - 2.0);
        let forward = click * sigmoid(a - 2.3);
        let follow = click * sigmoid(a - 2.6);
        let hate = sigmoid(-2.0 * a - 4.0);
        [click, long_view, like, comment, forward, follow, hate]
    }

    /// Draws the behaviours for one impression (the funnel's conditionals
    /// from `draw(k)`, uniform numbers in [0, 1)).
    fn sample(&self, p: &[f64; 7], draw: impl Fn(u64) -> f64) -> [u8; 7] {
        let cond = |num: f64, den: f64| if den > 0.0 { (num / den).min(1.0) } else { 0.0 };
        let click = draw(0) < p[0];
        let long_view = click && draw(1) < cond(p[1], p[0]);
        let like = long_view && draw(2) < cond(p[2], p[1]);
        let comment = click && draw(3) < cond(p[3], p[0]);
        let forward = click && draw(4) < cond(p[4], p[0]);
        let follow = click && draw(5) < cond(p[5], p[0]);
        let hate = draw(6) < p[6];
        [click, long_view, like, comment, forward, follow, hate].map(|b| b as u8)
    }
}

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    pub users: u64,
    pub items: u64,
    pub days: u64,
    /// Most impressions per session (a session ends earlier when the user is bored).
    pub session_max: u64,
    pub seed: u64,
    /// The chance of returning the next day is `return_base +
    /// return_effect × the session's click rate` (at most 0.95); each later
    /// day the same chance again.
    pub return_base: f64,
    pub return_effect: f64,
}

impl Default for Shape {
    fn default() -> Self {
        Shape { users: 300, items: 200, days: 20, session_max: 20, seed: 1, return_base: 0.35, return_effect: 0.5 }
    }
}

/// `YYYYMMDD` of day `d` counted from 2022-04-08 (KuaiRand's first day).
fn date(d: u64) -> u64 {
    let (mut y, mut m, mut day) = (2022u64, 4u64, 8 + d);
    loop {
        let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
        let len = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][(m - 1) as usize];
        if day <= len {
            return y * 10_000 + m * 100 + day;
        }
        day -= len;
        (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    }
}

/// Writes `log_standard_pure.csv`, `user_features_pure.csv` and
/// `video_features_basic_pure.csv` into `dir`; returns the log's path and the
/// ground truth.
pub fn write(dir: &Path, shape: Shape) -> std::io::Result<(PathBuf, Truth)> {
    let truth = Truth::new(shape.seed, shape.users, shape.items);
    let mut log = String::from("user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_follow,is_comment,is_forward,is_hate,long_view,play_time_ms,duration_ms,profile_stay_time,comment_stay_time,is_profile_enter,is_rand,tab\n");
    for u in 0..shape.users {
        let mut day = (splitmix(truth.seed ^ u) % 3) as u64;
        let mut seen: Vec<u64> = Vec::new();
        let mut session = 0u64;
        while day < shape.days {
            let mut clicks = 0usize;
            let mut misses = 0usize;
            let mut shown = 0u64;
            for k in 0..shape.session_max {
                // The logging policy: popular items more often (a skewed draw).
                let x = truth.uniform(10, u, session * 1000 + k);
                let item = ((x * x) * shape.items as f64) as u64 % shape.items;
                let p = truth.probs(u, item, &seen);
                let r = truth.sample(&p, |b| truth.uniform(11 + b, u, session * 1000 + k));
                let t = 1_649_376_000_000 + day * 86_400_000 + 36_000_000 + (u % 100) * 60_000 + k * 20_000;
                let (c, lv, li, co, fw, fo, ha) = (r[0], r[1], r[2], r[3], r[4], r[5], r[6]);
                let _ = writeln!(log, "{u},{item},{},{:02}00,{t},{c},{li},{fo},{co},{fw},{ha},{lv},{},30000,0,0,0,0,{}", date(day), 10 + k / 3, if c == 1 { 12_000 } else { 0 }, u % 4);
                seen.push(item);
                shown += 1;
                clicks += c as usize;
                misses = if c == 1 { 0 } else { misses + 1 };
                if misses >= 3 && k >= 2 {
                    break;
                }
            }
            // Return after a gap: a satisfied user comes back sooner.
            let satisfaction = clicks as f64 / shown.max(1) as f64;
            let next_day = (shape.return_base + shape.return_effect * satisfaction).clamp(0.05, 0.95);
            let mut gap = 1;
            while gap < 10 && truth.uniform(20, u, session * 16 + gap) >= next_day {
                gap += 1;
            }
            day += gap;
            session += 1;
        }
    }
    let mut uf = String::from("user_id,user_active_degree,is_lowactive_period,is_live_streamer,is_video_author,follow_user_num,follow_user_num_range,fans_user_num,fans_user_num_range,friend_user_num,friend_user_num_range,register_days,register_days_range");
    for k in 0..18 {
        let _ = write!(uf, ",onehot_feat{k}");
    }
    uf.push('\n');
    for u in 0..shape.users {
        let _ = write!(uf, "{u},{},0,{},{},10,\"(0,10]\",3,\"[1,10)\",2,\"[1,5)\",300,\"(180,365]\"", DEGREES[truth.degree(u)], u % 2, (u / 2) % 2);
        for k in 0..18u64 {
            let _ = write!(uf, ",{}", splitmix(u ^ (k << 32)) % 3);
        }
        uf.push('\n');
    }
    let mut vf = String::from("video_id,author_id,video_type,upload_dt,upload_type,visible_status,video_duration,server_width,server_height,music_id,music_type,tag\n");
    for v in 0..shape.items {
        let c = truth.category(v);
        let _ = writeln!(vf, "{v},{},NORMAL,2022-04-01,Type{c},0.0,30000.0,720.0,1280.0,{},{}.0,\"{c},{}\"", 100 + v, 900 + v, v % 3, 10 + v % 4);
    }
    std::fs::write(dir.join("user_features_pure.csv"), uf)?;
    std::fs::write(dir.join("video_features_basic_pure.csv"), vf)?;
    let path = dir.join("log_standard_pure.csv");
    std::fs::write(&path, log)?;
    Ok((path, truth))
}
