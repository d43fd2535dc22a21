//! Python string semantics the official IFEval code relies on: `str.isspace`/`strip`/`split()`,
//! `str.isupper`/`islower`, the `re` module's `\w`, `\s` and `\b` (Unicode, as CPython defines
//! them), and `json.loads` acceptance (which takes `NaN` and `Infinity`). Each helper mirrors one
//! CPython behaviour so the checkers can be ported line by line.

/// `str.isspace()` for one character (also what `re`'s `\s` matches): Unicode White_Space plus
/// the ASCII separators U+001C..U+001F that CPython counts as whitespace.
pub fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `re`'s `\s` as a character class body, for patterns.
pub const SPACE_CLASS: &str = r"\s\x1c-\x1f";

/// `re`'s `\w` as a class body: CPython's `str.isalnum()` (letters and numbers) or `_`.
/// (Rust's `\w` also takes combining marks, which CPython's does not.)
pub const WORD_CLASS: &str = r"\p{L}\p{N}_";

/// `\w` for one character.
pub fn is_word(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphanumeric() || c == '_';
    }
    use std::sync::OnceLock;
    static RE: OnceLock<regex::Regex> = OnceLock::new();
    let re = RE.get_or_init(|| regex::Regex::new(r"^[\p{L}\p{N}]$").expect("static pattern"));
    let mut buf = [0u8; 4];
    re.is_match(c.encode_utf8(&mut buf))
}

/// `str.strip()` with no arguments.
pub fn strip(s: &str) -> &str {
    s.trim_matches(is_space)
}

/// `str.rstrip()` with no arguments.
pub fn rstrip(s: &str) -> &str {
    s.trim_end_matches(is_space)
}

/// `str.split()` with no arguments: runs of whitespace separate, no empty pieces.
pub fn split_whitespace(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_space).filter(|p| !p.is_empty())
}

/// Titlecase letters (general category Lt): `str.isupper`/`islower` treat them as neither.
fn is_title(c: char) -> bool {
    matches!(c as u32, 0x01C5 | 0x01C8 | 0x01CB | 0x01F2 | 0x1F88..=0x1F8F | 0x1F98..=0x1F9F
        | 0x1FA8..=0x1FAF | 0x1FBC | 0x1FCC | 0x1FFC)
}

/// `str.isupper()`: at least one cased character and no lowercase or titlecase one.
pub fn is_upper(s: &str) -> bool {
    let mut cased = false;
    for c in s.chars() {
        if c.is_lowercase() || is_title(c) {
            return false;
        }
        cased |= c.is_uppercase();
    }
    cased
}

/// `str.islower()`: at least one cased character and no uppercase or titlecase one.
pub fn is_lower(s: &str) -> bool {
    let mut cased = false;
    for c in s.chars() {
        if c.is_uppercase() || is_title(c) {
            return false;
        }
        cased |= c.is_lowercase();
    }
    cased
}

/// `ch.isupper()` for a one-character string (CPython's fast path: the Uppercase property).
pub fn char_is_upper(c: char) -> bool {
    c.is_uppercase()
}

/// `ch.islower()` for a one-character string.
pub fn char_is_lower(c: char) -> bool {
    c.is_lowercase()
}

