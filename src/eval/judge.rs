//! A local model as judge, with FastChat's judge prompts: the judge conversation for single-answer
//! grading (1–10; the math prompt with GPT-4's reference where the category has one; the
//! multi-turn prompt for turn 2) and for pairwise comparison, and reading the verdict out of the
//! judge's text as FastChat does.

use crate::error::{Error, Result};
use crate::eval::data::{JudgePrompt, MtBench, MtQuestion};
use crate::model::Message;

/// Fill `{name}` fields of a FastChat template in one pass (values are inserted as they are: a
/// brace inside an answer is text, as with Python's `str.format`).
pub fn fill(template: &str, fields: &[(&str, &str)]) -> Result<String> {
    let mut out = String::with_capacity(template.len() + fields.iter().map(|(_, v)| v.len()).sum::<usize>());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(|| Error::Config(format!("judge template: unclosed `{{` in {:?}", &rest[open..rest.len().min(open + 40)])))?;
        let name = &after[..close];
        let value = fields.iter().find(|(k, _)| *k == name).map(|(_, v)| *v).ok_or_else(|| Error::Config(format!("judge template asks for `{{{name}}}`, which this judge does not provide")))?;
        out.push_str(value);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn conversation(j: &JudgePrompt, user: String) -> Vec<Message> {
    vec![Message::system(j.system_prompt.clone()), Message::user(user)]
}

/// The judge prompt's name FastChat uses for a question's turn (0-based).
pub fn single_judge_name(bench: &MtBench, q: &MtQuestion, turn: usize) -> &'static str {
    match (bench.reference(q, 0).is_some(), turn > 0) {
        (false, false) => "single-v1",
        (true, false) => "single-math-v1",
        (false, true) => "single-v1-multi-turn",
        (true, true) => "single-math-v1-multi-turn",
    }
}

/// The judge conversation grading `answers[..=turn]` to `q` (answers holds one per turn so far).
pub fn single(bench: &MtBench, q: &MtQuestion, turn: usize, answers: &[String]) -> Result<(String, Vec<Message>)> {
    let name = single_judge_name(bench, q, turn);
    let j = bench.judge(name)?;
    let r = |t: usize| bench.reference(q, t).unwrap_or("");
    let turn_text = |t: usize| q.turns.get(t).map(String::as_str).unwrap_or("");
    let answer = |t: usize| answers.get(t).map(String::as_str).unwrap_or("");
    let text = if turn == 0 {
        fill(&j.prompt_template, &[("question", turn_text(0)), ("answer", answer(0)), ("ref_answer_1", r(0))])?
    } else {
        fill(
            &j.prompt_template,
            &[
                ("question_1", turn_text(0)),
                ("answer_1", answer(0)),
                ("question_2", turn_text(1)),
                ("answer_2", answer(1)),
                ("ref_answer_1", r(0)),
                ("ref_answer_2", r(1)),
            ],
        )?
    };
    Ok((name.to_string(), conversation(j, text)))
}

/// FastChat's pairwise (pair-v2) judge conversation: which of two answers to `question` is better.
pub fn pairwise(j: &JudgePrompt, question: &str, answer_a: &str, answer_b: &str) -> Result<Vec<Message>> {
    Ok(conversation(j, fill(&j.prompt_template, &[("question", question), ("answer_a", answer_a), ("answer_b", answer_b)])?))
}

/// The 1–10 rating in a judge's text: `[[x]]`, else `[x]` (FastChat's two patterns; the first
/// match counts). None when there is none or it is outside 1–10.
pub fn rating(judgment: &str) -> Option<f64> {
    bracketed(judgment, 2).or_else(|| bracketed(judgment, 1)).filter(|r| (1.0..=10.0).contains(r))
}

