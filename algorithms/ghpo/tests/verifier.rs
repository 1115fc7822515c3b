//! The math verifier, table-driven: extraction, normalisation and exact
//! comparison, with near misses that must not pass.

use kiln_ghpo::reward::{accuracy_reward, equivalent, extract_answer};

/// (gold, completion, expected reward)
const CASES: &[(&str, &str, f64)] = &[
    // --- extraction: boxed, nested braces, the last one wins
    ("42", "so the total is \\boxed{42}.", 1.0),
    ("42", "first \\boxed{41}, corrected: \\boxed{42}", 1.0),
    ("42", "first \\boxed{42}, corrected: \\boxed{41}", 0.0),
    ("\\frac{1}{2}", "\\boxed{\\frac{1}{2}}", 1.0),
    ("\\frac{1}{2}", "\\boxed{\\frac{1}{{2}}}", 1.0),
    ("\\frac{3}{4}", "answer \\fbox{\\frac{3}{4}}", 1.0),
    ("7", "\\boxed 7", 1.0),
    ("7", "\\boxed{7", 0.0),
    ("7", "no answer here at all", 0.0),
    ("7", "", 0.0),
    ("7", "<think>\nsteps\n</think>\n<answer>\n\\boxed{7}\n</answer>", 1.0),
    ("12", "$\\boxed{12}$", 1.0),
    ("(1,2)", "\\boxed{(1,2)}", 1.0),
    ("x^2+1", "\\boxed{x^2+1}", 1.0),
    ("x^2+1", "\\boxed{x^2 + 1}", 1.0),
    ("x^2+1", "\\boxed{x^2-1}", 0.0),
    // --- GSM8K-style final line and anchors
    ("72", "Natalia sold 48/2 = 24 clips in May.\n#### 72", 1.0),
    ("72", "#### 72\n", 1.0),
    ("72", "#### 71", 0.0),
    ("1000", "#### 1,000", 1.0),
    ("18", "The answer is 18.", 1.0),
    ("18", "The answer is $18.", 1.0),
    ("18", "Answer: 18", 1.0),
    ("18", "The answer is 81.", 0.0),
    ("5", "The ANSWER IS 5", 1.0),
    // --- integers, signs, leading zeros
    ("-3", "\\boxed{-3}", 1.0),
    ("-3", "\\boxed{3}", 0.0),
    ("3", "\\boxed{+3}", 1.0),
    ("3", "\\boxed{03}", 1.0),
    ("0", "\\boxed{-0}", 1.0),
    ("0", "\\boxed{0.0}", 1.0),
    ("100", "\\boxed{10^2}", 1.0),
    ("8", "\\boxed{2^3}", 1.0),
    ("\\frac{1}{8}", "\\boxed{2^{-3}}", 1.0),
    ("9", "\\boxed{3^3}", 0.0),
    // --- decimals exactly
    ("0.5", "\\boxed{\\frac{1}{2}}", 1.0),
    ("0.5", "\\boxed{1/2}", 1.0),
    ("0.5", "\\boxed{.5}", 1.0),
    ("0.5", "\\boxed{0.50}", 1.0),
    ("\\frac{1}{3}", "\\boxed{0.333}", 0.0),
    ("\\frac{1}{3}", "\\boxed{0.3333333}", 0.0),
    ("2.5", "\\boxed{\\frac{5}{2}}", 1.0),
    ("2.5", "\\boxed{2.05}", 0.0),
    ("5", "\\boxed{5.0}", 1.0),
    ("5", "\\boxed{5.00}", 1.0),
    ("5", "\\boxed{5.01}", 0.0),
    ("0.125", "\\boxed{\\frac{1}{8}}", 1.0),
    // --- fractions
    ("\\frac{2}{4}", "\\boxed{\\frac{1}{2}}", 1.0),
    ("\\frac{1}{2}", "\\boxed{\\dfrac{1}{2}}", 1.0),
    ("\\frac{1}{2}", "\\boxed{\\tfrac{1}{2}}", 1.0),
    ("\\dfrac{7}{3}", "\\boxed{7/3}", 1.0),
    ("\\frac{7}{3}", "\\boxed{\\frac{3}{7}}", 0.0),
    ("-\\frac{1}{2}", "\\boxed{\\frac{-1}{2}}", 1.0),
    ("-\\frac{1}{2}", "\\boxed{\\frac{1}{-2}}", 1.0),
    ("-\\frac{1}{2}", "\\boxed{\\frac{1}{2}}", 0.0),
    ("\\frac{1}{2}", "\\boxed{\\frac12}", 0.0),
    ("\\frac{10}{4}", "\\boxed{\\frac{5}{2}}", 1.0),
    ("\\frac{1}{0}", "\\boxed{\\frac{1}{0}}", 1.0),
    // --- simple expressions
    ("6", "\\boxed{2 \\cdot 3}", 1.0),
    ("6", "\\boxed{2 \\times 3}", 1.0),
    ("2", "\\boxed{6 \\div 3}", 1.0),
    ("7", "\\boxed{(1+2)\\cdot 2+1}", 1.0),
    ("\\frac{5}{6}", "\\boxed{\\frac{1}{2}+\\frac{1}{3}}", 1.0),
    ("\\frac{5}{6}", "\\boxed{\\frac{1}{2}-\\frac{1}{3}}", 0.0),
    ("1", "\\boxed{\\frac{1}{2}\\cdot 2}", 1.0),
    // --- normalisation: spacing and display commands
    ("\\frac{1}{2}", "\\boxed{\\left(\\frac{1}{2}\\right)}", 1.0),
    ("(3,4)", "\\boxed{\\left(3, 4\\right)}", 1.0),
    ("(3,4)", "\\boxed{(4,3)}", 0.0),
    ("12", "\\boxed{\\displaystyle 12}", 1.0),
    ("12", "\\boxed{1\\!2}", 1.0),
    ("1000000", "\\boxed{1\\,000\\,000}", 1.0),
    ("10", "\\boxed{ 10 }", 1.0),
    // --- \text, units
    ("10", "\\boxed{10\\text{ cm}}", 1.0),
    ("10\\text{ cm}", "\\boxed{10}", 1.0),
    ("10", "\\boxed{10\\mathrm{kg}}", 1.0),
    ("11", "\\boxed{10\\text{ cm}}", 0.0),
    ("\\text{(B)}", "\\boxed{(B)}", 1.0),
    ("\\text{(B)}", "\\boxed{\\text{(C)}}", 0.0),
    ("\\text{Monday}", "\\boxed{\\text{Monday}}", 1.0),
    ("\\text{Monday}", "\\boxed{Monday}", 1.0),
    ("\\mathrm{Evelyn}", "\\boxed{\\text{Evelyn}}", 1.0),
    // --- thousands separators
    ("1234567", "\\boxed{1,234,567}", 1.0),
    ("1234", "\\boxed{1,234}", 1.0),
    ("1234.5", "\\boxed{1,234.5}", 1.0),
    ("12345", "\\boxed{12,345}", 1.0),
    ("1,2", "\\boxed{1,2}", 1.0),
    ("12", "\\boxed{1,2}", 0.0),
    ("1234", "\\boxed{1,2345}", 0.0),
    // --- percent and degrees
    ("25", "\\boxed{25\\%}", 1.0),
    ("25\\%", "\\boxed{25}", 1.0),
    ("25", "\\boxed{26\\%}", 0.0),
    ("90", "\\boxed{90^\\circ}", 1.0),
    ("90", "\\boxed{90^{\\circ}}", 1.0),
    ("90^\\circ", "\\boxed{90°}", 1.0),
    ("90", "\\boxed{89^\\circ}", 0.0),
    // --- dollars, trailing period
    ("\\$18.90", "\\boxed{18.9}", 1.0),
    ("18.90", "\\boxed{\\$18.90}", 1.0),
    ("5", "\\boxed{5.}", 1.0),
    // --- assignments
    ("3", "\\boxed{x=3}", 1.0),
    ("3", "\\boxed{x = 3}", 1.0),
    ("3", "\\boxed{n=4}", 0.0),
    ("x=3", "\\boxed{3}", 1.0),
    ("y=2x+1", "\\boxed{y=2x+1}", 1.0),
    ("2x+1", "\\boxed{y = 2x+1}", 1.0),
    ("2x+1", "\\boxed{y = 2x+2}", 0.0),
    // --- symbolic answers: string equality after normalisation
    ("\\sqrt{2}", "\\boxed{\\sqrt{2}}", 1.0),
    ("\\sqrt{2}", "\\boxed{\\sqrt{3}}", 0.0),
    ("2\\sqrt{2}", "\\boxed{2 \\sqrt{2}}", 1.0),
    ("\\pi", "\\boxed{\\pi}", 1.0),
    ("3\\pi", "\\boxed{3 \\pi}", 1.0),
    ("3\\pi", "\\boxed{\\pi}", 0.0),
    ("[2,5)", "\\boxed{[2,5)}", 1.0),
    ("[2,5)", "\\boxed{[2,5]}", 0.0),
    ("\\{1,2\\}", "\\boxed{\\{1, 2\\}}", 1.0),
    ("a+b", "\\boxed{a+b}", 1.0),
    ("a+b", "\\boxed{a-b}", 0.0),
    // --- near misses in extraction
    ("42", "\\boxed{}", 0.0),
    ("42", "The answer is forty-two.", 0.0),
    ("42", "\\boxed{42}}", 1.0),
    ("42", "I think \\boxed{4} then 2", 0.0),
];

