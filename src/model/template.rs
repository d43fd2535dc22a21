//! Chat templates from GGUF metadata.
//!
//! A model's `tokenizer.chat_template` (Jinja) is rendered with minijinja configured the way
//! Hugging Face `transformers` renders chat templates, so the output is byte-identical to Python
//! jinja2: `trim_blocks` and `lstrip_blocks` on, Python string/dict/list methods (`.strip()`,
//! `.startswith()`, `.items()`… via minijinja-contrib's pycompat), a `raise_exception(msg)`
//! function, a Python-`json.dumps`-compatible `tojson` filter, `strftime_now(fmt)` (UTC), and the
//! variables `messages`, `add_generation_prompt`, `bos_token`, `eos_token` (texts of the BOS/EOS
//! tokens, empty when the vocabulary has none) and `tools` (none).
//!
//! A model without a template (base models such as gemma-3-270m) gets a plain-text fallback:
//!
//! ```text
//! System: <system message>
//!
//! User: <user message>
//!
//! Assistant: <assistant message>
//!
//! User: <user message>
//!
//! Assistant:
//! ```
//!
//! Each message is `<Role>: <content>` followed by a blank line (`\n\n`), the role being the
//! message's role with its first letter upper-cased (`system` → `System`, `user` → `User`,
//! `assistant` → `Assistant`, anything else likewise). With `add_generation_prompt` the text ends in
//! `Assistant:` (no trailing space: the model writes the space, so completions start with one).
//! Generation with the fallback should stop at [`ChatTemplate::stop_strings`]: `"\nUser:"`,
//! `"\nSystem:"` and `"\nAssistant:"`, the model starting a new turn on its own. Real templates
//! have no stop strings (their end-of-turn token ends generation).

use minijinja::value::Kwargs;
use minijinja::value::ValueKind;
use minijinja::{Environment, ErrorKind, Value};

use crate::error::{Error, Result};
use crate::model::gguf::GgufFile;
use crate::model::tokenizer::GgufTokenizer;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

const TEMPLATE_NAME: &str = "chat_template";

/// Stop strings of the plain fallback format.
const FALLBACK_STOPS: &[&str] = &["\nUser:", "\nSystem:", "\nAssistant:"];

/// A model's chat template (or the documented plain fallback).
pub struct ChatTemplate {
    model: String,
    source: Option<String>,
    env: Option<Environment<'static>>,
    bos_token: String,
    eos_token: String,
    stops: Vec<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("model", &self.model)
            .field("has_template", &self.source.is_some())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

impl ChatTemplate {
    /// The template of `g` (`tokenizer.chat_template`), compiled; the plain fallback when absent.
    pub fn from_gguf(g: &GgufFile, tok: &GgufTokenizer) -> Result<Self> {
        let model = g.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let token = |id: Option<u32>| id.and_then(|i| tok.token_text(i)).unwrap_or("").to_string();
        let source = g.opt_str("tokenizer.chat_template").filter(|s| !s.trim().is_empty());
        match source {
            Some(src) => Self::new(model, src, &token(tok.bos_id()), &token(tok.eos_id())),
            None => Ok(Self::fallback(model)),
        }
    }

    /// Compile `source` as the chat template of `model`.
    pub fn new(model: impl Into<String>, source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let model = model.into();
        let env = make_env(source, None).map_err(|e| Error::Template { model: model.clone(), reason: describe(&e) })?;
        Ok(Self {
            model,
            source: Some(source.to_string()),
            env: Some(env),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            stops: Vec::new(),
        })
    }

    /// The same template with `strftime_now` reading a fixed clock (`unix_secs`, UTC) instead of
    /// the system's: reproducible renders for tests and cached evaluations.
    pub fn with_clock(mut self, unix_secs: i64) -> Result<Self> {
        if let Some(src) = &self.source {
            let env = make_env(src, Some(unix_secs))
                .map_err(|e| Error::Template { model: self.model.clone(), reason: describe(&e) })?;
            self.env = Some(env);
        }
        Ok(self)
    }

    /// The plain fallback format (see the module documentation).
    pub fn fallback(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            source: None,
            env: None,
            bos_token: String::new(),
            eos_token: String::new(),
            stops: FALLBACK_STOPS.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Render `messages`; with `add_generation_prompt`, end with the assistant turn's opening.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let Some(env) = &self.env else {
            return Ok(render_fallback(messages, add_generation_prompt));
        };
        let err = |e: minijinja::Error| Error::Template { model: self.model.clone(), reason: describe(&e) };
        let tmpl = env.get_template(TEMPLATE_NAME).map_err(err)?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
            tools => Value::from(()),
        })
        .map_err(err)
    }

    /// Strings that end generation for this format (empty for real templates).
    pub fn stop_strings(&self) -> &[String] {
        &self.stops
    }

    /// Whether the model has its own template (false: the plain fallback is used).
    pub fn has_template(&self) -> bool {
        self.source.is_some()
    }

    /// The Jinja source of the model's template.
    pub fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }
}

