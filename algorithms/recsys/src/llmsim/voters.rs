//! The simulator's three voters and their ensemble, as the paper's code
//! decides engagement for one (user, candidate item) pair from the user's
//! history of (item, liked) pairs.
//!
//! - keyword matching: the candidate's pros keywords against those of the
//!   items the user liked, its cons keywords against those of the items the
//!   user disliked — only history items of the candidate's category when
//!   there are any; a vote when the pros overlap exceeds the cons overlap;
//! - embedding similarity: a vote when the candidate's pros are closer (max
//!   cosine) to the liked items' pros than its cons are to the disliked
//!   items' cons;
//! - the statistical model (SASRec): a vote when p ≥ ½;
//! - the ensemble: engaged when at least two of the three vote so; a user
//!   without history gets a random bit.

use super::analysis::ItemAnalysis;
use std::collections::BTreeSet;

/// One history entry: the item's analysis and whether the user liked it.
pub struct Seen<'a> {
    pub item: &'a ItemAnalysis,
    pub liked: bool,
}

/// (pros overlap, cons overlap) and the vote of keyword matching.
pub fn keyword_vote(candidate: &ItemAnalysis, history: &[Seen]) -> (usize, usize, bool) {
    let same: Vec<&Seen> = history.iter().filter(|s| s.item.category == candidate.category).collect();
    let used: Vec<&Seen> = if same.is_empty() { history.iter().collect() } else { same };
    let liked: BTreeSet<&str> = used.iter().filter(|s| s.liked).flat_map(|s| s.item.pros_keywords.iter().map(String::as_str)).collect();
    let disliked: BTreeSet<&str> = used.iter().filter(|s| !s.liked).flat_map(|s| s.item.cons_keywords.iter().map(String::as_str)).collect();
    let pros: BTreeSet<&str> = candidate.pros_keywords.iter().map(String::as_str).collect();
    let cons: BTreeSet<&str> = candidate.cons_keywords.iter().map(String::as_str).collect();
    let (p, c) = (pros.intersection(&liked).count(), cons.intersection(&disliked).count());
    (p, c, p > c)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

/// The vote of embedding similarity: max cosine of the candidate's pros
/// embedding to the liked items' pros embeddings against max cosine of its
/// cons embedding to the disliked items' cons embeddings (−∞ for an empty
/// side). Each history entry is (pros embedding, cons embedding, liked).
pub fn embedding_vote(candidate_pros: &[f32], candidate_cons: &[f32], history: &[(&[f32], &[f32], bool)]) -> (f32, f32, bool) {
    let best = |liked: bool| history.iter().filter(|h| h.2 == liked).map(|h| if liked { cosine(candidate_pros, h.0) } else { cosine(candidate_cons, h.1) }).fold(f32::NEG_INFINITY, f32::max);
    let (pos, neg) = (best(true), best(false));
    (pos, neg, pos > neg)
}

/// The statistical model's vote.
pub fn model_vote(p: f64) -> bool {
    p >= 0.5
}

/// The ensemble: at least two of three votes, or `coin` when the user has no history.
pub fn ensemble(votes: [bool; 3], has_history: bool, coin: bool) -> bool {
    if !has_history {
        return coin;
    }
    votes.iter().filter(|&&v| v).count() >= 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(category: &str, pros: &[&str], cons: &[&str]) -> ItemAnalysis {
        ItemAnalysis { pros: String::new(), cons: String::new(), pros_keywords: pros.iter().map(|s| s.to_string()).collect(), cons_keywords: cons.iter().map(|s| s.to_string()).collect(), category: category.into() }
    }

    #[test]
    fn keyword_matching_uses_the_candidates_category_when_the_history_has_it() {
        let pizza_liked = item("pizza", &["crust", "cheese"], &["wait"]);
        let pizza_disliked = item("pizza", &["view"], &["greasy", "wait"]);
        let bar_liked = item("bar", &["cocktails", "wait"], &[]);
        let history = [Seen { item: &pizza_liked, liked: true }, Seen { item: &pizza_disliked, liked: false }, Seen { item: &bar_liked, liked: true }];
        // Pros: crust (liked); cons: greasy, wait (disliked) → 1 vs 2: no.
        let cand = item("pizza", &["crust", "cocktails"], &["greasy", "wait"]);
        assert_eq!(keyword_vote(&cand, &history), (1, 2, false));
        // Another category: the whole history counts (cocktails, crust vs wait).
        let cand = item("cafe", &["crust", "cocktails"], &["wait"]);
        assert_eq!(keyword_vote(&cand, &history), (2, 1, true));
        // A tie is no vote.
        assert_eq!(keyword_vote(&item("pizza", &["cheese"], &["greasy"]), &history), (1, 1, false));
    }

    #[test]
    fn embedding_similarity_and_the_ensemble() {
        let (liked_pros, liked_cons) = ([1.0f32, 0.0], [0.0f32, 1.0]);
        let (dis_pros, dis_cons) = ([0.0f32, 1.0], [1.0f32, 0.0]);
        let history: Vec<(&[f32], &[f32], bool)> = vec![(&liked_pros, &liked_cons, true), (&dis_pros, &dis_cons, false)];
        // Pros like the liked item's (cos 1), cons unlike the disliked's (cos 0).
        let (p, n, v) = embedding_vote(&[2.0, 0.0], &[0.0, 3.0], &history);
        assert!((p - 1.0).abs() < 1e-6 && n.abs() < 1e-6 && v);
        assert!(!embedding_vote(&[0.0, 1.0], &[1.0, 0.0], &history).2);
        // Only liked items: anything beats −∞.
        assert!(embedding_vote(&[0.0, 1.0], &[1.0, 0.0], &history[..1]).2);
        assert!(model_vote(0.5) && !model_vote(0.49));
        assert!(ensemble([true, true, false], true, false));
        assert!(ensemble([true, false, true], true, false));
        assert!(!ensemble([true, false, false], true, true));
        assert!(ensemble([false, false, false], false, true) && !ensemble([true, true, true], false, false));
    }
}