/// Whether `json.loads(s)` succeeds: strict JSON plus `NaN`, `Infinity`, `-Infinity`; leading
/// and trailing JSON whitespace (space, tab, CR, LF) only; control characters are refused
/// inside strings; lone surrogate escapes are accepted. Nesting is limited like CPython's
/// recursion limit (about 1000 levels).
pub fn json_loads_ok(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = skip_ws(b, 0);
    match value(b, i, 0) {
        Some(end) => {
            i = skip_ws(b, end);
            i == b.len()
        }
        None => false,
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

fn value(b: &[u8], i: usize, depth: usize) -> Option<usize> {
    if depth > 990 {
        return None;
    }
    let rest = &b[i.min(b.len())..];
    match rest.first()? {
        b'{' => {
            let mut j = skip_ws(b, i + 1);
            if b.get(j) == Some(&b'}') {
                return Some(j + 1);
            }
            loop {
                if b.get(j) != Some(&b'"') {
                    return None;
                }
                j = skip_ws(b, string(b, j)?);
                if b.get(j) != Some(&b':') {
                    return None;
                }
                j = skip_ws(b, value(b, skip_ws(b, j + 1), depth + 1)?);
                match b.get(j)? {
                    b',' => j = skip_ws(b, j + 1),
                    b'}' => return Some(j + 1),
                    _ => return None,
                }
            }
        }
        b'[' => {
            let mut j = skip_ws(b, i + 1);
            if b.get(j) == Some(&b']') {
                return Some(j + 1);
            }
            loop {
                j = skip_ws(b, value(b, j, depth + 1)?);
                match b.get(j)? {
                    b',' => j = skip_ws(b, j + 1),
                    b']' => return Some(j + 1),
                    _ => return None,
                }
            }
        }
        b'"' => string(b, i),
        _ => {
            for lit in ["null", "true", "false", "NaN", "Infinity", "-Infinity"] {
                if rest.starts_with(lit.as_bytes()) {
                    return Some(i + lit.len());
                }
            }
            number(b, i)
        }
    }
}

fn string(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        match *b.get(j)? {
            b'"' => return Some(j + 1),
            b'\\' => {
                match *b.get(j + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => j += 2,
                    b'u' => {
                        let hex = b.get(j + 2..j + 6)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return None;
                        }
                        j += 6;
                    }
                    _ => return None,
                }
            }
            c if c < 0x20 => return None,
            _ => j += 1,
        }
    }
}

/// CPython's NUMBER_RE: `(-?(?:0|[1-9]\d*))(\.\d+)?([eE][-+]?\d+)?` (ASCII digits).
fn number(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i;
    if b.get(j) == Some(&b'-') {
        j += 1;
    }
    let digits = |j: usize| b[j.min(b.len())..].iter().take_while(|c| c.is_ascii_digit()).count();
    match b.get(j)? {
        b'0' => j += 1,
        b'1'..=b'9' => j += digits(j),
        _ => return None,
    }
    if b.get(j) == Some(&b'.') && digits(j + 1) > 0 {
        j += 1 + digits(j + 1);
    }
    if matches!(b.get(j), Some(b'e' | b'E')) {
        let mut k = j + 1;
        if matches!(b.get(k), Some(b'-' | b'+')) {
            k += 1;
        }
        if digits(k) > 0 {
            j = k + digits(k);
        }
    }
    Some(j)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_predicates_follow_python() {
        assert!(is_upper("HELLO, WORLD 123"));
        assert!(!is_upper("123 !!"), "no cased character");
        assert!(!is_upper("HELLo"));
        assert!(is_lower("hello 123"));
        assert!(!is_lower("ǅ"), "titlecase is neither");
        assert!(is_upper("ΣΑΣ") && is_lower("σας"));
    }

    #[test]
    fn whitespace_and_word_chars() {
        assert_eq!(strip("\u{1f} x \u{3000}"), "x");
        assert_eq!(split_whitespace(" a\u{a0}b  c ").collect::<Vec<_>>(), ["a", "b", "c"]);
        assert!(is_word('é') && is_word('5') && is_word('_') && !is_word('-'));
        assert!(!is_word('\u{93f}'), "Devanagari vowel sign is a mark, not \\w in Python");
    }

    #[test]
    fn json_like_python() {
        assert!(json_loads_ok(" {\"a\": [1, 2.5e3, NaN, -Infinity, null]} "));
        assert!(json_loads_ok("\"\\ud800\""));
        assert!(!json_loads_ok("{\"a\": 1,}"));
        assert!(!json_loads_ok("01"));
        assert!(!json_loads_ok("{'a': 1}"));
        assert!(!json_loads_ok("\"tab\tinside\""));
        assert!(!json_loads_ok(""));
        assert!(json_loads_ok("1."[..1].as_ref()) && !json_loads_ok("1."));
    }
}
