//! `check_following` of every instruction, ported from lm-eval 0.4.13's `instructions.py` line by
//! line, quirks included: keywords are used as (case-insensitive) regular expressions, paragraphs
//! split on `\s?\*\*\*\s?` with empty inner paragraphs failing, sections counted as matches of
//! `\s?SPLITER\s?\d+\s?`, highlights counted once as `*x*` and again as `**x**`, JSON after
//! stripping ``` fences, the postscript's own patterns for `P.S.` and `P.P.S`, and so on.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use fancy_regex::Regex as FancyRegex;
use regex::Regex;

use super::instructions::Instruction;
use super::punkt::Punkt;
use super::pystr::{self, SPACE_CLASS};
use super::{lang, words};

const CONSTRAINED_RESPONSE_OPTIONS: [&str; 3] = ["My answer is yes.", "My answer is no.", "My answer is maybe."];

fn static_re(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pattern).expect("static pattern"))
}

/// A pattern built from data (a keyword, a section splitter, a postscript marker), compiled once.
/// Python would raise on a pattern `re` cannot compile; such a pattern is matched literally.
fn dynamic_re(pattern: String) -> FancyRegex {
    static CACHE: OnceLock<Mutex<HashMap<String, FancyRegex>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = match cache.lock() {
        Ok(m) => m,
        Err(poisoned) => poisoned.into_inner(),
    };
    map.entry(pattern.clone())
        .or_insert_with(|| {
            FancyRegex::new(&pattern).unwrap_or_else(|_| {
                FancyRegex::new(&fancy_regex::escape(&pattern)).expect("escaped pattern compiles")
            })
        })
        .clone()
}

/// Python `re` spelling of a data pattern for fancy-regex: `\s`/`\S` as CPython's classes.
fn py_pattern(p: &str) -> String {
    p.replace(r"\s", &format!("[{SPACE_CLASS}]")).replace(r"\S", &format!("[^{SPACE_CLASS}]"))
}

fn count_matches(re: &FancyRegex, text: &str) -> usize {
    re.find_iter(text).filter(|m| m.is_ok()).count()
}

