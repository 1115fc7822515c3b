//! Item analysis: what an item's reviews say, as pros, cons, their keywords
//! and a category — the input of the simulator's keyword and embedding
//! voters. Either an LLM writes it (the prompt and the strict parser of its
//! answer are here) or, without an endpoint, [`keyword_analysis`] extracts
//! it from the review text.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One item's analysis.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ItemAnalysis {
    pub pros: String,
    pub cons: String,
    pub pros_keywords: Vec<String>,
    pub cons_keywords: Vec<String>,
    pub category: String,
}

/// The default prompt. `{title}` and `{reviews}` are filled in; the answer
/// must be one JSON object with exactly the five keys.
pub const DEFAULT_PROMPT: &str = "You analyse customer reviews of one item.\n\
Item: {title}\n\
Reviews:\n{reviews}\n\n\
Answer with one JSON object and nothing else, with exactly these keys:\n\
\"pros\": one or two sentences on what reviewers liked,\n\
\"cons\": one or two sentences on what reviewers disliked,\n\
\"pros_keywords\": a list of up to 8 single lower-case words for the pros,\n\
\"cons_keywords\": a list of up to 8 single lower-case words for the cons,\n\
\"category\": the item's category in one or two lower-case words.";

/// The prompt for one item: `template` with `{title}` and `{reviews}` (one
/// per line, each cut to `max_chars_per_review` characters).
pub fn render_prompt(template: &str, title: &str, reviews: &[String], max_chars_per_review: usize) -> String {
    let lines: Vec<String> = reviews.iter().map(|r| format!("- {}", r.chars().take(max_chars_per_review).collect::<String>().replace('\n', " "))).collect();
    template.replace("{title}", title).replace("{reviews}", &lines.join("\n"))
}

/// Parses an answer strictly: one JSON object (a ```json fence around it is
/// allowed, nothing else), exactly the five keys, a non-empty category and
/// keywords; keywords are trimmed and lower-cased. The error says what is
/// wrong, for the failure record.
pub fn parse_answer(content: &str) -> Result<ItemAnalysis, String> {
    let t = content.trim();
    let t = t.strip_prefix("```json").or_else(|| t.strip_prefix("```")).map(|r| r.trim_end().strip_suffix("```").unwrap_or(r)).unwrap_or(t).trim();
    let mut a: ItemAnalysis = serde_json::from_str(t).map_err(|e| {
        let start: String = t.chars().take(80).collect();
        format!("not the JSON object asked for ({e}); the answer starts {start:?}")
    })?;
    for list in [&mut a.pros_keywords, &mut a.cons_keywords] {
        *list = list.iter().map(|k| k.trim().to_lowercase()).filter(|k| !k.is_empty()).collect();
    }
    a.category = a.category.trim().to_lowercase();
    if a.category.is_empty() {
        return Err("the category is empty".into());
    }
    if a.pros_keywords.is_empty() && a.cons_keywords.is_empty() {
        return Err("no keywords at all".into());
    }
    Ok(a)
}

/// Analyses by item id from JSON lines as `kiln llmsim analyse` writes
/// them (`item_id`, the five fields, and `source`, which is ignored).
pub fn read_analyses(path: &std::path::Path) -> Result<std::collections::HashMap<String, ItemAnalysis>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = std::collections::HashMap::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = |m: String| format!("{}: line {}: {m}", path.display(), i + 1);
        let mut v: serde_json::Value = serde_json::from_str(line).map_err(|e| at(format!("not JSON: {e}")))?;
        let id = v.get("item_id").and_then(|x| x.as_str()).map(str::to_string).ok_or_else(|| at("no item_id".into()))?;
        if let Some(o) = v.as_object_mut() {
            o.remove("item_id");
            o.remove("source");
        }
        out.insert(id, serde_json::from_value(v).map_err(|e| at(format!("not an item analysis: {e}")))?);
    }
    Ok(out)
}

const STOP: &[&str] = &[
    "the", "and", "for", "was", "were", "are", "but", "not", "with", "this", "that", "they", "them", "their", "there", "have", "has", "had", "you", "your", "our", "out", "all", "any", "can", "too", "very", "just", "its", "it's", "from", "about", "what", "when", "which", "who", "will", "would", "could", "should", "been", "than", "then", "also", "only", "one", "get", "got", "here", "some", "more", "much", "so", "again", "did", "does", "don't", "didn't", "i'm", "we", "i", "my", "me", "is", "it", "of", "to", "in", "on", "at", "a", "an", "be", "as", "or", "if", "no", "by", "place", "really", "even", "like", "back", "time", "came", "come", "went", "go", "make", "made", "way", "because", "into", "over", "after", "before", "while", "other", "these", "those",
];
const POSITIVE: &[&str] = &["good", "great", "excellent", "amazing", "love", "loved", "lovely", "best", "delicious", "friendly", "nice", "fresh", "perfect", "awesome", "fantastic", "tasty", "clean", "helpful", "recommend", "wonderful", "happy", "fast", "cozy", "beautiful", "enjoyed", "favorite", "fun", "worth", "quality"];
const NEGATIVE: &[&str] = &["bad", "terrible", "awful", "worst", "rude", "slow", "dirty", "cold", "bland", "overpriced", "expensive", "poor", "disappointing", "disappointed", "horrible", "never", "wrong", "noisy", "stale", "greasy", "mediocre", "waited", "wait", "small", "broken", "hate", "unfriendly", "burnt", "salty", "crowded"];

fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .map(|w| w.trim_matches('\'').to_lowercase())
        .filter(|w| !w.is_empty())
        .collect()
}

/// The analysis without an LLM: sentences are split, scored by a small
/// sentiment lexicon (negations flip a word), and the pros (cons) are the
/// most positive (negative) sentences, up to two; the keywords are the most
/// frequent content words of the positive (negative) sentences, up to `k`;
/// the category is `category` when the data has one, else the most frequent
/// content word overall.
pub fn keyword_analysis(reviews: &[String], category: Option<&str>, k: usize) -> ItemAnalysis {
    let mut scored: Vec<(f64, String)> = Vec::new();
    for r in reviews {
        for s in r.split(['.', '!', '?', '\n']).map(str::trim).filter(|s| s.len() > 3) {
            let w = words(s);
            let mut score = 0.0;
            for (i, x) in w.iter().enumerate() {
                let negated = i > 0 && matches!(w[i - 1].as_str(), "not" | "never" | "no" | "isn't" | "wasn't" | "don't" | "didn't");
                let v = if POSITIVE.contains(&x.as_str()) { 1.0 } else if NEGATIVE.contains(&x.as_str()) { -1.0 } else { 0.0 };
                score += if negated { -v } else { v };
            }
            scored.push((score, s.to_string()));
        }
    }
    let keywords = |positive: bool| -> (String, Vec<String>) {
        let mut side: Vec<&(f64, String)> = scored.iter().filter(|(s, _)| if positive { *s > 0.0 } else { *s < 0.0 }).collect();
        side.sort_by(|a, b| if positive { b.0.total_cmp(&a.0) } else { a.0.total_cmp(&b.0) }.then(a.1.cmp(&b.1)));
        let text = side.iter().take(2).map(|(_, s)| format!("{s}.")).collect::<Vec<_>>().join(" ");
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        for (_, s) in &side {
            for w in words(s) {
                if w.len() >= 3 && !STOP.contains(&w.as_str()) && !w.chars().all(|c| c.is_ascii_digit()) {
                    *count.entry(w).or_insert(0) += 1;
                }
            }
        }
        let mut kw: Vec<(String, usize)> = count.into_iter().collect();
        kw.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        (text, kw.into_iter().take(k).map(|(w, _)| w).collect())
    };
    let ((pros, pros_keywords), (cons, cons_keywords)) = (keywords(true), keywords(false));
    let category = category.map(|c| c.trim().to_lowercase()).filter(|c| !c.is_empty()).unwrap_or_else(|| {
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        for w in reviews.iter().flat_map(|r| words(r)) {
            if w.len() >= 4 && !STOP.contains(&w.as_str()) && !POSITIVE.contains(&w.as_str()) && !NEGATIVE.contains(&w.as_str()) {
                *count.entry(w).or_insert(0) += 1;
            }
        }
        count.into_iter().max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0))).map(|(w, _)| w).unwrap_or_else(|| "unknown".into())
    });
    ItemAnalysis { pros, cons, pros_keywords, cons_keywords, category }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed_strictly() {
        let ok = "```json\n{\"pros\": \"Tasty.\", \"cons\": \"Slow.\", \"pros_keywords\": [\" Pizza \", \"crust\"], \"cons_keywords\": [\"wait\"], \"category\": \" Pizza \"}\n```";
        let a = parse_answer(ok).unwrap();
        assert_eq!((a.pros_keywords.clone(), a.category.as_str()), (vec!["pizza".to_string(), "crust".into()], "pizza"));
        for (bad, why) in [
            ("Sure! Here it is: {}", "not the JSON object"),
            ("{\"pros\": \"x\", \"cons\": \"y\", \"pros_keywords\": [], \"cons_keywords\": [], \"category\": \"food\"}", "no keywords"),
            ("{\"pros\": \"x\", \"cons\": \"y\", \"pros_keywords\": [\"a\"], \"cons_keywords\": [], \"category\": \"food\", \"rating\": 5}", "unknown field"),
            ("{\"pros\": \"x\", \"cons\": \"y\", \"pros_keywords\": [\"a\"], \"cons_keywords\": [], \"category\": \"  \"}", "category is empty"),
        ] {
            let e = parse_answer(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn the_keyword_analyser_splits_praise_from_complaints() {
        let reviews = vec!["Great pizza and friendly staff. The wait was terrible!".to_string(), "Delicious pizza, fresh crust. Parking is not good and the room was noisy.".into()];
        let a = keyword_analysis(&reviews, None, 5);
        assert!(a.pros_keywords.contains(&"pizza".to_string()) && a.pros_keywords.contains(&"crust".to_string()), "{a:?}");
        assert!(a.cons_keywords.contains(&"parking".to_string()) && a.cons_keywords.contains(&"noisy".to_string()), "{a:?}");
        assert!(!a.cons_keywords.contains(&"pizza".to_string()), "{a:?}");
        assert_eq!(a.category, "pizza");
        assert!(a.pros.contains("pizza") && (a.cons.contains("terrible") || a.cons.contains("noisy")), "{a:?}");
        assert_eq!(keyword_analysis(&reviews, Some("Italian"), 5).category, "italian");
        let p = render_prompt(DEFAULT_PROMPT, "Luigi's", &reviews, 20);
        assert!(p.contains("Item: Luigi's") && p.contains("- Great pizza and frie\n"));
    }
}
