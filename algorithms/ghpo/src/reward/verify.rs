//! The math answer verifier: is a completion's final answer the gold answer?
//!
//! Three stages, after math-verify (the reference's verifier, see
//! `../shared/reference/ghpo.md` §5), narrowed to what can be decided exactly
//! without a computer algebra system:
//! 1. **Extraction** ([`extract_answer`]): the last `\boxed{…}` (or `\fbox{…}`)
//!    with nested braces matched; else a GSM8K-style `#### 42` final line; else
//!    the last number after an "answer is" / "answer:" anchor.
//! 2. **Normalisation** ([`normalize`]): spacing and display commands
//!    (`\left`, `\right`, `\!`, `\,`, `\displaystyle`, `$`), `\text{…}` and
//!    `\mathrm{…}` unwrapped (and dropped when they hold a unit after a number), `\dfrac`/`\tfrac` → `\frac`, thousands separators,
//!    `%`, degrees (`^\circ`, `°`), trailing `.0`, a trailing period, and a
//!    leading `x =` (an answer given as an assignment).
//! 3. **Comparison** ([`equivalent`]): when both sides evaluate to exact
//!    rationals (integers, decimals, fractions, `\frac`, `+ - * /`, `\cdot`,
//!    `\times`, `\div`, integer powers, parentheses and braces), they must be
//!    equal as rationals — so `0.5`, `\frac{1}{2}`, `1/2` and `\frac{2}{4}` are
//!    the same answer and `0.33` is not `\frac13`; otherwise the normalised
//!    strings must be equal.
//!
//! Not handled (compared as strings after normalisation): symbolic
//! simplification (`\sqrt{8}` vs `2\sqrt{2}`), set/interval reordering, and
//! numeric tolerance. The reference reaches those through SymPy; a completion
//! that writes them the way the gold does still matches.

/// 1.0 when the completion's extracted answer matches `gold`, 0.0 when it does
/// not or has no answer, `None` when the gold itself yields nothing to compare
/// (the reference then stores NaN, which never counts as "too hard").
pub fn accuracy_reward(completion: &str, gold: &str) -> Option<f64> {
    let gold = extract_answer(gold).unwrap_or_else(|| gold.trim().to_string());
    if normalize(&gold).is_empty() {
        return None;
    }
    Some(match extract_answer(completion) {
        Some(pred) if equivalent(&gold, &pred) => 1.0,
        _ => 0.0,
    })
}

/// The final answer of a text, if it states one.
pub fn extract_answer(text: &str) -> Option<String> {
    if let Some(b) = last_boxed(text) {
        return Some(b);
    }
    if let Some(i) = text.rfind("####") {
        let line = text[i + 4..].lines().next().unwrap_or("").trim();
        if !line.is_empty() {
            return Some(line.to_string());
        }
    }
    // ASCII lower-casing keeps byte offsets, so they index the original text.
    let lower = text.to_ascii_lowercase();
    for anchor in ["answer is", "answer:"] {
        if let Some(i) = lower.rfind(anchor) {
            let tail = text.get(i + anchor.len()..).unwrap_or("");
            if let Some(n) = first_number(tail) {
                return Some(n);
            }
        }
    }
    None
}

/// The content of the last `\boxed{…}` / `\fbox{…}` (nested braces matched), or
/// of a brace-less `\boxed 5`.
fn last_boxed(text: &str) -> Option<String> {
    let start = ["\\boxed", "\\fbox"].iter().filter_map(|m| text.rfind(m).map(|i| (i, m.len()))).max()?;
    let rest = &text[start.0 + start.1..];
    let trimmed = rest.trim_start();
    if let Some(inner) = trimmed.strip_prefix('{') {
        // Unbalanced: no answer rather than a wrong one.
        return closing_brace(inner).map(|i| inner[..i].to_string());
    }
    if rest.starts_with(' ') {
        let word: String = trimmed.chars().take_while(|c| !c.is_whitespace() && *c != '$').collect();
        return Some(word).filter(|w| !w.is_empty());
    }
    None
}

fn first_number(s: &str) -> Option<String> {
    let s = s.trim_start_matches(|c: char| c.is_whitespace() || c == '$' || c == ':');
    let num: String = s
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '-' | '.' | ',' | '/'))
        .collect();
    let num = num.trim_end_matches(['.', ',']);
    Some(num.to_string()).filter(|n| n.chars().any(|c| c.is_ascii_digit()))
}

