//! SLURM hostlists: `node[01-04,07],gpu-a[1-2]-ib` and friends.

use crate::error::SlurmError;

/// Expands a hostlist into host names, in order. Brackets hold comma-separated
/// numbers and ranges; zero padding of the lower bound is kept; several bracket
/// groups in one name form a cartesian product; commas outside brackets separate
/// names.
pub fn expand(list: &str) -> Result<Vec<String>, SlurmError> {
    let err = |reason: &str| SlurmError::Hostlist { list: list.to_string(), reason: reason.to_string() };
    let mut out = Vec::new();
    for item in split_top_level(list).map_err(|r| err(&r))? {
        if item.is_empty() {
            continue;
        }
        let mut names = vec![String::new()];
        let mut rest = item.as_str();
        while !rest.is_empty() {
            match rest.find('[') {
                None => {
                    if rest.contains(']') {
                        return Err(err("']' without '['"));
                    }
                    names.iter_mut().for_each(|n| n.push_str(rest));
                    rest = "";
                }
                Some(open) => {
                    let prefix = &rest[..open];
                    let close = rest[open..].find(']').map(|c| open + c).ok_or_else(|| err("'[' without ']'"))?;
                    let body = &rest[open + 1..close];
                    let numbers = expand_range_set(body).map_err(|r| err(&r))?;
                    let mut next = Vec::with_capacity(names.len() * numbers.len());
                    for n in &names {
                        for num in &numbers {
                            next.push(format!("{n}{prefix}{num}"));
                        }
                    }
                    names = next;
                    rest = &rest[close + 1..];
                }
            }
            if names.len() > 1_000_000 {
                return Err(err("expands to more than a million hosts"));
            }
        }
        out.extend(names);
    }
    Ok(out)
}

/// Splits at commas that are not inside brackets.
fn split_top_level(list: &str) -> Result<Vec<String>, String> {
    let (mut parts, mut cur, mut depth) = (Vec::new(), String::new(), 0i32);
    for c in list.trim().chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            _ => {}
        }
        if depth < 0 || depth > 1 {
            return Err("unbalanced or nested brackets".into());
        }
        if c == ',' && depth == 0 {
            parts.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    if depth != 0 {
        return Err("'[' without ']'".into());
    }
    parts.push(cur);
    Ok(parts)
}

/// `01-03,7` -> ["01", "02", "03", "7"].
fn expand_range_set(body: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for part in body.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err("empty range".into());
        }
        match part.split_once('-') {
            None => {
                if !part.chars().all(|c| c.is_ascii_digit()) {
                    return Err(format!("'{part}' is not a number"));
                }
                out.push(part.to_string());
            }
            Some((lo, hi)) => {
                let (a, b): (u64, u64) = (
                    lo.parse().map_err(|_| format!("'{lo}' is not a number"))?,
                    hi.parse().map_err(|_| format!("'{hi}' is not a number"))?,
                );
                if b < a {
                    return Err(format!("range {part} runs backwards"));
                }
                if b - a > 1_000_000 {
                    return Err(format!("range {part} is too large"));
                }
                let width = lo.len();
                out.extend((a..=b).map(|n| format!("{n:0width$}")));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn expands_ranges_lists_and_padding() {
        assert_eq!(expand("node[01-04,07]").unwrap(), ["node01", "node02", "node03", "node04", "node07"]);
        assert_eq!(expand("a1,b[2-3]").unwrap(), ["a1", "b2", "b3"]);
        assert_eq!(expand("gpu[8-10]-ib").unwrap(), ["gpu8-ib", "gpu9-ib", "gpu10-ib"]);
        assert_eq!(expand("r[1-2]n[1-2]").unwrap(), ["r1n1", "r1n2", "r2n1", "r2n2"]);
        assert_eq!(expand("single").unwrap(), ["single"]);
        assert_eq!(expand("n[098-101]").unwrap(), ["n098", "n099", "n100", "n101"]);
    }

    #[test]
    fn rejects_malformed_lists() {
        for bad in ["node[1-", "node1]", "n[3-1]", "n[a-b]", "n[[1]]", "n[]", "n[1-2000000]"] {
            assert!(expand(bad).is_err(), "{bad} should be refused");
        }
    }
}