fn render_fallback(messages: &[Message], add_generation_prompt: bool) -> String {
    let mut out = String::new();
    for m in messages {
        let mut chars = m.role.chars();
        if let Some(first) = chars.next() {
            out.extend(first.to_uppercase());
            out.push_str(chars.as_str());
        }
        out.push_str(": ");
        out.push_str(&m.content);
        out.push_str("\n\n");
    }
    if add_generation_prompt {
        out.push_str("Assistant:");
    }
    out
}

/// minijinja's message with its detail and location, and the chain of causes.
fn describe(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

fn make_env(source: &str, clock: Option<i64>) -> std::result::Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> std::result::Result<Value, minijinja::Error> {
        Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", move |fmt: String| format_time(&fmt, clock.unwrap_or_else(now_secs)));
    env.add_filter("tojson", tojson);
    // Python's `is iterable`: none is not (minijinja iterates none as empty, so its own test says
    // yes, and `tools is iterable and tools | length > 0` fails on `tools = none`); jinja2's
    // undefined is (it iterates as empty).
    env.add_test("iterable", |v: Value| match v.kind() {
        ValueKind::None | ValueKind::Bool | ValueKind::Number | ValueKind::Invalid => false,
        ValueKind::Undefined => true,
        _ => v.try_iter().is_ok(),
    });
    env.add_template_owned(TEMPLATE_NAME, generation_blocks_as_if(source))?;
    Ok(env)
}

// ---------------------------------------------------------------------------------------------
// tojson as transformers defines it: json.dumps(x, ensure_ascii=False, indent=indent)
// ---------------------------------------------------------------------------------------------

/// serde_json formatter with Python's default separators (`", "` and `": "`).
struct PyCompact;

impl serde_json::ser::Formatter for PyCompact {
    fn begin_array_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    // Accepted for compatibility; keys keep their order (as they do in Python dicts).
    let _: Option<Value> = kwargs.get("ensure_ascii")?;
    let _: Option<Value> = kwargs.get("sort_keys")?;
    let _: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_i64() {
            Some(n) => Some(" ".repeat(n.clamp(0, 64) as usize)),
            None => v.as_str().map(str::to_string),
        },
    };
    let mut buf = Vec::new();
    let res = match &indent {
        Some(ind) => {
            let fmt = serde_json::ser::PrettyFormatter::with_indent(ind.as_bytes());
            serde::Serialize::serialize(&value, &mut serde_json::Serializer::with_formatter(&mut buf, fmt))
        }
        None => serde::Serialize::serialize(&value, &mut serde_json::Serializer::with_formatter(&mut buf, PyCompact)),
    };
    res.map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let s = String::from_utf8(buf).map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    Ok(Value::from_safe_string(s))
}

// ---------------------------------------------------------------------------------------------
// strftime_now (UTC)
// ---------------------------------------------------------------------------------------------

const MONTHS: [&str; 12] =
    ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
const WEEKDAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// (year, month 1..=12, day 1..=31) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Format `secs` since the Unix epoch (UTC) with a subset of C `strftime`.
fn format_time(fmt: &str, secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (sod / 3600, sod % 3600 / 60, sod % 60);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let is_leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cum[(m - 1) as usize] + d + u32::from(is_leap && m > 2);
    let mut out = String::new();
    let mut it = fmt.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:>2}")),
            Some('-') => match it.next() {
                Some('d') => out.push_str(&d.to_string()),
                Some('m') => out.push_str(&m.to_string()),
                Some(other) => {
                    out.push_str("%-");
                    out.push(other);
                }
                None => out.push_str("%-"),
            },
            Some('H') => out.push_str(&format!("{hh:02}")),
            Some('I') => out.push_str(&format!("{:02}", if hh % 12 == 0 { 12 } else { hh % 12 })),
            Some('M') => out.push_str(&format!("{mm:02}")),
            Some('S') => out.push_str(&format!("{ss:02}")),
            Some('p') => out.push_str(if hh < 12 { "AM" } else { "PM" }),
            Some('B') => out.push_str(MONTHS[(m - 1) as usize]),
            Some('b') | Some('h') => out.push_str(&MONTHS[(m - 1) as usize][..3]),
            Some('A') => out.push_str(WEEKDAYS[weekday]),
            Some('a') => out.push_str(&WEEKDAYS[weekday][..3]),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// {% generation %} blocks
// ---------------------------------------------------------------------------------------------

