//! Name matching helpers: globs for capture specs and "did you mean" suggestions for errors.

/// One element of a glob pattern.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    Char(char),
    /// `?`: any one character.
    One,
    /// `*`: any run of characters, dots included.
    Star,
    /// `[a-c9]` / `[!0-3]` (or `[^0-3]`): one character in (or not in) the ranges.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

fn tokens(pattern: &str) -> Vec<Token> {
    let p: Vec<char> = pattern.chars().collect();
    let mut out = Vec::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '*' => out.push(Token::Star),
            '?' => out.push(Token::One),
            '[' => {
                // A class runs to the next ']' (a ']' right after '[' or '[!' is a member);
                // an unclosed '[' is a literal, as in Python's fnmatch.
                let mut j = i + 1;
                let negated = j < p.len() && (p[j] == '!' || p[j] == '^');
                if negated {
                    j += 1;
                }
                let first = j;
                while j < p.len() && (p[j] != ']' || j == first) {
                    j += 1;
                }
                if j >= p.len() {
                    out.push(Token::Char('['));
                } else {
                    let body = &p[first..j];
                    let mut ranges = Vec::new();
                    let mut k = 0;
                    while k < body.len() {
                        if k + 2 < body.len() && body[k + 1] == '-' {
                            ranges.push((body[k], body[k + 2]));
                            k += 3;
                        } else {
                            ranges.push((body[k], body[k]));
                            k += 1;
                        }
                    }
                    out.push(Token::Class { negated, ranges });
                    i = j;
                }
            }
            c => out.push(Token::Char(c)),
        }
        i += 1;
    }
    out
}

fn matches_one(token: &Token, c: char) -> bool {
    match token {
        Token::Char(x) => *x == c,
        Token::One => true,
        Token::Star => false,
        Token::Class { negated, ranges } => {
            ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
        }
    }
}

/// Whether a pattern has any glob syntax (`*`, `?`, `[...]`).
pub fn is_glob(pattern: &str) -> bool {
    tokens(pattern).iter().any(|t| !matches!(t, Token::Char(_)))
}

/// Glob match with Python `fnmatch` semantics (case-sensitive): `*` matches any run of
/// characters (dots included), `?` one character, `[0-3]` / `[!0-3]` one character in or not
/// in a set. The one matcher for hook names everywhere (captures, interventions, dumps).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p = tokens(pattern);
    let t: Vec<char> = text.chars().collect();
    // Iterative matcher with backtracking to the last star: linear in practice.
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut star_t) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != Token::Star && matches_one(&p[pi], t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == Token::Star {
            star = Some(pi);
            star_t = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            star_t += 1;
            ti = star_t;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == Token::Star {
        pi += 1;
    }
    pi == p.len()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The `k` names closest to `query` by edit distance (ties keep model order).
pub fn suggest_names(query: &str, names: &[String], k: usize) -> Vec<String> {
    let mut scored: Vec<(usize, usize)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (edit_distance(query, n), i))
        .collect();
    scored.sort();
    scored
        .into_iter()
        .take(k)
        .map(|(_, i)| names[i].clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_cases() {
        assert!(glob_match(
            "blocks.*.hook_resid_post",
            "blocks.12.hook_resid_post"
        ));
        assert!(!glob_match(
            "blocks.*.hook_resid_post",
            "blocks.12.hook_resid_pre"
        ));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("blocks.1?.hook_*", "blocks.12.hook_mlp_out"));
        assert!(!glob_match("blocks.1?.hook_*", "blocks.1.hook_mlp_out"));
        assert!(glob_match("blocks.*.attn.*", "blocks.3.attn.hook_q"));
        // Character classes, as Python's fnmatch has them.
        assert!(glob_match(
            "blocks.[0-3].hook_resid_post",
            "blocks.2.hook_resid_post"
        ));
        assert!(!glob_match(
            "blocks.[0-3].hook_resid_post",
            "blocks.4.hook_resid_post"
        ));
        assert!(!glob_match(
            "blocks.[0-3].hook_resid_post",
            "blocks.12.hook_resid_post"
        ));
        assert!(glob_match("blocks.[!0-3].hook_*", "blocks.7.hook_mlp_out"));
        assert!(glob_match("blocks.1[05].hook_*", "blocks.15.hook_mlp_out"));
        assert!(glob_match("a[b", "a[b"));
        assert!(is_glob("blocks.[0-3].x") && !is_glob("blocks.3.x"));
    }

    #[test]
    fn edit_distance_basics() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
