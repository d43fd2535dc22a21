//! NLTK's Punkt sentence tokenizer, decision part only (no training), as `nltk.sent_tokenize` /
//! `PunktTokenizer("english").tokenize` run it in nltk 3.9–3.10 with `realign_boundaries=True`:
//! the punkt word tokenizer regex, the first (type-based) and second (collocation, orthographic,
//! frequent-starter) annotation passes, the potential-end-context matching and the boundary
//! realignment. Parameters are read at run time from a `punkt_tab` language directory
//! (`abbrev_types.txt`, `collocations.tab`, `ortho_context.tab`, `sent_starters.txt`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use fancy_regex::Regex as FancyRegex;
use regex::Regex;

use super::pystr::{self, SPACE_CLASS};
use crate::{Error, Result};

const ORTHO_BEG_UC: u32 = 1 << 1;
const ORTHO_MID_UC: u32 = 1 << 2;
const ORTHO_UNK_UC: u32 = 1 << 3;
const ORTHO_BEG_LC: u32 = 1 << 4;
const ORTHO_MID_LC: u32 = 1 << 5;
const ORTHO_UNK_LC: u32 = 1 << 6;
const ORTHO_UC: u32 = ORTHO_BEG_UC + ORTHO_MID_UC + ORTHO_UNK_UC;
const ORTHO_LC: u32 = ORTHO_BEG_LC + ORTHO_MID_LC + ORTHO_UNK_LC;

/// Characters that cannot appear within words (`PunktLanguageVars._re_non_word_chars`).
const NON_WORD: &str = r#")";}\]*:@'({\[‘’“”«»?!"#;

/// A loaded Punkt model (English by default).
pub struct Punkt {
    abbrev_types: HashSet<String>,
    collocations: HashSet<(String, String)>,
    sent_starters: HashSet<String>,
    ortho_context: HashMap<String, u32>,
    word_re: FancyRegex,
    realign_re: FancyRegex,
    numeric_re: Regex,
}

struct Token<'a> {
    tok: &'a str,
    typ: String,
    period_final: bool,
    sentbreak: bool,
    abbr: bool,
    ellipsis: bool,
}

impl Token<'_> {
    fn type_no_period(&self) -> &str {
        if self.typ.chars().count() > 1 && self.typ.ends_with('.') {
            &self.typ[..self.typ.len() - 1]
        } else {
            &self.typ
        }
    }
    fn type_no_sentperiod(&self) -> &str {
        if self.sentbreak {
            self.type_no_period()
        } else {
            &self.typ
        }
    }
    fn first_upper(&self) -> bool {
        self.tok.chars().next().is_some_and(pystr::char_is_upper)
    }
    fn first_lower(&self) -> bool {
        self.tok.chars().next().is_some_and(pystr::char_is_lower)
    }
    /// `[^\W\d]\.$`: one letter (a `\w` that is not a decimal digit) and a period.
    fn is_initial(&self) -> bool {
        let mut c = self.tok.chars();
        matches!((c.next(), c.next(), c.next()), (Some(a), Some('.'), None)
            if pystr::is_word(a) && !a.is_numeric_decimal())
    }
}

trait Decimal {
    fn is_numeric_decimal(self) -> bool;
}
impl Decimal for char {
    /// `\d` in Python's `re`: general category Nd (what Rust's regex `\d` matches too).
    fn is_numeric_decimal(self) -> bool {
        use std::sync::OnceLock;
        static RE: OnceLock<Regex> = OnceLock::new();
        let re = RE.get_or_init(|| Regex::new(r"^\d$").expect("static pattern"));
        let mut buf = [0u8; 4];
        re.is_match(self.encode_utf8(&mut buf))
    }
}

/// One potential sentence end: the `[.?!]` at `start`, the lookahead `after_tok` ending at
/// `after_end`, and where `next_tok` starts (absent when `after_tok` is a punctuation mark).
struct EndContext {
    start: usize,
    after_end: usize,
    next_tok: Option<usize>,
}

fn read_lines(dir: &Path, name: &str) -> Result<Vec<String>> {
    let path: PathBuf = dir.join(name);
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Io { path, source })?;
    // Python's text mode (universal newlines) then `rm_nl`: drop one trailing "\n" per line.
    Ok(text.replace("\r\n", "\n").lines().map(str::to_string).collect())
}

