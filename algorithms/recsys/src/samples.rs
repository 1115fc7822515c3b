//! Small files in the preset layouts (MovieLens-1M joined, KuaiRand-Pure log
//! plus feature files) whose labels follow a known, learnable signal: for tests
//! of the presets and for trying them without the real data (which users
//! download themselves; neither data set may be redistributed here).
//!
//! The signal: each user and item has a bias and a latent vector; the score is
//! their sum and dot product, plus a per-domain preference for some items
//! (domains really differ), plus noise. MovieLens ratings are the score cut
//! into 1..5; KuaiRand behaviours are a funnel click → long view → like.

use kiln_worker::rng::{splitmix, unit};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

const LATENT: usize = 4;

/// Counter-based draws keyed by (seed, tag, index).
struct Draw(u64);

impl Draw {
    fn uniform(&self, tag: u64, i: u64) -> f64 {
        unit(splitmix(self.0 ^ splitmix(tag.wrapping_mul(0x1_0000_0001) ^ splitmix(i))))
    }

    fn normal(&self, tag: u64, i: u64) -> f64 {
        let (u1, u2) = (self.uniform(tag, 2 * i).max(1e-12), self.uniform(tag, 2 * i + 1));
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    fn vector(&self, tag: u64, i: u64) -> [f64; LATENT] {
        let mut v = [0.0; LATENT];
        for (k, x) in v.iter_mut().enumerate() {
            *x = self.normal(tag, i * LATENT as u64 + k as u64) * 0.8;
        }
        v
    }

    /// Bias + bias + latent affinity + the domain's liking of the item + noise.
    fn score(&self, user: u64, item: u64, domain: u64, row: u64) -> f64 {
        let (a, b) = (self.vector(1, user), self.vector(2, item));
        let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let domain_taste = self.normal(3, domain * 1_000_003 + item) * 0.8;
        0.7 * self.normal(4, user) + 0.7 * self.normal(5, item) + dot + domain_taste + 0.5 * self.normal(6, row)
    }
}

fn write(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

/// Writes `rows` ratings in the joined MovieLens-1M layout (user_id, movie_id,
/// rating, timestamp, title, genres, gender, age, occupation, zip) for `users`
/// users and `movies` movies. The age group (M3oE's domain) changes which
/// movies a user likes.
pub fn movielens_1m(path: &Path, users: u64, movies: u64, rows: u64, seed: u64) -> std::io::Result<()> {
    let r = Draw(splitmix(seed ^ 0x4d4c));
    const AGES: [u32; 7] = [1, 18, 25, 35, 45, 50, 56];
    const GENRES: [&str; 6] = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"];
    let mut text = String::from("user_id,movie_id,rating,timestamp,title,genres,gender,age,occupation,zip\n");
    for i in 0..rows {
        let u = (splitmix(seed ^ i.wrapping_mul(2)) % users) + 1;
        let m = (splitmix(seed ^ (i.wrapping_mul(2) + 1)) % movies) + 1;
        let age = AGES[(splitmix(u ^ 0xa9e) % 7) as usize];
        let domain = match age {
            1 | 18 => 0,
            25 => 1,
            _ => 2,
        };
        let s = r.score(u, m, domain, i);
        let rating = 1 + [-1.0, -0.3, 0.4, 1.1].iter().filter(|&&c| s > c).count();
        let g = (m % 6) as usize;
        let genres = if m % 3 == 0 { format!("{}|{}", GENRES[g], GENRES[(g + 1) % 6]) } else { GENRES[g].to_string() };
        let gender = if u % 2 == 0 { "F" } else { "M" };
        let _ = writeln!(text, "{u},{m},{rating},{},\"Movie {m}, The ({})\",{genres},{gender},{age},{},{:05}", 978_300_000 + i, 1950 + m % 50, u % 21, 10_000 + u % 97);
    }
    write(path, &text)
}

/// Writes a KuaiRand-Pure layout into `dir` — `log_standard_pure.csv` (the
/// log's 19 columns; tab = the domain, 0..4) plus `user_features_pure.csv` and
/// `video_features_basic_pure.csv` (their full headers, quoted range values,
/// comma-separated tags, some empty cells) — and returns the log's path.
pub fn kuairand(dir: &Path, users: u64, videos: u64, rows: u64, seed: u64) -> std::io::Result<PathBuf> {
    let r = Draw(splitmix(seed ^ 0x4b52));
    let mut log = String::from("user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_follow,is_comment,is_forward,is_hate,long_view,play_time_ms,duration_ms,profile_stay_time,comment_stay_time,is_profile_enter,is_rand,tab\n");
    for i in 0..rows {
        let u = splitmix(seed ^ i.wrapping_mul(3)) % users;
        let v = splitmix(seed ^ (i.wrapping_mul(3) + 1)) % videos;
        let tab = splitmix(seed ^ (i.wrapping_mul(3) + 2)) % 5;
        let s = r.score(u, v, tab, i);
        let click = s > 0.0;
        let long_view = click && s + 0.6 * r.normal(7, i) > 0.8;
        let like = long_view && s + 0.6 * r.normal(8, i) > 1.4;
        let t = 1_649_376_000_000 + i * 1_000;
        let _ = writeln!(log, "{u},{v},20220408,1400,{t},{},{},0,0,0,0,{},{},20000,0,0,0,0,{tab}", click as u8, like as u8, long_view as u8, if click { 15_000 } else { 0 });
    }
    let mut uf = String::from("user_id,user_active_degree,is_lowactive_period,is_live_streamer,is_video_author,follow_user_num,follow_user_num_range,fans_user_num,fans_user_num_range,friend_user_num,friend_user_num_range,register_days,register_days_range");
    for k in 0..18 {
        let _ = write!(uf, ",onehot_feat{k}");
    }
    uf.push('\n');
    const DEGREES: [&str; 3] = ["full_active", "high_active", "middle_active"];
    for u in 0..users {
        let _ = write!(uf, "{u},{},0,{},{},10,\"(0,10]\",3,\"[1,10)\",2,\"[1,5)\",300,\"(180,365]\"", DEGREES[(u % 3) as usize], u % 2, (u / 2) % 2);
        for k in 0..18u64 {
            // Some one-hot features are missing for some users, as in the real file.
            if k == 6 && u % 5 == 0 {
                uf.push(',');
            } else {
                let _ = write!(uf, ",{}", (u + k) % 3);
            }
        }
        uf.push('\n');
    }
    let mut vf = String::from("video_id,author_id,video_type,upload_dt,upload_type,visible_status,video_duration,server_width,server_height,music_id,music_type,tag\n");
    for v in 0..videos {
        let duration = if v % 7 == 3 { String::new() } else { format!("{}.0", 5_000 + v * 997 % 60_000) };
        let kind = if v % 4 == 0 { "AD" } else { "NORMAL" };
        let _ = writeln!(vf, "{v},{},{kind},2022-04-10,ShortImport,0.0,{duration},720.0,1280.0,{},9.0,\"{},{}\"", 100 + v, 900 + v, v % 4, 10 + v % 3);
    }
    write(&dir.join("user_features_pure.csv"), &uf)?;
    write(&dir.join("video_features_basic_pure.csv"), &vf)?;
    let path = dir.join("log_standard_pure.csv");
    write(&path, &log)?;
    Ok(path)
}
