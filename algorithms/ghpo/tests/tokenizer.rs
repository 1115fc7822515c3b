//! The tokenizer: a BPE trained here round-trips any text, keeps its special
//! tokens whole, and encodes exactly as Hugging Face's Python `tokenizers` does
//! when that library loads the same tokenizer.json (from the project's .venv).

use kiln_ghpo::tokenizer::{PromptFormat, Template, Tokenizer, SPECIAL_TOKENS};
use std::path::PathBuf;
use std::process::Command;

fn corpus() -> Vec<String> {
    (0..400)
        .map(|i| {
            let (a, b) = (i * 7 % 97, i * 13 % 89);
            format!("Problem {i}: what is {a} + {b}? The sum of {a} and {b} is {}. The answer is \\boxed{{{}}}.", a + b, a + b)
        })
        .collect()
}

fn trained() -> Tokenizer {
    let texts = corpus();
    Tokenizer::train_bpe(texts.iter().map(String::as_str), 300).unwrap()
}

#[test]
fn a_trained_tokenizer_round_trips_any_text_and_keeps_special_tokens_whole() {
    let t = trained();
    assert!(t.vocab_size() <= 300 && t.vocab_size() > 256, "{}", t.vocab_size());
    for (i, s) in SPECIAL_TOKENS.iter().enumerate() {
        assert_eq!(t.token_id(s), Some(i as i64));
    }
    for text in ["What is 12 + 30?", "ünïcödé ∑ 数学 🙂", "  spaces\tand\nnewlines  ", "", "\\frac{1}{2}"] {
        let ids = t.encode(text).unwrap();
        assert_eq!(t.decode(&ids, false).unwrap(), text);
    }
    // Merges learnt: the corpus's words take fewer tokens than bytes.
    let ids = t.encode("The answer is").unwrap();
    assert!(ids.len() < "The answer is".len(), "{ids:?}");
    let chat = PromptFormat { template: Template::ChatMl, system: None }.render("hi");
    let ids = t.encode(&chat).unwrap();
    assert_eq!(ids[0], 1, "<|im_start|> is one token");
    assert!(ids.contains(&2));
    assert_eq!(t.decode(&ids, true).unwrap(), "user\nhi\nassistant\n", "special tokens skipped on request");
    assert!(t.decode(&[-1], false).is_err());
}

#[test]
fn saved_tokenizers_encode_like_huggingface_tokenizers() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    t.save(&path).unwrap();
    let again = Tokenizer::from_file(&path).unwrap();
    let texts = ["The sum of 3 and 4 is 7.", "<|im_start|>user\nWhat is 5 + 5?<|im_end|>\n", "naïve  text\n\n"];
    let py = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    for text in texts {
        let ours = again.encode(text).unwrap();
        assert_eq!(ours, t.encode(text).unwrap());
        let out = Command::new(&py)
            .args(["-c", "import json,sys; from tokenizers import Tokenizer; t = Tokenizer.from_file(sys.argv[1]); print(json.dumps(t.encode(sys.argv[2], add_special_tokens=False).ids))"])
            .arg(&path)
            .arg(text)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", py.display()));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let theirs: Vec<i64> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(ours, theirs, "{text:?}");
    }
    let missing = Tokenizer::from_file(&dir.path().join("nope.json")).err().unwrap().to_string();
    assert!(missing.contains("nope.json"), "{missing}");
}
