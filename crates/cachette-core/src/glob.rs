//! Redis-compatible glob matching (`*`, `?`, `[abc]`, `[a-z]`, `[^a]`, `\x`),
//! so `delete_pattern` means the same on every tier.

/// Escapes the glob characters (`*`, `?`, `[`, `]`, `\\`) of `raw`, so that
/// it matches only itself inside a pattern.
///
/// ```
/// use cachette_core::{escape_glob, glob_match};
/// assert_eq!(escape_glob("a*b"), "a\\*b");
/// assert!(glob_match(&format!("{}*", escape_glob("p[1]:")), "p[1]:x"));
/// ```
pub fn escape_glob(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len() + 4);
    for c in raw.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Whether `text` matches the Redis-style glob `pattern`.
///
/// ```
/// use cachette_core::glob_match;
/// assert!(glob_match("user:*:name", "user:42:name"));
/// assert!(glob_match("h?llo", "hallo"));
/// assert!(glob_match("h[ae]llo", "hello"));
/// assert!(!glob_match("h[^e]llo", "hello"));
/// assert!(glob_match("a\\*b", "a*b"));
/// assert!(!glob_match("a\\*b", "axb"));
/// ```
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    matches(&p, &t)
}

fn matches(p: &[char], t: &[char]) -> bool {
    // Iterative with backtracking to the last `*` (linear in practice).
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = class(p, pi, t[ti]) {
                        if matched {
                            pi = next;
                            ti += 1;
                            continue;
                        }
                    } else if t[ti] == '[' {
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                }
                '\\' if pi + 1 < p.len() => {
                    if p[pi + 1] == t[ti] {
                        pi += 2;
                        ti += 1;
                        continue;
                    }
                }
                c => {
                    if c == t[ti] {
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((spi, sti)) => {
                pi = spi + 1;
                ti = sti + 1;
                star = Some((spi, sti + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Matches `c` against the class starting at `p[start] == '['`; returns
/// whether it matched and the index after the class, or `None` when the class
/// is not closed (then `[` is literal).
fn class(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = p.get(i) == Some(&'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() {
        let ch = p[i];
        if ch == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if ch == '\\' && i + 1 < p.len() {
            matched |= p[i + 1] == c;
            i += 2;
        } else if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            let (lo, hi) = if ch <= p[i + 2] {
                (ch, p[i + 2])
            } else {
                (p[i + 2], ch)
            };
            matched |= lo <= c && c <= hi;
            i += 3;
        } else {
            matched |= ch == c;
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn redis_glob_cases() {
        assert!(glob_match("*", ""));
        assert!(glob_match("a*", "abc"));
        assert!(glob_match("*c", "abc"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("[a-c]x", "bx"));
        assert!(!glob_match("[a-c]x", "dx"));
        assert!(glob_match("p:1:user_*", "p:1:user_7"));
        assert!(!glob_match("p:1:user_*", "p:2:user_7"));
    }
}