/// The byte offset of the `}` that closes a group whose `{` was just before
/// `inner` (nested braces counted), if it is closed.
fn closing_brace(inner: &str) -> Option<usize> {
    let mut depth = 1usize;
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Removes `cmd{…}` wrappers, keeping their content (`\text{cm}` → `cm`).
fn unwrap_command(s: &str, cmd: &str) -> String {
    let mut out = s.to_string();
    while let Some(i) = out.find(cmd) {
        let after = &out[i + cmd.len()..];
        let Some(inner) = after.strip_prefix('{') else {
            out.replace_range(i..i + cmd.len(), "");
            continue;
        };
        let Some(j) = closing_brace(inner) else { break };
        let mut content = inner[..j].to_string();
        // A unit after a number (`10\text{ cm}`, `5\mathrm{kg}`) is dropped: the
        // answer is the number.
        let after_number = out[..i].trim_end().ends_with(|c: char| c.is_ascii_digit());
        let words = content.trim().chars().all(|c| c.is_alphabetic() || c == ' ' || c == '.') && !content.trim().is_empty();
        if after_number && words {
            content.clear();
        }
        let total = cmd.len() + 1 + j + 1;
        out.replace_range(i..i + total, &content);
    }
    out
}

/// Normalises an answer for comparison (see the module docs for the list).
pub fn normalize(answer: &str) -> String {
    let mut s = answer.trim().to_string();
    for cmd in ["\\text", "\\textbf", "\\mathrm", "\\mathbf", "\\mbox"] {
        s = unwrap_command(&s, cmd);
    }
    for (from, to) in [
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\left", ""),
        ("\\right", ""),
        ("\\displaystyle", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\:", ""),
        ("\\quad", ""),
        ("\\ ", ""),
        ("\\%", ""),
        ("%", ""),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("\\circ", ""),
        ("°", ""),
        ("\\$", ""),
        ("$", ""),
        ("\\cdot", "*"),
        ("\\times", "*"),
        ("\\div", "/"),
    ] {
        s = s.replace(from, to);
    }
    s.retain(|c| !c.is_whitespace());
    // An answer stated as an assignment: `x=3` → `3` (one variable, one `=`).
    if let Some((lhs, rhs)) = s.split_once('=') {
        if !rhs.contains('=') && !lhs.is_empty() && lhs.len() <= 2 && lhs.chars().all(|c| c.is_ascii_alphabetic()) {
            s = rhs.to_string();
        }
    }
    let s = strip_thousands(&s);
    let s = s.trim_end_matches('.').to_string();
    strip_trailing_zero_decimals(&s)
}

/// `1,234,567` → `1234567`, but `1,2` (a pair) and `(1,234)` stay.
fn strip_thousands(s: &str) -> String {
    let is_grouped = |t: &str| {
        let groups: Vec<&str> = t.split(',').collect();
        groups.len() > 1
            && (1..=3).contains(&groups[0].trim_start_matches('-').len())
            && groups[0].trim_start_matches('-').chars().all(|c| c.is_ascii_digit())
            && groups[1..].iter().enumerate().all(|(k, g)| {
                let g = if k == groups.len() - 2 { g.split('.').next().unwrap_or("") } else { g };
                g.len() == 3 && g.chars().all(|c| c.is_ascii_digit())
            })
    };
    if is_grouped(s) {
        s.replace(',', "")
    } else {
        s.to_string()
    }
}

/// `5.0` → `5`, `2.50` → `2.5` for plain decimals.
fn strip_trailing_zero_decimals(s: &str) -> String {
    let body = s.strip_prefix('-').unwrap_or(s);
    let plain = body.contains('.') && body.chars().all(|c| c.is_ascii_digit() || c == '.') && body.matches('.').count() == 1;
    if !plain {
        return s.to_string();
    }
    let t = s.trim_end_matches('0').trim_end_matches('.');
    if t.is_empty() || t == "-" {
        "0".to_string()
    } else {
        t.to_string()
    }
}

/// Whether two answers are the same: equal exact rationals when both evaluate,
/// else equal normalised text.
pub fn equivalent(gold: &str, pred: &str) -> bool {
    let (g, p) = (normalize(gold), normalize(pred));
    if g.is_empty() || p.is_empty() {
        return false;
    }
    match (Rational::eval(&g), Rational::eval(&p)) {
        (Some(a), Some(b)) => a == b,
        _ => g == p,
    }
}

/// An exact rational number, always in lowest terms with a positive denominator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rational {
    num: i128,
    den: i128,
}

fn gcd(mut a: i128, mut b: i128) -> i128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.abs()
}

impl Rational {
    pub fn new(num: i128, den: i128) -> Option<Rational> {
        if den == 0 {
            return None;
        }
        let g = gcd(num, den).max(1);
        let (mut n, mut d) = (num / g, den / g);
        if d < 0 {
            n = n.checked_neg()?;
            d = d.checked_neg()?;
        }
        Some(Rational { num: n, den: d })
    }

