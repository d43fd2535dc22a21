//! Language identification for `language:response_language` and the `change_case:english_*`
//! checkers. The official code calls `langdetect.detect` (a seeded naive Bayes over character
//! n-gram profiles of 55 languages); this module stands in for it with `whatlang`, restricted to
//! the languages langdetect knows and mapped to the ISO 639-1 codes langdetect returns.
//! langdetect's failure case ("no features in text": nothing but digits, punctuation, URLs and
//! e-mail addresses), which the official checkers count as *followed*, is reproduced.
//! Known gaps (measured by tests/ifeval_agreement.rs): whatlang has no Swahili (`sw`), Somali,
//! Welsh or Albanian profile; it can take short Russian for Ukrainian; and on word lists or
//! all-capital text the two detectors disagree about English now and then.

use std::sync::OnceLock;

use regex::Regex;
use whatlang::{Detector, Lang};

/// whatlang's languages that langdetect also has, with langdetect's code for each.
const CODES: &[(Lang, &str)] = &[
    (Lang::Afr, "af"), (Lang::Ara, "ar"), (Lang::Bul, "bg"), (Lang::Ben, "bn"), (Lang::Cat, "ca"),
    (Lang::Ces, "cs"), (Lang::Dan, "da"), (Lang::Deu, "de"), (Lang::Ell, "el"), (Lang::Eng, "en"),
    (Lang::Spa, "es"), (Lang::Est, "et"), (Lang::Pes, "fa"), (Lang::Fin, "fi"), (Lang::Fra, "fr"),
    (Lang::Guj, "gu"), (Lang::Heb, "he"), (Lang::Hin, "hi"), (Lang::Hrv, "hr"), (Lang::Hun, "hu"),
    (Lang::Ind, "id"), (Lang::Ita, "it"), (Lang::Jpn, "ja"), (Lang::Kan, "kn"), (Lang::Kor, "ko"),
    (Lang::Lit, "lt"), (Lang::Lav, "lv"), (Lang::Mkd, "mk"), (Lang::Mal, "ml"), (Lang::Mar, "mr"),
    (Lang::Nep, "ne"), (Lang::Nld, "nl"), (Lang::Nob, "no"), (Lang::Pan, "pa"), (Lang::Pol, "pl"),
    (Lang::Por, "pt"), (Lang::Ron, "ro"), (Lang::Rus, "ru"), (Lang::Slk, "sk"), (Lang::Slv, "sl"),
    (Lang::Swe, "sv"), (Lang::Tam, "ta"), (Lang::Tel, "te"), (Lang::Tha, "th"), (Lang::Tgl, "tl"),
    (Lang::Tur, "tr"), (Lang::Ukr, "uk"), (Lang::Urd, "ur"), (Lang::Vie, "vi"), (Lang::Cmn, "zh-cn"),
];

/// The result of `langdetect.detect(text)` as the checkers use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detected {
    /// An ISO 639-1 code as langdetect spells it (`en`, `hi`, `zh-cn`, …).
    Lang(&'static str),
    /// No language could be guessed from the letters present.
    Unknown,
    /// langdetect would raise `LangDetectException` (no letters): the checkers then return true.
    NoFeatures,
}

fn detector() -> &'static Detector {
    static D: OnceLock<Detector> = OnceLock::new();
    D.get_or_init(|| Detector::with_allowlist(CODES.iter().map(|(l, _)| *l).collect()))
}

/// langdetect's text cleanup: URLs and e-mail addresses are removed before n-grams are taken.
fn strip_urls_and_mails(text: &str) -> String {
    static URL: OnceLock<Regex> = OnceLock::new();
    static MAIL: OnceLock<Regex> = OnceLock::new();
    let url = URL.get_or_init(|| Regex::new(r"https?://[-_.?&~;+=/#0-9A-Za-z]{1,2076}").expect("static"));
    let mail = MAIL.get_or_init(|| {
        Regex::new(r"[-_.0-9A-Za-z]{1,64}@[-_0-9A-Za-z]{1,255}[-_.0-9A-Za-z]{1,255}").expect("static")
    });
    let text = url.replace_all(text, " ");
    mail.replace_all(&text, " ").into_owned()
}

/// Detect the language of `text` (langdetect looks at its first 10,000 characters).
pub fn detect(text: &str) -> Detected {
    let head: String = text.chars().take(10_000).collect();
    let clean = strip_urls_and_mails(&head);
    if !clean.chars().any(char::is_alphabetic) {
        return Detected::NoFeatures;
    }
    match detector().detect_lang(&clean) {
        Some(lang) => CODES.iter().find(|(l, _)| *l == lang).map_or(Detected::Unknown, |(_, c)| Detected::Lang(c)),
        None => Detected::Unknown,
    }
}

/// `langdetect.detect(value) == code`, with the official checkers' `except LangDetectException:
/// return True`.
pub fn is_language(text: &str, code: &str) -> bool {
    match detect(text) {
        Detected::Lang(c) => c == code,
        Detected::Unknown => false,
        Detected::NoFeatures => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_common_languages_and_failure_case() {
        assert!(is_language("The weather is pleasant today and many people are walking in the park.", "en"));
        let de = "Das Wetter ist heute angenehm und viele Menschen gehen mit ihren Familien im Park spazieren.";
        assert_eq!(detect(de), Detected::Lang("de"));
        assert!(!is_language(de, "en"));
        assert_eq!(detect("今日はいい天気ですね。公園を散歩しましょう。"), Detected::Lang("ja"));
        assert_eq!(detect("1234 !!! https://example.com/a?b=c"), Detected::NoFeatures);
        assert!(is_language("42.", "de"), "no features counts as followed");
    }
}
