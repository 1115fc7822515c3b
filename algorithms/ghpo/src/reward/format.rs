//! The format reward of the R1-style prompt: the completion must be
//! `<think>\n…\n</think>\n<answer>\n…\n</answer>`.
//!
//! This is the reference's regex `^<think>\n.*?\n</think>\n<answer>\n.*?\n</answer>$`
//! under `re.match` with DOTALL and MULTILINE: anchored at the start, and with
//! MULTILINE `$` also matches before a newline, so text may follow `</answer>`
//! on later lines. Written out by hand so the rule is visible and needs no regex
//! engine.

/// 1.0 when `completion` has the think/answer format, else 0.0.
pub fn format_reward(completion: &str) -> f64 {
    if has_format(completion) {
        1.0
    } else {
        0.0
    }
}

fn has_format(s: &str) -> bool {
    const OPEN: &str = "<think>\n";
    const MID: &str = "\n</think>\n<answer>\n";
    const CLOSE: &str = "\n</answer>";
    let Some(rest) = s.strip_prefix(OPEN) else { return false };
    // `.*?` is lazy but the regex backtracks, so any occurrence of the middle
    // marker followed (anywhere later) by a closing marker at a line end works.
    let mut from = 0;
    while let Some(i) = rest[from..].find(MID) {
        let after = &rest[from + i + MID.len()..];
        let mut j = 0;
        while let Some(k) = after[j..].find(CLOSE) {
            let end = j + k + CLOSE.len();
            if end == after.len() || after[end..].starts_with('\n') {
                return true;
            }
            j += k + 1;
        }
        from += i + 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_follows_the_reference_regex() {
        let cases: &[(&str, f64)] = &[
            ("<think>\nreason\n</think>\n<answer>\n42\n</answer>", 1.0),
            ("<think>\n\n</think>\n<answer>\n\n</answer>", 1.0),
            ("<think>\na\nb\n</think>\n<answer>\n\\boxed{1}\n</answer>", 1.0),
            // MULTILINE `$`: a following line is allowed, trailing text on the line is not.
            ("<think>\nr\n</think>\n<answer>\n4\n</answer>\nmore", 1.0),
            ("<think>\nr\n</think>\n<answer>\n4\n</answer> more", 0.0),
            ("<think>\nr\n</think>\n<answer>\n4\n</answer>\n", 1.0),
            // Anchored at the start.
            (" <think>\nr\n</think>\n<answer>\n4\n</answer>", 0.0),
            ("<think>r\n</think>\n<answer>\n4\n</answer>", 0.0),
            ("<think>\nr</think>\n<answer>\n4\n</answer>", 0.0),
            ("<think>\nr\n</think><answer>\n4\n</answer>", 0.0),
            ("<think>\nr\n</think>\n<answer>4\n</answer>", 0.0),
            ("<think>\nr\n</think>\n<answer>\n4</answer>", 0.0),
            ("<think>\nr\n</think>\n<answer>\n4\n", 0.0),
            ("The answer is 4", 0.0),
            ("", 0.0),
            // Lazy match with backtracking: a later marker still counts.
            ("<think>\nx\n</think>\ny\n</think>\n<answer>\n4\n</answer>", 1.0),
        ];
        for (s, want) in cases {
            assert_eq!(format_reward(s), *want, "{s:?}");
        }
    }
}
