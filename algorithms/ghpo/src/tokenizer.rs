//! Text ↔ token ids through Hugging Face's `tokenizers` (any `tokenizer.json`),
//! training a small byte-level BPE tokenizer for from-scratch runs, and the
//! prompt templates that turn a problem (and a GHPO hint) into model input.

use std::path::Path;
use thiserror::Error;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

#[derive(Debug, Error)]
pub enum TokenizerError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("tokenizer: {0}")]
    Other(String),
}

/// The special tokens a from-scratch tokenizer gets, in id order (0, 1, 2):
/// end of text (also padding), and the ChatML turn markers.
pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    /// Loads a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Tokenizer, TokenizerError> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| TokenizerError::File { path: path.display().to_string(), message: e.to_string() })?;
        Ok(Tokenizer { inner })
    }

    /// Trains a byte-level BPE tokenizer (GPT-2 style pre-tokenisation, no
    /// prefix space) with [`SPECIAL_TOKENS`] on `texts`. Byte-level means every
    /// string round-trips, whatever the training text held.
    pub fn train_bpe<'a>(texts: impl Iterator<Item = &'a str> + Send, vocab_size: usize) -> Result<Tokenizer, TokenizerError> {
        let specials: Vec<AddedToken> = SPECIAL_TOKENS.iter().map(|t| AddedToken::from(*t, true)).collect();
        let trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(specials)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut inner = tokenizers::Tokenizer::new(BPE::default());
        let byte_level = ByteLevel::new(false, true, true);
        inner.with_pre_tokenizer(Some(byte_level));
        inner.with_decoder(Some(byte_level));
        let mut trainer = TrainerWrapper::BpeTrainer(trainer);
        inner.train(&mut trainer, texts).map_err(|e| TokenizerError::Other(e.to_string()))?;
        Ok(Tokenizer { inner })
    }

    pub fn save(&self, path: &Path) -> Result<(), TokenizerError> {
        self.inner.save(path, false).map_err(|e| TokenizerError::File { path: path.display().to_string(), message: e.to_string() })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`; special tokens written in the text are recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, TokenizerError> {
        let enc = self.inner.encode(text, false).map_err(|e| TokenizerError::Other(e.to_string()))?;
        Ok(enc.get_ids().iter().map(|&i| i64::from(i)).collect())
    }

    /// Text of `ids`, special tokens dropped when `skip_special`.
    pub fn decode(&self, ids: &[i64], skip_special: bool) -> Result<String, TokenizerError> {
        let ids: Vec<u32> = ids
            .iter()
            .map(|&i| u32::try_from(i).map_err(|_| TokenizerError::Other(format!("token id {i} is out of range"))))
            .collect::<Result<_, _>>()?;
        self.inner.decode(&ids, skip_special).map_err(|e| TokenizerError::Other(e.to_string()))
    }

    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(i64::from)
    }
}

/// How a problem becomes the model's prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum Template {
    /// Qwen's ChatML: `<|im_start|>system\n…<|im_end|>\n<|im_start|>user\n…<|im_end|>\n<|im_start|>assistant\n`
    /// (the system turn only when there is a system prompt).
    ChatMl,
    /// A format string with `{system}` and `{user}` placeholders, for base
    /// models without a chat format.
    Custom(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct PromptFormat {
    pub template: Template,
    pub system: Option<String>,
}

impl PromptFormat {
    /// The prompt for one user message, ending where the model's answer starts.
    pub fn render(&self, user: &str) -> String {
        match &self.template {
            Template::ChatMl => {
                let mut s = String::new();
                if let Some(sys) = &self.system {
                    s.push_str(&format!("<|im_start|>system\n{sys}<|im_end|>\n"));
                }
                s.push_str(&format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"));
                s
            }
            Template::Custom(f) => f.replace("{system}", self.system.as_deref().unwrap_or("")).replace("{user}", user),
        }
    }
}

/// What joins a problem and its hint in GHPO's prompts (the reference code's
/// string, leading space included).
pub const HINT_CONNECTOR: &str =
    "\n The following text is the beginning part of the answer, which you can refer to for solving the problem:\n";

/// The first `ratio` of a reference solution, in characters, as GHPO's hints
/// are cut: `round(len × ratio)` with Python's rounding (halves to even).
pub fn hint_prefix(solution: &str, ratio: f64) -> &str {
    let chars = solution.chars().count();
    let take = ((chars as f64) * ratio.clamp(0.0, 1.0)).round_ties_even() as usize;
    let end = solution.char_indices().nth(take).map(|(i, _)| i).unwrap_or(solution.len());
    &solution[..end]
}

/// A problem with a hint of `ratio` of its solution (no hint at 0).
pub fn with_hint(problem: &str, solution: &str, ratio: f64) -> String {
    if ratio <= 0.0 {
        return problem.to_string();
    }
    format!("{problem}{HINT_CONNECTOR}{}", hint_prefix(solution, ratio))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_matches_qwens_layout() {
        let f = PromptFormat { template: Template::ChatMl, system: Some("Be brief.".into()) };
        assert_eq!(
            f.render("1+1?"),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n"
        );
        let bare = PromptFormat { template: Template::ChatMl, system: None };
        assert_eq!(bare.render("q"), "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n");
        let plain = PromptFormat { template: Template::Custom("{system}\nQ: {user}\nA:".into()), system: Some("S".into()) };
        assert_eq!(plain.render("2+2"), "S\nQ: 2+2\nA:");
    }

    #[test]
    fn hints_are_character_prefixes_of_the_solution() {
        let sol = "abcdefgh";
        assert_eq!(hint_prefix(sol, 0.25), "ab");
        assert_eq!(hint_prefix(sol, 0.5), "abcd");
        assert_eq!(hint_prefix(sol, 0.75), "abcdef");
        assert_eq!(hint_prefix(sol, 1.0), sol);
        assert_eq!(hint_prefix("αβγδ", 0.5), "αβ", "characters, not bytes");
        assert_eq!(hint_prefix("abcdefghij", 0.25), "ab", "2.5 rounds to even, as Python's round does");
        assert_eq!(hint_prefix("abcdefghijklmn", 0.25), "abcd", "3.5 rounds to 4");
        assert_eq!(with_hint("P", sol, 0.0), "P");
        assert_eq!(with_hint("P", sol, 0.5), format!("P{HINT_CONNECTOR}abcd"));
        assert!(HINT_CONNECTOR.starts_with("\n The following"));
    }
}