#[test]
fn the_verifier_agrees_with_the_table() {
    assert!(CASES.len() >= 100, "the issue asks for at least 100 cases ({})", CASES.len());
    let mut wrong = Vec::new();
    for (gold, completion, want) in CASES {
        let got = accuracy_reward(completion, gold);
        if got != Some(*want) {
            wrong.push(format!("gold {gold:?}, completion {completion:?}: want {want}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{} of {} cases wrong:\n{}", wrong.len(), CASES.len(), wrong.join("\n"));
}

#[test]
fn a_gold_with_nothing_to_compare_gives_no_reward() {
    assert_eq!(accuracy_reward("\\boxed{1}", ""), None);
    assert_eq!(accuracy_reward("\\boxed{1}", "  "), None);
}

#[test]
fn equivalence_is_symmetric_on_the_table() {
    for (gold, completion, _) in CASES {
        if let Some(pred) = extract_answer(completion) {
            assert_eq!(equivalent(gold, &pred), equivalent(&pred, gold), "{gold:?} vs {pred:?}");
        }
    }
}

/// Real data, when this checkout sits next to `../shared/data` (or
/// `KILN_SHARED_DATA` points at it): every MATH-500 reference solution's last
/// `\boxed{}` must verify against the dataset's answer, and every GSM8K
/// solution's `####` line against its own number. Opt in with
/// `cargo test -p kiln-ghpo -- --ignored`.
#[test]
#[ignore = "needs ../shared/data (not part of the repository)"]
fn reference_solutions_of_math500_and_gsm8k_verify_against_their_answers() {
    let root = std::env::var("KILN_SHARED_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    let read = |f: &str| std::fs::read_to_string(root.join("math").join(f)).unwrap_or_else(|e| panic!("{}: {e}", root.display()));
    let mut misses = Vec::new();
    let math = read("math500_test.jsonl");
    let mut n = 0;
    for line in math.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let (sol, ans) = (v["solution"].as_str().unwrap(), v["answer"].as_str().unwrap());
        n += 1;
        if accuracy_reward(sol, ans) != Some(1.0) {
            misses.push(format!("MATH-500 {}: answer {ans:?}, boxed {:?}", v["unique_id"], extract_answer(sol)));
        }
    }
    let gsm = read("gsm8k_test.jsonl");
    for line in gsm.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let sol = v["answer"].as_str().unwrap();
        let num = sol.rsplit("####").next().unwrap().trim();
        n += 1;
        if accuracy_reward(sol, num) != Some(1.0) || accuracy_reward(&format!("\\boxed{{{num}}}"), sol) != Some(1.0) {
            misses.push(format!("GSM8K: {num:?}"));
        }
    }
    assert!(misses.len() * 100 <= n, "{} of {n} reference solutions fail:\n{}", misses.len(), misses.join("\n"));
    // The loaders read the same files.
    use kiln_ghpo::data::{load_jsonl, JsonlFields};
    let gsm = load_jsonl(&root.join("math/gsm8k_test.jsonl"), &JsonlFields::gsm8k()).unwrap();
    let math = load_jsonl(&root.join("math/math500_test.jsonl"), &JsonlFields::math()).unwrap();
    assert_eq!((gsm.len(), math.len()), (1319, 500));
    assert!(gsm.iter().all(|p| !p.answer.is_empty()) && math.iter().all(|p| !p.problem.is_empty()));
    eprintln!("{} of {n} reference solutions fail to verify:\n{}", misses.len(), misses.join("\n"));
}
