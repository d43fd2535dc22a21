//! Word counting as IFEval does it: `instructions_util.count_words` (nltk's
//! `RegexpTokenizer(r"\w+")`, Python's Unicode `\w`) and `nltk.word_tokenize` (Punkt sentences,
//! then `NLTKWordTokenizer`, the improved Treebank tokenizer of nltk 3.9–3.10, rule by rule) which
//! `change_case:capital_word_frequency` counts upper-case words with.

use std::sync::OnceLock;

use fancy_regex::Regex as FancyRegex;
use regex::Regex;

use super::punkt::Punkt;
use super::pystr::{self, SPACE_CLASS, WORD_CLASS};

/// `count_words`: the number of `\w+` runs.
pub fn count_words(text: &str) -> usize {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(&format!("[{WORD_CLASS}]+")).expect("static pattern"))
        .find_iter(text)
        .count()
}

struct Rules {
    starting_quotes: Vec<(FancyRegex, &'static str)>,
    punctuation: Vec<(FancyRegex, &'static str)>,
    parens: (FancyRegex, &'static str),
    double_dashes: (FancyRegex, &'static str),
    ending_quotes: Vec<(FancyRegex, &'static str)>,
    contractions: Vec<FancyRegex>,
}

fn rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| {
        let s = SPACE_CLASS;
        let w = WORD_CLASS;
        // Python `re` syntax rewritten for fancy-regex: `\s`/`\w` as CPython's classes, `\1` as
        // `${1}`, the possessive `*+` as an atomic group (same matches, see nltk PR #3258).
        let c = |p: String| FancyRegex::new(&p).expect("static NLTK tokenizer pattern");
        Rules {
            starting_quotes: vec![
                (c("([«“‘„]|[`]+)".into()), " ${1} "),
                (c(r#"^""#.into()), "``"),
                (c("(``)".into()), " ${1} "),
                (c(r#"([ (\[{<])("|'{2})"#.into()), "${1} `` "),
                (c(format!(r"(?i)(?<![{w}])(')(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=[{w}])")), "${1} "),
            ],
            punctuation: vec![
                (c(format!(r#"([^.])(\.)((?>[\])}}>"'»”’ ]*))[{s}]*$"#)), "${1} ${2} ${3} "),
                (c(r"([:,])([^\d])".into()), " ${1} ${2}"),
                (c(r"([:,])$".into()), " ${1} "),
                (c(r"\.{2,}".into()), " ${0} "),
                (c(r"[;@#$%&]".into()), " ${0} "),
                (c("[‒-―]".into()), " ${0} "),
                (c(format!(r#"([^.])(\.)([\])}}>"']*)[{s}]*$"#)), "${1} ${2}${3} "),
                (c(r"[?!]".into()), " ${0} "),
                (c(r"([^'])' ".into()), "${1} ' "),
                (c(r"[*]".into()), " ${0} "),
            ],
            parens: (c(r"[\]\[(){}<>]".into()), " ${0} "),
            double_dashes: (c("--".into()), " -- "),
            ending_quotes: vec![
                (c("([»”’])".into()), " ${1} "),
                (c("''".into()), " '' "),
                (c("\"".into()), " '' "),
                (c(format!("[{s}]+")), " "),
                (c("([^' ])('[sS]|'[mM]|'[dD]|') ".into()), "${1} ${2} "),
                (c("([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ".into()), "${1} ${2} "),
            ],
            contractions: [
                r"(?i)\b(can)(not)\b",
                r"(?i)\b(d)('ye)\b",
                r"(?i)\b(gim)(me)\b",
                r"(?i)\b(gon)(na)\b",
                r"(?i)\b(got)(ta)\b",
                r"(?i)\b(lem)(me)\b",
                r"(?i)\b(more)('n)\b",
                r"(?i)\b(wan)(na)(?=[\s\x1c-\x1f])",
                r"(?i) ('t)(is)\b",
                r"(?i) ('t)(was)\b",
            ]
            .iter()
            .map(|p| c(p.to_string()))
            .collect(),
        }
    })
}

fn sub(re: &FancyRegex, rep: &str, text: String) -> String {
    match re.try_replacen(&text, 0, rep) {
        Ok(std::borrow::Cow::Owned(s)) => s,
        // No match, or the backtracking limit was hit on a pathological input: keep the text.
        _ => text,
    }
}

/// `NLTKWordTokenizer().tokenize(sentence)`.
pub fn treebank_tokenize(sentence: &str) -> Vec<String> {
    let r = rules();
    let mut text = sentence.to_string();
    for (re, rep) in &r.starting_quotes {
        text = sub(re, rep, text);
    }
    for (re, rep) in &r.punctuation {
        text = sub(re, rep, text);
    }
    text = sub(&r.parens.0, r.parens.1, text);
    text = sub(&r.double_dashes.0, r.double_dashes.1, text);
    text = format!(" {text} ");
    for (re, rep) in &r.ending_quotes {
        text = sub(re, rep, text);
    }
    for re in &r.contractions {
        text = sub(re, " ${1} ${2} ", text);
    }
    pystr::split_whitespace(&text).map(str::to_string).collect()
}

/// `nltk.word_tokenize(text)`: Punkt sentences, each tokenized by the Treebank rules.
pub fn word_tokenize(punkt: &Punkt, text: &str) -> Vec<String> {
    punkt.sentences(text).into_iter().flat_map(treebank_tokenize).collect()
}

/// Words that `str.isupper()` (as `capital_word_frequency` counts them).
pub fn count_capital_words(punkt: &Punkt, text: &str) -> usize {
    word_tokenize(punkt, text).iter().filter(|w| pystr::is_upper(w)).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn treebank_matches_nltk_doctest() {
        let s = "Good muffins cost $3.88 (roughly 3,36 euros)\nin New York.  Please buy me\ntwo of them.\nThanks.";
        let want = ["Good", "muffins", "cost", "$", "3.88", "(", "roughly", "3,36", "euros", ")", "in",
            "New", "York.", "Please", "buy", "me", "two", "of", "them.", "Thanks", "."];
        assert_eq!(treebank_tokenize(s), want);
        assert_eq!(treebank_tokenize("I DON'T cannot \"quote\"."), ["I", "DO", "N'T", "can", "not", "``", "quote", "''", "."]);
    }

    #[test]
    fn words_are_python_w_runs() {
        assert_eq!(count_words("Hello, world! It's 2024 — snake_case ok."), 7);
        assert_eq!(count_words(""), 0);
        // Devanagari vowel signs are marks: Python's \w stops at them.
        assert_eq!(count_words("नमस्ते"), 2, "Python: ['नमस', 'त']");
    }
}