    fn int(n: i128) -> Rational {
        Rational { num: n, den: 1 }
    }

    fn add(self, o: Rational) -> Option<Rational> {
        Rational::new(self.num.checked_mul(o.den)?.checked_add(o.num.checked_mul(self.den)?)?, self.den.checked_mul(o.den)?)
    }
    fn neg(self) -> Option<Rational> {
        Some(Rational { num: self.num.checked_neg()?, den: self.den })
    }
    fn mul(self, o: Rational) -> Option<Rational> {
        Rational::new(self.num.checked_mul(o.num)?, self.den.checked_mul(o.den)?)
    }
    fn div(self, o: Rational) -> Option<Rational> {
        if o.num == 0 {
            return None;
        }
        Rational::new(self.num.checked_mul(o.den)?, self.den.checked_mul(o.num)?)
    }
    fn pow(self, e: Rational) -> Option<Rational> {
        if e.den != 1 || e.num.abs() > 64 {
            return None;
        }
        let mut r = Rational::int(1);
        for _ in 0..e.num.abs() {
            r = r.mul(self)?;
        }
        if e.num < 0 {
            Rational::int(1).div(r)
        } else {
            Some(r)
        }
    }

    /// Evaluates a normalised answer made only of numbers and `+ - * / ^`,
    /// parentheses, braces and `\frac{a}{b}`; `None` for anything else.
    pub fn eval(s: &str) -> Option<Rational> {
        let mut p = Parser { s: s.as_bytes(), i: 0 };
        let v = p.expr()?;
        (p.i == p.s.len()).then_some(v)
    }
}

/// Recursive descent: expr = term (('+'|'-') term)*; term = factor (('*'|'/') factor)*;
/// factor = ('-'|'+') factor | atom ('^' factor)?; atom = number | '(' expr ')' |
/// '{' expr '}' | '\frac' '{' expr '}' '{' expr '}'.
struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn expr(&mut self) -> Option<Rational> {
        let mut v = self.term()?;
        loop {
            if self.eat(b'+') {
                v = v.add(self.term()?)?;
            } else if self.eat(b'-') {
                v = v.add(self.term()?.neg()?)?;
            } else {
                return Some(v);
            }
        }
    }
    fn term(&mut self) -> Option<Rational> {
        let mut v = self.factor()?;
        loop {
            if self.eat(b'*') {
                v = v.mul(self.factor()?)?;
            } else if self.eat(b'/') {
                v = v.div(self.factor()?)?;
            } else {
                return Some(v);
            }
        }
    }
    fn factor(&mut self) -> Option<Rational> {
        if self.eat(b'-') {
            return self.factor()?.neg();
        }
        if self.eat(b'+') {
            return self.factor();
        }
        let base = self.atom()?;
        if self.eat(b'^') {
            return base.pow(self.factor()?);
        }
        Some(base)
    }
    fn atom(&mut self) -> Option<Rational> {
        if self.eat(b'(') {
            let v = self.expr()?;
            return self.eat(b')').then_some(v);
        }
        if self.eat(b'{') {
            let v = self.expr()?;
            return self.eat(b'}').then_some(v);
        }
        if self.s[self.i..].starts_with(b"\\frac") {
            self.i += 5;
            // `\frac12` (one-digit arguments without braces) is malformed LaTeX;
            // the reference refuses it for rewards, and so do we.
            if !self.eat(b'{') {
                return None;
            }
            let a = self.expr()?;
            if !self.eat(b'}') || !self.eat(b'{') {
                return None;
            }
            let b = self.expr()?;
            if !self.eat(b'}') {
                return None;
            }
            return a.div(b);
        }
        self.number()
    }
    fn number(&mut self) -> Option<Rational> {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        let int_part = &self.s[start..self.i];
        let mut frac_part: &[u8] = &[];
        if self.peek() == Some(b'.') {
            self.i += 1;
            let fs = self.i;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.i += 1;
            }
            frac_part = &self.s[fs..self.i];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        if frac_part.len() > 30 || int_part.len() > 30 {
            return None;
        }
        let digits = |d: &[u8]| -> Option<i128> {
            d.iter().try_fold(0i128, |acc, c| acc.checked_mul(10)?.checked_add(i128::from(c - b'0')))
        };
        let den = 10i128.checked_pow(frac_part.len() as u32)?;
        let num = digits(int_part)?.checked_mul(den)?.checked_add(digits(frac_part)?)?;
        Rational::new(num, den)
    }
}