impl Punkt {
    /// Load the four parameter files of a `punkt_tab` language directory.
    pub fn load(dir: &Path) -> Result<Self> {
        let bad = |file: &str, line: usize, what: &str| {
            Error::Config(format!("{}: line {line}: {what}", dir.join(file).display()))
        };
        let mut collocations = HashSet::new();
        for (n, line) in read_lines(dir, "collocations.tab")?.into_iter().enumerate() {
            let (a, b) = line.split_once('\t').ok_or_else(|| bad("collocations.tab", n + 1, "expected two tab-separated words"))?;
            collocations.insert((a.to_string(), b.to_string()));
        }
        let mut ortho_context = HashMap::new();
        for (n, line) in read_lines(dir, "ortho_context.tab")?.into_iter().enumerate() {
            let (a, b) = line.split_once('\t').ok_or_else(|| bad("ortho_context.tab", n + 1, "expected `word<TAB>flags`"))?;
            let flags = b.trim().parse::<u32>().map_err(|_| bad("ortho_context.tab", n + 1, "flags are not an integer"))?;
            ortho_context.insert(a.to_string(), flags);
        }
        let ws = SPACE_CLASS;
        let multi = format!(r"(?:\-{{2,}}|\.{{2,}}|(?:\.[{ws}]){{2,}}\.)");
        let non_word = format!("[{}]", regex::escape(NON_WORD));
        let word_start = r#"[^("`{\[:;&#*@)}\]\-,]"#;
        let word_pattern = format!(
            r"{multi}|(?={word_start})[^{ws}]+?(?=[{ws}]|$|{non_word}|{multi}|,(?=$|[{ws}]|{non_word}|{multi}))|[^{ws}]"
        );
        let compile = |p: &str| FancyRegex::new(p).map_err(|e| Error::Other(format!("punkt pattern: {e}")));
        Ok(Punkt {
            abbrev_types: read_lines(dir, "abbrev_types.txt")?.into_iter().collect(),
            sent_starters: read_lines(dir, "sent_starters.txt")?.into_iter().collect(),
            collocations,
            ortho_context,
            word_re: compile(&word_pattern)?,
            realign_re: compile(&format!(r#"(?m)\A["')\]}}‘’“”«»]+?(?:[{ws}]+|(?=--)|$)"#))?,
            numeric_re: Regex::new(r"^-?[\.,]?\d[\d,\.-]*\.?$").map_err(|e| Error::Other(e.to_string()))?,
        })
    }

    /// Sentences of `text`, as `PunktSentenceTokenizer.tokenize` returns them.
    pub fn sentences<'a>(&self, text: &'a str) -> Vec<&'a str> {
        self.spans(text).into_iter().map(|(s, e)| &text[s..e]).collect()
    }

    /// Number of sentences (`instructions_util.count_sentences`).
    pub fn count(&self, text: &str) -> usize {
        self.spans(text).len()
    }

    /// Byte spans of the sentences, boundaries realigned.
    pub fn spans(&self, text: &str) -> Vec<(usize, usize)> {
        let slices = self.slices_from_text(text);
        let mut out = Vec::new();
        let mut realign = 0usize;
        for (i, &(s1, e1)) in slices.iter().enumerate() {
            let s1 = s1 + realign;
            let Some(&(s2, e2)) = slices.get(i + 1) else {
                if s1 < e1 {
                    out.push((s1, e1));
                }
                continue;
            };
            let next = if s2 < e2 { &text[s2..e2] } else { "" };
            match self.realign_re.find(next).ok().flatten() {
                Some(m) => {
                    out.push((s1, s2 + pystr::rstrip(m.as_str()).len()));
                    realign = m.end();
                }
                None => {
                    realign = 0;
                    if s1 < e1 {
                        out.push((s1, e1));
                    }
                }
            }
        }
        out
    }

