//! The aggregate-and-synthesize prompt and reference injection, as published with MoA
//! (Wang et al. 2024, arXiv 2406.04692; Together's reference implementation): the previous
//! layer's answers are appended to the system message as a numbered list after the instruction.
//! An existing system message is kept, with the instruction and references after it.

use crate::model::Message;

/// The paper's aggregate-and-synthesize instruction (Together MoA, `aggreagator_system_prompt`).
pub const AGGREGATE_AND_SYNTHESIZE: &str = "You have been provided with a set of responses from various open-source models to the latest user query. Your task is to synthesize these responses into a single, high-quality response. It is crucial to critically evaluate the information provided in these responses, recognizing that some of it may be biased or incorrect. Your response should not simply replicate the given answers but should offer a refined, accurate, and comprehensive reply to the instruction. Ensure your response is well-structured, coherent, and adheres to the highest standards of accuracy and reliability.

Responses from models:";

/// The system text carrying `references` after `instruction`: `instruction\n1. a\n2. b`.
pub fn references_block(instruction: &str, references: &[String]) -> String {
    let mut s = instruction.to_string();
    for (i, r) in references.iter().enumerate() {
        s.push_str(&format!("\n{}. {}", i + 1, r));
    }
    s
}

/// `messages` with the references injected into the system message (created when absent,
/// appended after a blank line when present). No references: the messages unchanged.
pub fn inject_references(messages: &[Message], instruction: &str, references: &[String]) -> Vec<Message> {
    let mut out = messages.to_vec();
    if references.is_empty() {
        return out;
    }
    let block = references_block(instruction, references);
    match out.first_mut() {
        Some(m) if m.role == "system" => {
            m.content = if m.content.is_empty() { block } else { format!("{}\n\n{}", m.content, block) };
        }
        _ => out.insert(0, Message { role: "system".into(), content: block }),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> Message {
        Message { role: "user".into(), content: s.into() }
    }

    #[test]
    fn references_become_a_numbered_system_message() {
        let out = inject_references(&[user("Q")], "Synthesize:", &["A".into(), "B".into()]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].role, "system");
        assert_eq!(out[0].content, "Synthesize:\n1. A\n2. B");
        assert_eq!(out[1], user("Q"));
    }

    #[test]
    fn existing_system_message_is_kept_first() {
        let sys = Message { role: "system".into(), content: "Be terse.".into() };
        let out = inject_references(&[sys, user("Q")], AGGREGATE_AND_SYNTHESIZE, &["A".into()]);
        assert_eq!(out.len(), 2);
        assert!(out[0].content.starts_with("Be terse.\n\nYou have been provided"));
        assert!(out[0].content.ends_with("Responses from models:\n1. A"));
    }

    #[test]
    fn no_references_no_change() {
        assert_eq!(inject_references(&[user("Q")], "x", &[]), vec![user("Q")]);
    }
}
