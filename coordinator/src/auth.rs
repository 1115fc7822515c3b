//! Bearer tokens: operators' tokens for the whole API, and one token per job
//! that lets its workers report on that job only. Comparisons take the same time
//! whatever the inputs share, so a token cannot be guessed byte by byte.

use std::io::Read;
use std::path::Path;
use subtle::ConstantTimeEq;

/// Shortest operator token accepted (a guessable token is no protection).
pub const MIN_TOKEN_LEN: usize = 16;

/// Reads operator tokens: one per line of `file` (blank lines and `#` comments
/// skipped), plus `KILN_TOKEN` from the environment.
pub fn load_tokens(file: Option<&Path>) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    if let Some(f) = file {
        let text = std::fs::read_to_string(f).map_err(|e| format!("cannot read token file {}: {e}", f.display()))?;
        for (i, line) in text.lines().enumerate() {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            if t.len() < MIN_TOKEN_LEN {
                return Err(format!(
                    "{}:{}: token too short ({} characters, need at least {MIN_TOKEN_LEN}); generate one with `openssl rand -hex 32`",
                    f.display(),
                    i + 1,
                    t.len()
                ));
            }
            tokens.push(t.to_string());
        }
    }
    if let Ok(t) = std::env::var("KILN_TOKEN") {
        let t = t.trim().to_string();
        if t.len() < MIN_TOKEN_LEN {
            return Err(format!("KILN_TOKEN is too short (need at least {MIN_TOKEN_LEN} characters)"));
        }
        tokens.push(t);
    }
    if tokens.is_empty() {
        return Err("no API token configured: pass --token-file FILE or set KILN_TOKEN (every request but /healthz needs one)".into());
    }
    Ok(tokens)
}

/// Constant-time equality of two tokens.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Whether `given` is one of `tokens` (every candidate is compared, so the time
/// does not reveal which one matched).
pub fn any_matches(tokens: &[String], given: &str) -> bool {
    tokens.iter().fold(false, |hit, t| same(t, given) | hit)
}

/// The token of an `Authorization: Bearer …` header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let h = header?.trim();
    let (scheme, token) = h.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// A fresh random token (256 bits, hex).
pub fn new_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_headers_are_parsed_strictly() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer   abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn tokens_compare_exactly() {
        let tokens = vec!["a".repeat(20), "b".repeat(20)];
        assert!(any_matches(&tokens, &"b".repeat(20)));
        assert!(!any_matches(&tokens, &"b".repeat(19)));
        assert!(!any_matches(&tokens, ""));
        let t = new_token().unwrap();
        assert_eq!(t.len(), 64);
        assert_ne!(t, new_token().unwrap());
    }

    #[test]
    fn token_files_reject_short_tokens_with_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tokens");
        std::fs::write(&f, "# ops\n\nshort\n").unwrap();
        let err = load_tokens(Some(&f)).unwrap_err();
        assert!(err.contains(":3:") && err.contains("too short"), "{err}");
        std::fs::write(&f, "# ops\n0123456789abcdef0123\n").unwrap();
        assert_eq!(load_tokens(Some(&f)).unwrap(), vec!["0123456789abcdef0123".to_string()]);
    }
}