    fn slices_from_text(&self, text: &str) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut last_break = 0;
        for (m, ctx_start) in self.potential_end_contexts(text) {
            if self.text_contains_sentbreak(&text[ctx_start..m.after_end]) {
                out.push((last_break, m.start + 1));
                last_break = m.next_tok.unwrap_or(m.start + 1);
            }
        }
        out.push((last_break, pystr::rstrip(text).len()));
        out
    }

    /// `period_context_re().finditer` and `_match_potential_end_contexts`: each candidate with
    /// the start of its context (the word before it, overlaps removed as nltk does).
    fn potential_end_contexts(&self, text: &str) -> Vec<(EndContext, usize)> {
        let mut matches = Vec::new();
        for (i, c) in text.char_indices() {
            if !matches!(c, '.' | '?' | '!') {
                continue;
            }
            let j = i + 1;
            let rest = &text[j..];
            let Some(n) = rest.chars().next() else { continue };
            if NON_WORD.contains(n) {
                matches.push(EndContext { start: i, after_end: j + n.len_utf8(), next_tok: None });
                continue;
            }
            let ws = rest.len() - rest.trim_start_matches(pystr::is_space).len();
            if ws == 0 || ws == rest.len() {
                continue;
            }
            let tail = &rest[ws..];
            let tok = tail.len() - tail.trim_start_matches(|c| !pystr::is_space(c)).len();
            matches.push(EndContext { start: i, after_end: j + ws + tok, next_tok: Some(j + ws) });
        }
        let mut out = Vec::new();
        let (mut prev_start, mut prev_stop) = (0usize, 0usize);
        let mut prev: Option<EndContext> = None;
        for m in matches {
            let before = &text[prev_stop..m.start];
            let last_ws = before.bytes().rposition(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c));
            let word_start = match last_ws {
                Some(k) if k > 0 => k + prev_stop + 1,
                _ => prev_start,
            };
            if let Some(p) = prev.take() {
                if prev_stop <= word_start {
                    out.push((p, prev_start));
                }
            }
            prev_start = word_start;
            prev_stop = m.start;
            prev = Some(m);
        }
        if let Some(p) = prev {
            out.push((p, prev_start));
        }
        out
    }

    fn tokenize_words<'a>(&self, text: &'a str) -> Vec<Token<'a>> {
        let mut out = Vec::new();
        for line in text.split('\n') {
            if pystr::strip(line).is_empty() {
                continue;
            }
            for m in self.word_re.find_iter(line).flatten() {
                let tok = m.as_str();
                let lower = tok.to_lowercase();
                let typ = if self.numeric_re.is_match(&lower) { "##number##".to_string() } else { lower };
                out.push(Token { tok, typ, period_final: tok.ends_with('.'), sentbreak: false, abbr: false, ellipsis: false });
            }
        }
        out
    }

    fn text_contains_sentbreak(&self, text: &str) -> bool {
        let mut toks = self.tokenize_words(text);
        for t in toks.iter_mut() {
            self.first_pass(t);
        }
        for i in 0..toks.len() {
            if i + 1 < toks.len() {
                let (a, b) = toks.split_at_mut(i + 1);
                self.second_pass(&mut a[i], &b[0]);
                if a[i].sentbreak {
                    return true;
                }
            }
        }
        false
    }

    fn first_pass(&self, t: &mut Token) {
        let tok = t.tok;
        if matches!(tok, "." | "?" | "!") {
            t.sentbreak = true;
        } else if tok.len() >= 2 && tok.bytes().all(|b| b == b'.') {
            t.ellipsis = true;
        } else if t.period_final && !tok.ends_with("..") {
            let stem = tok[..tok.len() - 1].to_lowercase();
            let last = stem.rsplit('-').next().unwrap_or("");
            if self.abbrev_types.contains(&stem) || self.abbrev_types.contains(last) {
                t.abbr = true;
            } else {
                t.sentbreak = true;
            }
        }
    }

    fn second_pass(&self, t1: &mut Token, t2: &Token) {
        if !t1.period_final {
            return;
        }
        let typ = t1.type_no_period().to_string();
        let next_typ = t2.type_no_sentperiod();
        let initial = t1.is_initial();
        if self.collocations.contains(&(typ.clone(), next_typ.to_string())) {
            t1.sentbreak = false;
            t1.abbr = true;
            return;
        }
        if (t1.abbr || t1.ellipsis) && !initial {
            if self.ortho_heuristic(t2) == Some(true) {
                t1.sentbreak = true;
                return;
            }
            if t2.first_upper() && self.sent_starters.contains(next_typ) {
                t1.sentbreak = true;
                return;
            }
        }
        if initial || typ == "##number##" {
            let starter = self.ortho_heuristic(t2);
            if starter == Some(false) {
                t1.sentbreak = false;
                t1.abbr = true;
                return;
            }
            let ortho = self.ortho_context.get(next_typ).copied().unwrap_or(0);
            if starter.is_none() && initial && t2.first_upper() && ortho & ORTHO_LC == 0 {
                t1.sentbreak = false;
                t1.abbr = true;
            }
        }
    }

    /// `Some(true)`: starts a sentence; `Some(false)`: does not; `None`: "unknown".
    fn ortho_heuristic(&self, t: &Token) -> Option<bool> {
        if matches!(t.tok, ";" | ":" | "," | "." | "!" | "?") {
            return Some(false);
        }
        let ortho = self.ortho_context.get(t.type_no_sentperiod()).copied().unwrap_or(0);
        if t.first_upper() && ortho & ORTHO_LC != 0 && ortho & ORTHO_MID_UC == 0 {
            return Some(true);
        }
        if t.first_lower() && (ortho & ORTHO_UC != 0 || ortho & ORTHO_BEG_LC == 0) {
            return Some(false);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn english() -> Option<Punkt> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/eval/punkt_tab/english");
        dir.is_dir().then(|| Punkt::load(&dir).expect("punkt parameters load"))
    }

    #[test]
    fn splits_like_nltk() {
        let Some(p) = english() else {
            eprintln!("skipped: models/eval/punkt_tab/english missing (bash benches/eval/fetch.sh ifeval)");
            return;
        };
        // Known nltk.sent_tokenize results.
        assert_eq!(p.sentences("Very bad acting!!! I promise."), ["Very bad acting!!!", "I promise."]);
        assert_eq!(p.sentences("(Sent1.) Sent2."), ["(Sent1.)", "Sent2."]);
        assert_eq!(p.sentences("Mr. Smith went to Washington. He arrived at 3 p.m. today."),
            ["Mr. Smith went to Washington.", "He arrived at 3 p.m. today."]);
        assert_eq!(p.count("Hello world"), 1);
        assert_eq!(p.count("   "), 0);
        assert_eq!(p.count("One. Two. Three."), 3);
    }
}
