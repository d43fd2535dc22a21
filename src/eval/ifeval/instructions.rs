//! The 25 instruction types of lm-eval's `instructions_registry.INSTRUCTION_DICT` (every entry the
//! registry lists) and how each is configured from a prompt's kwargs, as
//! `Instruction.build_description(**kwargs)` does after `utils.py` drops falsy kwarg values.
//! Where the official code would draw a random value (a missing or invalid kwarg) this refuses the
//! prompt, except for `keywords:letter_frequency`'s non-letter `letter` ("!" and "#" occur in the
//! data), whose random draw right after `random.seed(0)` is "Y", i.e. the letter `y`.

use serde_json::{Map, Value};

/// Every instruction id the official registry lists.
pub const INSTRUCTION_IDS: [&str; 25] = [
    "keywords:existence",
    "keywords:frequency",
    "keywords:forbidden_words",
    "keywords:letter_frequency",
    "language:response_language",
    "length_constraints:number_sentences",
    "length_constraints:number_paragraphs",
    "length_constraints:number_words",
    "length_constraints:nth_paragraph_first_word",
    "detectable_content:number_placeholders",
    "detectable_content:postscript",
    "detectable_format:number_bullet_lists",
    "detectable_format:constrained_response",
    "detectable_format:number_highlighted_sections",
    "detectable_format:multiple_sections",
    "detectable_format:json_format",
    "detectable_format:title",
    "combination:two_responses",
    "combination:repeat_prompt",
    "startend:end_checker",
    "change_case:capital_word_frequency",
    "change_case:english_capital",
    "change_case:english_lowercase",
    "punctuation:no_comma",
    "startend:quotation",
];

/// `("less than", "at least")`: actual < threshold, or actual >= threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    LessThan,
    AtLeast,
}

impl Relation {
    pub fn holds(self, actual: usize, threshold: i64) -> bool {
        let actual = actual as i64;
        match self {
            Relation::LessThan => actual < threshold,
            Relation::AtLeast => actual >= threshold,
        }
    }
}

/// One configured instruction.
#[derive(Debug, Clone, PartialEq)]
pub enum Instruction {
    KeywordExistence { keywords: Vec<String> },
    KeywordFrequency { keyword: String, frequency: i64, relation: Relation },
    ForbiddenWords { words: Vec<String> },
    LetterFrequency { letter: char, frequency: i64, relation: Relation },
    ResponseLanguage { language: String },
    NumberSentences { num_sentences: i64, relation: Relation },
    NumberParagraphs { num_paragraphs: i64 },
    NumberWords { num_words: i64, relation: Relation },
    NthParagraphFirstWord { num_paragraphs: i64, nth_paragraph: i64, first_word: String },
    Placeholders { num_placeholders: i64 },
    Postscript { marker: String },
    BulletLists { num_bullets: i64 },
    ConstrainedResponse,
    HighlightedSections { num_highlights: i64 },
    MultipleSections { spliter: String, num_sections: i64 },
    JsonFormat,
    Title,
    TwoResponses,
    RepeatPrompt { prompt_to_repeat: String },
    EndChecker { end_phrase: String },
    CapitalWordFrequency { frequency: i64, relation: Relation },
    EnglishCapital,
    EnglishLowercase,
    NoComma,
    Quotation,
}

/// Python truthiness of a JSON value (`utils.py` keeps only kwargs whose value is truthy).
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

struct Args<'a> {
    id: &'a str,
    map: &'a Map<String, Value>,
}

impl<'a> Args<'a> {
    fn get(&self, field: &str) -> Option<&'a Value> {
        self.map.get(field).filter(|v| truthy(v))
    }
    fn random(&self, field: &str) -> String {
        format!("{}: kwarg `{field}` is missing, zero or invalid (the official code would pick a random value)", self.id)
    }
    /// An integer kwarg; `negative_ok` for the one checker without the `< 0` test.
    fn int(&self, field: &str, negative_ok: bool) -> Result<i64, String> {
        match self.get(field) {
            None => Err(self.random(field)),
            Some(v) => match v.as_i64().or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)) {
                Some(n) if n >= 0 || negative_ok => Ok(n),
                Some(_) => Err(self.random(field)),
                None => Err(format!("{}: kwarg `{field}` must be an integer, got {v}", self.id)),
            },
        }
    }
    fn string(&self, field: &str) -> Result<String, String> {
        match self.get(field) {
            None => Err(self.random(field)),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(format!("{}: kwarg `{field}` must be a string, got {v}", self.id)),
        }
    }
    fn strings(&self, field: &str) -> Result<Vec<String>, String> {
        match self.get(field) {
            None => Err(self.random(field)),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(str::to_string).ok_or_else(|| format!("{}: kwarg `{field}` must be a list of strings", self.id)))
                .collect(),
            Some(v) => Err(format!("{}: kwarg `{field}` must be a list of strings, got {v}", self.id)),
        }
    }
    fn relation(&self, field: &str) -> Result<Relation, String> {
        match self.string(field)?.as_str() {
            "less than" => Ok(Relation::LessThan),
            "at least" => Ok(Relation::AtLeast),
            other => Err(format!("{}: kwarg `{field}` must be \"less than\" or \"at least\", got {other:?}", self.id)),
        }
    }
}

