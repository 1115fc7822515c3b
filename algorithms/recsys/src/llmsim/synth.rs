//! A small world for trying the user simulator without Yelp: items of a few
//! categories whose qualities on shared aspects (staff, food, prices, …)
//! are known, reviews that praise or criticise those aspects, and users
//! whose ratings follow their own aspect weights and favourite categories.
//! Written as `interactions.csv` (user_id, item_id, rating, timestamp) and
//! `reviews.jsonl` (item_id, title, category, text), the layouts the
//! simulator's readers take.

use kiln_worker::rng::{splitmix, unit};
use std::path::Path;

const CATEGORIES: [&str; 6] = ["pizza", "coffee", "sushi", "bar", "bakery", "burger"];
/// (subject, praise, complaint); the adjectives are in the keyword analyser's lexicon.
const ASPECTS: [(&str, &str, &str); 8] = [
    ("staff was", "friendly", "rude"),
    ("food was", "delicious", "bland"),
    ("prices were", "great", "overpriced"),
    ("service was", "fast", "slow"),
    ("room was", "cozy", "noisy"),
    ("portions were", "perfect", "small"),
    ("tables were", "clean", "dirty"),
    ("drinks were", "fresh", "stale"),
];

pub struct World {
    pub users: usize,
    pub items: usize,
    pub seed: u64,
}

fn draw(seed: u64, a: u64, b: u64, c: u64) -> f64 {
    unit(splitmix(seed ^ splitmix(a << 40 ^ b << 20 ^ c)))
}

/// Writes the two files into `dir`; returns (interactions, reviews) written.
pub fn write(w: &World, dir: &Path) -> std::io::Result<(usize, usize)> {
    std::fs::create_dir_all(dir)?;
    let s = w.seed;
    let category: Vec<usize> = (0..w.items).map(|i| (draw(s, 1, i as u64, 0) * CATEGORIES.len() as f64) as usize).collect();
    // Each item is good or bad on each aspect.
    let quality: Vec<[f64; 8]> = (0..w.items).map(|i| std::array::from_fn(|a| if draw(s, 2, i as u64, a as u64) < 0.55 { 1.0 } else { -1.0 })).collect();
    let popularity: Vec<f64> = (0..w.items).map(|i| 1.0 / (1.0 + (draw(s, 3, i as u64, 0) * w.items as f64).floor()).powf(0.6)).collect();
    let mut reviews = String::new();
    let mut n_reviews = 0;
    for i in 0..w.items {
        let n = 3 + (draw(s, 4, i as u64, 0) * 5.0) as usize;
        for r in 0..n {
            let mut sentences = Vec::new();
            for k in 0..3 {
                let a = (draw(s, 5, (i * 64 + r) as u64, k) * ASPECTS.len() as f64) as usize;
                let (noun, good, bad) = ASPECTS[a];
                // Reviewers mostly agree with the item's quality.
                let positive = (quality[i][a] > 0.0) != (draw(s, 6, (i * 64 + r) as u64, k) < 0.15);
                sentences.push(format!("The {noun} {}.", if positive { good } else { bad }));
            }
            sentences.push(format!("A {} place.", CATEGORIES[category[i]]));
            reviews += &format!("{}\n", serde_json::json!({ "item_id": format!("item{i}"), "title": format!("{} {i}", CATEGORIES[category[i]]), "category": CATEGORIES[category[i]], "text": sentences.join(" ") }));
            n_reviews += 1;
        }
    }
    let mut log = String::from("user_id,item_id,rating,timestamp\n");
    let mut n_log = 0;
    for u in 0..w.users {
        let fav = (draw(s, 7, u as u64, 0) * CATEGORIES.len() as f64) as usize;
        let weights: [f64; 8] = std::array::from_fn(|a| if draw(s, 8, u as u64, a as u64) < 0.4 { 1.0 + draw(s, 9, u as u64, a as u64) } else { 0.0 });
        let visits = 6 + (draw(s, 10, u as u64, 0) * 15.0) as usize;
        let weight: Vec<f64> = (0..w.items).map(|i| popularity[i] * if category[i] == fav { 4.0 } else { 1.0 }).collect();
        let total: f64 = weight.iter().sum();
        let mut t = 1_600_000_000u64 + (draw(s, 11, u as u64, 0) * 1e6) as u64;
        for v in 0..visits {
            let mut x = draw(s, 12, u as u64, v as u64) * total;
            let i = weight.iter().position(|&wt| {
                x -= wt;
                x <= 0.0
            });
            let i = i.unwrap_or(w.items - 1);
            let taste: f64 = weights.iter().zip(&quality[i]).map(|(a, b)| a * b).sum();
            let noise = (draw(s, 13, u as u64, v as u64) - 0.5) * 1.5;
            let rating = (3.0 + 0.8 * taste + if category[i] == fav { 0.7 } else { -0.3 } + noise).round().clamp(1.0, 5.0) as u8;
            t += 3600 + (draw(s, 14, u as u64, v as u64) * 86400.0) as u64;
            log += &format!("user{u},item{i},{rating},{t}\n");
            n_log += 1;
        }
    }
    std::fs::write(dir.join("interactions.csv"), log)?;
    std::fs::write(dir.join("reviews.jsonl"), reviews)?;
    Ok((n_log, n_reviews))
}