/// First `[`×depth number `]`×depth in `s` (a number: digits, optionally `.` and digits).
fn bracketed(s: &str, depth: usize) -> Option<f64> {
    let (open, close) = ("[".repeat(depth), "]".repeat(depth));
    let mut from = 0;
    while let Some(i) = s[from..].find(&open) {
        let start = from + i + depth;
        let body = &s[start..];
        let digits = body.find(|c: char| !c.is_ascii_digit()).unwrap_or(body.len());
        if digits > 0 {
            let mut end = digits;
            if body[end..].starts_with('.') {
                end += 1 + body[end + 1..].find(|c: char| !c.is_ascii_digit()).unwrap_or(body.len() - end - 1);
            }
            if body[end..].starts_with(&close) {
                return body[..end].parse().ok();
            }
        }
        from = start;
    }
    None
}

/// A pairwise verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    A,
    B,
    Tie,
}

/// FastChat's reading of a pairwise judgment: `[[A]]`, else `[[B]]`, else `[[C]]` (tie).
pub fn verdict(judgment: &str) -> Option<Verdict> {
    if judgment.contains("[[A]]") {
        Some(Verdict::A)
    } else if judgment.contains("[[B]]") {
        Some(Verdict::B)
    } else if judgment.contains("[[C]]") {
        Some(Verdict::Tie)
    } else {
        None
    }
}

/// The outcome for the system of a pair judged in both orders (system first as A, then as B): a
/// verdict that flips with the order is a tie. 1 = win, 0.5 = tie, 0 = loss; None when either
/// judgment gave no verdict.
pub fn both_orders(system_first: Option<Verdict>, system_second: Option<Verdict>) -> Option<f64> {
    let as_system = |v: Verdict, system_is_a: bool| match (v, system_is_a) {
        (Verdict::Tie, _) => 0.5,
        (Verdict::A, true) | (Verdict::B, false) => 1.0,
        _ => 0.0,
    };
    let (a, b) = (as_system(system_first?, true), as_system(system_second?, false));
    Some(if a == b { a } else { 0.5 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_once_and_keep_braces_in_answers() {
        let t = "Q: {question}\nA: {answer}";
        assert_eq!(fill(t, &[("question", "2+2?"), ("answer", "fn f() { {answer} }")]).unwrap(), "Q: 2+2?\nA: fn f() { {answer} }");
        assert!(fill("{nope}", &[]).unwrap_err().to_string().contains("{nope}"));
        assert!(fill("{open", &[]).is_err());
    }

    #[test]
    fn ratings_are_read_as_fastchat_reads_them() {
        assert_eq!(rating("The answer is fine. Rating: [[7]]"), Some(7.0));
        assert_eq!(rating("Rating: [[8.5]] and later [[2]]"), Some(8.5));
        assert_eq!(rating("no double brackets, Rating: [6]"), Some(6.0));
        assert_eq!(rating("[[rating]] then [[3]]"), Some(3.0));
        assert_eq!(rating("Rating: [[11]]"), None);
        assert_eq!(rating("I would give it a 7."), None);
        assert_eq!(rating("[[ 7 ]]"), None);
    }

    #[test]
    fn pairwise_verdicts_and_order_flips() {
        assert_eq!(verdict("...so [[B]]"), Some(Verdict::B));
        assert_eq!(verdict("[[A]] over [[B]]"), Some(Verdict::A));
        assert_eq!(verdict("tie: [[C]]"), Some(Verdict::Tie));
        assert_eq!(verdict("A is better"), None);
        assert_eq!(both_orders(Some(Verdict::A), Some(Verdict::B)), Some(1.0), "won in both orders");
        assert_eq!(both_orders(Some(Verdict::B), Some(Verdict::A)), Some(0.0), "lost in both orders");
        assert_eq!(both_orders(Some(Verdict::A), Some(Verdict::A)), Some(0.5), "position bias: a tie");
        assert_eq!(both_orders(Some(Verdict::Tie), Some(Verdict::Tie)), Some(0.5));
        assert_eq!(both_orders(None, Some(Verdict::A)), None);
    }
}