impl Instruction {
    /// Configure instruction `id` from its kwargs (falsy values ignored, as `utils.py` does).
    /// The error names the instruction id and the kwarg.
    pub fn from_kwargs(id: &str, kwargs: &Map<String, Value>) -> Result<Instruction, String> {
        let a = Args { id, map: kwargs };
        use Instruction as I;
        Ok(match id {
            "keywords:existence" => {
                let mut keywords = a.strings("keywords")?;
                keywords.sort();
                I::KeywordExistence { keywords }
            }
            "keywords:frequency" => I::KeywordFrequency {
                keyword: a.string("keyword")?.trim_matches(super::pystr::is_space).to_string(),
                frequency: a.int("frequency", false)?,
                relation: a.relation("relation")?,
            },
            "keywords:forbidden_words" => {
                let mut words = a.strings("forbidden_words")?;
                words.sort();
                words.dedup();
                I::ForbiddenWords { words }
            }
            "keywords:letter_frequency" => {
                let given = a.get("letter").and_then(Value::as_str).unwrap_or("");
                let mut chars = given.chars();
                let letter = match (chars.next(), chars.next()) {
                    (Some(c), None) => {
                        let lower: Vec<char> = c.to_lowercase().collect();
                        match lower.as_slice() {
                            [l] if l.is_ascii_lowercase() => *l,
                            [_] => 'y',
                            _ => return Err(format!("{id}: kwarg `letter` {given:?} has no one-character lower case")),
                        }
                    }
                    _ => 'y',
                };
                I::LetterFrequency { letter, frequency: a.int("let_frequency", false)?, relation: a.relation("let_relation")? }
            }
            "language:response_language" => I::ResponseLanguage { language: a.string("language")? },
            "length_constraints:number_sentences" => {
                I::NumberSentences { num_sentences: a.int("num_sentences", false)?, relation: a.relation("relation")? }
            }
            "length_constraints:number_paragraphs" => I::NumberParagraphs { num_paragraphs: a.int("num_paragraphs", false)? },
            "length_constraints:number_words" => {
                I::NumberWords { num_words: a.int("num_words", false)?, relation: a.relation("relation")? }
            }
            "length_constraints:nth_paragraph_first_word" => {
                let num_paragraphs = a.int("num_paragraphs", false)?;
                let nth_paragraph = a.int("nth_paragraph", false)?;
                if nth_paragraph > num_paragraphs {
                    return Err(a.random("nth_paragraph"));
                }
                I::NthParagraphFirstWord { num_paragraphs, nth_paragraph, first_word: a.string("first_word")?.to_lowercase() }
            }
            "detectable_content:number_placeholders" => I::Placeholders { num_placeholders: a.int("num_placeholders", false)? },
            "detectable_content:postscript" => {
                I::Postscript { marker: a.string("postscript_marker")?.trim_matches(super::pystr::is_space).to_string() }
            }
            "detectable_format:number_bullet_lists" => I::BulletLists { num_bullets: a.int("num_bullets", false)? },
            "detectable_format:constrained_response" => I::ConstrainedResponse,
            "detectable_format:number_highlighted_sections" => I::HighlightedSections { num_highlights: a.int("num_highlights", false)? },
            "detectable_format:multiple_sections" => I::MultipleSections {
                spliter: a.string("section_spliter")?.trim_matches(super::pystr::is_space).to_string(),
                num_sections: a.int("num_sections", false)?,
            },
            "detectable_format:json_format" => I::JsonFormat,
            "detectable_format:title" => I::Title,
            "combination:two_responses" => I::TwoResponses,
            "combination:repeat_prompt" => match a.get("prompt_to_repeat") {
                Some(Value::String(s)) => I::RepeatPrompt { prompt_to_repeat: s.clone() },
                _ => return Err(format!("{id}: kwarg `prompt_to_repeat` must be set (the official code raises)")),
            },
            "startend:end_checker" => {
                I::EndChecker { end_phrase: a.string("end_phrase")?.trim_matches(super::pystr::is_space).to_string() }
            }
            "change_case:capital_word_frequency" => {
                I::CapitalWordFrequency { frequency: a.int("capital_frequency", true)?, relation: a.relation("capital_relation")? }
            }
            "change_case:english_capital" => I::EnglishCapital,
            "change_case:english_lowercase" => I::EnglishLowercase,
            "punctuation:no_comma" => I::NoComma,
            "startend:quotation" => I::Quotation,
            other => return Err(format!("unknown instruction id `{other}` (known: the 25 of lm-eval's INSTRUCTION_DICT)")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn build(id: &str, v: Value) -> Result<Instruction, String> {
        Instruction::from_kwargs(id, v.as_object().expect("object"))
    }

    #[test]
    fn every_registry_id_builds_or_names_its_kwarg() {
        for id in INSTRUCTION_IDS {
            match build(id, json!({})) {
                Ok(_) => {}
                Err(e) => assert!(e.contains(id) && e.contains("kwarg"), "{e}"),
            }
        }
        assert!(build("keywords:key_sentences", json!({})).unwrap_err().contains("unknown"));
    }

    #[test]
    fn falsy_kwargs_are_dropped_and_letters_fall_back() {
        let e = build("detectable_format:number_highlighted_sections", json!({"num_highlights": 0})).unwrap_err();
        assert!(e.contains("num_highlights"));
        let i = build("keywords:letter_frequency", json!({"letter": "#", "let_frequency": 4, "let_relation": "at least"}));
        assert_eq!(i, Ok(Instruction::LetterFrequency { letter: 'y', frequency: 4, relation: Relation::AtLeast }));
        let i = build("keywords:letter_frequency", json!({"letter": "Q", "let_frequency": 4, "let_relation": "less than"}));
        assert_eq!(i, Ok(Instruction::LetterFrequency { letter: 'q', frequency: 4, relation: Relation::LessThan }));
        assert!(build("keywords:frequency", json!({"keyword": "a", "frequency": 2, "relation": "at most"})).is_err());
    }
}