impl Instruction {
    /// `instruction.check_following(value)`.
    pub fn check_following(&self, value: &str, punkt: &Punkt) -> bool {
        use Instruction as I;
        match self {
            I::KeywordExistence { keywords } => keywords
                .iter()
                .all(|k| dynamic_re(format!("(?i){}", py_pattern(k))).is_match(value).unwrap_or(false)),
            I::KeywordFrequency { keyword, frequency, relation } => {
                let n = count_matches(&dynamic_re(format!("(?i){}", py_pattern(keyword))), value);
                relation.holds(n, *frequency)
            }
            I::ForbiddenWords { words } => !words.iter().any(|w| {
                let b = format!(r"(?:(?<=[{0}])(?![{0}])|(?<![{0}])(?=[{0}]))", pystr::WORD_CLASS);
                dynamic_re(format!("(?i){b}{}{b}", py_pattern(w))).is_match(value).unwrap_or(false)
            }),
            I::LetterFrequency { letter, frequency, relation } => {
                relation.holds(value.to_lowercase().chars().filter(|c| c == letter).count(), *frequency)
            }
            I::ResponseLanguage { language } => lang::is_language(value, language),
            I::NumberSentences { num_sentences, relation } => relation.holds(punkt.count(value), *num_sentences),
            I::NumberParagraphs { num_paragraphs } => {
                static RE: OnceLock<Regex> = OnceLock::new();
                let re = static_re(&RE, &format!(r"[{SPACE_CLASS}]?\*\*\*[{SPACE_CLASS}]?"));
                let paragraphs: Vec<&str> = re.split(value).collect();
                let mut n = paragraphs.len() as i64;
                for (i, p) in paragraphs.iter().enumerate() {
                    if pystr::strip(p).is_empty() {
                        if i == 0 || i == paragraphs.len() - 1 {
                            n -= 1;
                        } else {
                            return false;
                        }
                    }
                }
                n == *num_paragraphs
            }
            I::NumberWords { num_words, relation } => relation.holds(words::count_words(value), *num_words),
            I::NthParagraphFirstWord { num_paragraphs, nth_paragraph, first_word } => {
                let paragraphs: Vec<&str> = value.split("\n\n").collect();
                let n = paragraphs.iter().filter(|p| !pystr::strip(p).is_empty()).count() as i64;
                if *nth_paragraph > n || *nth_paragraph < 1 {
                    return false;
                }
                let paragraph = pystr::strip(paragraphs[(*nth_paragraph - 1) as usize]);
                let Some(word) = pystr::split_whitespace(paragraph).next() else { return false };
                let word = word.trim_start_matches('\'').trim_start_matches('"');
                let mut first = String::new();
                for c in word.chars() {
                    if matches!(c, '.' | ',' | '?' | '!' | '\'' | '"') {
                        break;
                    }
                    first.extend(c.to_lowercase());
                }
                n == *num_paragraphs && first == *first_word
            }
            I::Placeholders { num_placeholders } => {
                static RE: OnceLock<Regex> = OnceLock::new();
                static_re(&RE, r"\[.*?\]").find_iter(value).count() as i64 >= *num_placeholders
            }
            I::Postscript { marker } => {
                let lower = value.to_lowercase();
                let pattern = match marker.as_str() {
                    "P.P.S" => r"\s*p\.\s?p\.\s?s.*$".to_string(),
                    "P.S." => r"\s*p\.\s?s\..*$".to_string(),
                    other => format!(r"\s*{}.*$", other.to_lowercase()),
                };
                dynamic_re(format!("(?m){}", py_pattern(&pattern))).is_match(&lower).unwrap_or(false)
            }
            I::BulletLists { num_bullets } => {
                static STAR: OnceLock<Regex> = OnceLock::new();
                static DASH: OnceLock<Regex> = OnceLock::new();
                let star = static_re(&STAR, &format!(r"(?m)^[{SPACE_CLASS}]*\*[^*].*$"));
                let dash = static_re(&DASH, &format!(r"(?m)^[{SPACE_CLASS}]*-.*$"));
                (star.find_iter(value).count() + dash.find_iter(value).count()) as i64 == *num_bullets
            }
            I::ConstrainedResponse => {
                let v = pystr::strip(value);
                CONSTRAINED_RESPONSE_OPTIONS.iter().any(|o| v.contains(o))
            }
            I::HighlightedSections { num_highlights } => {
                static ONE: OnceLock<Regex> = OnceLock::new();
                static TWO: OnceLock<Regex> = OnceLock::new();
                let one = static_re(&ONE, r"\*[^\n*]*\*").find_iter(value)
                    .filter(|m| !pystr::strip(m.as_str().trim_matches('*')).is_empty())
                    .count();
                let two = static_re(&TWO, r"\*\*[^\n*]*\*\*").find_iter(value)
                    .filter(|m| !pystr::strip(&m.as_str()[2..m.as_str().len() - 2]).is_empty())
                    .count();
                (one + two) as i64 >= *num_highlights
            }
            I::MultipleSections { spliter, num_sections } => {
                let re = dynamic_re(py_pattern(&format!(r"\s?{spliter}\s?\d+\s?")));
                count_matches(&re, value) as i64 >= *num_sections
            }
            I::JsonFormat => {
                let mut v = pystr::strip(value);
                for prefix in ["```json", "```Json", "```JSON", "```"] {
                    v = v.strip_prefix(prefix).unwrap_or(v);
                }
                v = v.strip_suffix("```").unwrap_or(v);
                pystr::json_loads_ok(pystr::strip(v))
            }
            I::Title => {
                static RE: OnceLock<Regex> = OnceLock::new();
                static_re(&RE, r"<<[^\n]+>>").find_iter(value).any(|m| {
                    !pystr::strip(m.as_str().trim_start_matches('<').trim_end_matches('>')).is_empty()
                })
            }
            I::TwoResponses => {
                let parts: Vec<&str> = value.split("******").collect();
                let mut valid = Vec::new();
                for (i, r) in parts.iter().enumerate() {
                    if pystr::strip(r).is_empty() {
                        if i != 0 && i != parts.len() - 1 {
                            return false;
                        }
                    } else {
                        valid.push(*r);
                    }
                }
                valid.len() == 2 && pystr::strip(valid[0]) != pystr::strip(valid[1])
            }
            I::RepeatPrompt { prompt_to_repeat } => pystr::strip(value)
                .to_lowercase()
                .starts_with(&pystr::strip(prompt_to_repeat).to_lowercase()),
            I::EndChecker { end_phrase } => pystr::strip(value)
                .trim_matches('"')
                .to_lowercase()
                .ends_with(&pystr::strip(end_phrase).to_lowercase()),
            I::CapitalWordFrequency { frequency, relation } => {
                relation.holds(words::count_capital_words(punkt, value), *frequency)
            }
            I::EnglishCapital => pystr::is_upper(value) && lang::is_language(value, "en"),
            I::EnglishLowercase => pystr::is_lower(value) && lang::is_language(value, "en"),
            I::NoComma => !value.contains(','),
            I::Quotation => {
                let v = pystr::strip(value);
                v.chars().count() > 1 && v.starts_with('"') && v.ends_with('"')
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::instructions::Relation;
    use super::*;

    fn punkt() -> Option<Punkt> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/eval/punkt_tab/english");
        dir.is_dir().then(|| Punkt::load(&dir).expect("punkt loads"))
    }

    #[test]
    fn format_checkers_follow_the_python_quirks() {
        let Some(p) = punkt() else {
            eprintln!("skipped: models/eval/punkt_tab/english missing (bash benches/eval/fetch.sh ifeval)");
            return;
        };
        use Instruction as I;
        let paras = I::NumberParagraphs { num_paragraphs: 2 };
        assert!(paras.check_following("a\n***\nb", &p));
        assert!(paras.check_following("***\na\n***\nb\n***", &p), "empty first/last pieces do not count");
        assert!(!paras.check_following("a\n***\n\n***\nb", &p), "an empty inner paragraph fails");
        let hl = I::HighlightedSections { num_highlights: 2 };
        assert!(!hl.check_following("**bold**", &p), "**bold** is one highlight: `*[^*]*\\*` finds only empty `**`");
        assert!(hl.check_following("*a* **b**", &p));
        assert!(!hl.check_following("*one* and * *", &p));
        let json = I::JsonFormat;
        assert!(json.check_following("```json\n{\"a\": NaN}\n```", &p));
        assert!(!json.check_following("```json\n{\"a\": 1}\n``` trailing", &p));
        let sections = I::MultipleSections { spliter: "Section".into(), num_sections: 2 };
        assert!(sections.check_following("Section 1\nx\nSection 2\ny", &p));
        assert!(!sections.check_following("Section one\nSECTION 2", &p));
        let ps = I::Postscript { marker: "P.P.S".into() };
        assert!(ps.check_following("Body.\n\np.p.s. later", &p));
        assert!(!ps.check_following("Body. PS later", &p));
        let kw = I::KeywordFrequency { keyword: "war".into(), frequency: 2, relation: Relation::AtLeast };
        assert!(kw.check_following("The WAR was a warning.", &p), "no word boundaries in keywords:frequency");
        let fw = I::ForbiddenWords { words: vec!["war".into()] };
        assert!(fw.check_following("a warning", &p) && !fw.check_following("a War.", &p));
        let end = I::EndChecker { end_phrase: "Any other questions?".into() };
        assert!(end.check_following("Text. any other questions?\"  ", &p));
        let q = I::Quotation;
        assert!(q.check_following(" \"x\" ", &p) && !q.check_following("\"", &p));
        let bullets = I::BulletLists { num_bullets: 2 };
        assert!(bullets.check_following("* a\n- b\n**c**", &p));
        let first = I::NthParagraphFirstWord { num_paragraphs: 2, nth_paragraph: 2, first_word: "summary".into() };
        assert!(first.check_following("Intro.\n\n\"Summary, the rest.", &p));
        assert!(!first.check_following("Intro.\n\nSummary: the rest.", &p), "`:` is not stripped");
        assert!(!first.check_following("Intro.\n\nSummaries here.", &p));
    }
}
