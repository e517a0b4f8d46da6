//! Name matching helpers: globs for capture specs and "did you mean" suggestions for errors.

/// Glob match where `*` matches any run of characters (including dots) and `?` one character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matcher with backtracking to the last star: linear in practice.
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut star_t) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
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
    while pi < p.len() && p[pi] == '*' {
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
    }

    #[test]
    fn edit_distance_basics() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