/// transformers' `{% generation %}…{% endgeneration %}` (its AssistantTracker extension: the body
/// renders unchanged, the tags mark the assistant's tokens for training masks) as
/// `{% if true %}…{% endif %}`, keeping each tag's `-` whitespace markers so trimming is the same.
/// minijinja has no custom tags; text outside `{% %}` tags is never touched.
fn generation_blocks_as_if(source: &str) -> String {
    if !source.contains("generation") {
        return source.to_string();
    }
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let (lead, body) = match inner.strip_prefix(['-', '+']) {
            Some(b) => (&inner[..1], b),
            None => ("", inner),
        };
        let (body, trail) = match body.strip_suffix(['-', '+']) {
            Some(b) => (b, &body[b.len()..]),
            None => (body, ""),
        };
        let word = match body.trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match word {
            Some(w) => {
                out.push_str("{%");
                out.push_str(lead);
                out.push(' ');
                out.push_str(w);
                out.push(' ');
                out.push_str(trail);
                out.push_str("%}");
            }
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ChatTemplate>();
    }

    #[test]
    fn fallback_format() {
        let t = ChatTemplate::fallback("base");
        let msgs = [Message::system("Be brief."), Message::user("Hi"), Message::assistant("Hello."), Message::user("2+2?")];
        assert_eq!(
            t.render(&msgs, true).unwrap(),
            "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello.\n\nUser: 2+2?\n\nAssistant:"
        );
        assert_eq!(t.render(&msgs[1..2], false).unwrap(), "User: Hi\n\n");
        assert!(!t.has_template() && t.source().is_none());
        assert!(t.stop_strings().iter().any(|s| s == "\nUser:"));
    }

    #[test]
    fn python_compat_and_raise_exception() {
        let src = "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system!') }}{% endif %}\
                   [{{ m.content.strip().upper() }}|{{ m.content.startswith(' a') }}]{% endfor %}\
                   {{ bos_token }}{{ {'k': [1, 'x']} | tojson }}";
        let t = ChatTemplate::new("m", src, "<s>", "</s>").unwrap();
        assert_eq!(t.render(&[Message::user(" ab ")], false).unwrap(), "[AB|True]<s>{\"k\": [1, \"x\"]}");
        let e = t.render(&[Message::system("x")], false).unwrap_err().to_string();
        assert!(e.contains("no system!") && e.contains("m"), "{e}");
        let e = ChatTemplate::new("m", "{% if %}", "", "").unwrap_err().to_string();
        assert!(e.contains("chat template of m"), "{e}");
    }

    #[test]
    fn trim_and_lstrip_blocks() {
        let src = "{% for m in messages %}\n    {% if true %}\n{{ m.content }}\n    {% endif %}\n{% endfor %}\n";
        let t = ChatTemplate::new("m", src, "", "").unwrap();
        assert_eq!(t.render(&[Message::user("a"), Message::user("b")], false).unwrap(), "a\nb\n");
    }

    #[test]
    fn generation_tags_render_their_body() {
        let src = "{%- for m in messages -%}{% if m.role == 'assistant' %}{%- generation -%} [{{ m.content }}] {%- endgeneration -%}{% else %}<{{ m.content }}>{% endif %}{%- endfor -%}";
        let t = ChatTemplate::new("m", src, "", "").unwrap();
        let got = t.render(&[Message::user("q"), Message::assistant("a")], false).unwrap();
        assert_eq!(got, "<q>[a]");
        // Raw text and other tags are left alone.
        assert_eq!(generation_blocks_as_if("generation {% if x %}{%+ endgeneration %}"), "generation {% if x %}{%+ endif %}");
    }

    #[test]
    fn iterable_test_is_pythons() {
        let t = ChatTemplate::new("m", "{{ tools is iterable }} {{ x is iterable }} {{ [1] is iterable }} {{ 'ab' is iterable }} {{ 3 is iterable }}", "", "").unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "False True True True False");
    }

    #[test]
    fn fixed_clock() {
        let t = ChatTemplate::new("m", "{{ strftime_now('%Y-%m-%d %H:%M') }}", "", "").unwrap().with_clock(1_780_000_000).unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "2026-05-28 20:26");
    }

    #[test]
    fn strftime_subset() {
        // 2024-07-26 13:05:09 UTC, a Friday.
        let t = 1_722_000_000 - 1_722_000_000 % 86_400 + 13 * 3600 + 5 * 60 + 9;
        assert_eq!(format_time("%d %b %Y", t), "26 Jul 2024");
        assert_eq!(format_time("%A %B %-d, %H:%M:%S %j %%", t), "Friday July 26, 13:05:09 208 %");
        assert_eq!(format_time("%Y-%m-%d", 0), "1970-01-01");
        assert_eq!(format_time("%Y-%m-%d", 951_782_400), "2000-02-29");
    }
}
