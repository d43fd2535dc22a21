//! Chat templates rendered byte-identically to Python jinja2 (reference renders in
//! `../shared/reference/chat_template.json`), and the plain fallback for template-less models.

mod common;

use moa_local::model::gguf::GgufFile;
use moa_local::model::template::{ChatTemplate, Message};
use moa_local::model::tokenizer::GgufTokenizer;

use common::{model_path, reference, GEMMA, QWEN, SMOL};

fn load(key: &str) -> (GgufTokenizer, ChatTemplate) {
    let g = GgufFile::open(model_path(key)).unwrap();
    let tok = GgufTokenizer::from_gguf(&g).unwrap();
    let tmpl = ChatTemplate::from_gguf(&g, &tok).unwrap_or_else(|e| panic!("{key}: {e}"));
    (tok, tmpl)
}

fn check_model(key: &str) {
    let (tok, tmpl) = load(key);
    let refs = reference("chat_template.json");
    let model = &refs["models"][key];
    assert!(tmpl.has_template(), "{key} should carry a chat template");
    // The template variables come from the vocabulary's BOS/EOS tokens.
    let bos = tok.bos_id().and_then(|i| tok.token_text(i)).unwrap_or("");
    let eos = tok.eos_id().and_then(|i| tok.token_text(i)).unwrap_or("");
    assert_eq!(bos, model["bos_token"].as_str().unwrap(), "{key}: bos_token");
    assert_eq!(eos, model["eos_token"].as_str().unwrap(), "{key}: eos_token");
    assert!(tmpl.stop_strings().is_empty());

    let cases = model["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    for case in cases {
        let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        let expected = case["rendered"].as_str().unwrap();
        let got = tmpl.render(&messages, true).unwrap();
        if got != expected {
            failures.push(format!("messages: {messages:?}\nexpected: {expected:?}\ngot:      {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{key}: {} of {} renders differ:\n{}", failures.len(), cases.len(), failures.join("\n\n"));
}

#[test]
fn qwen_template_matches_jinja2() {
    check_model(QWEN);
}

#[test]
fn smollm_template_matches_jinja2() {
    check_model(SMOL);
}

#[test]
fn qwen_template_without_generation_prompt() {
    let (_, tmpl) = load(QWEN);
    let got = tmpl.render(&[Message::user("Hi")], false).unwrap();
    assert_eq!(
        got,
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n"
    );
}

#[test]
fn gemma_base_uses_the_documented_fallback() {
    let refs = reference("chat_template.json");
    assert!(refs["models"][GEMMA]["chat_template"].is_null());
    let (tok, tmpl) = load(GEMMA);
    assert!(!tmpl.has_template());
    assert_eq!(tmpl.source(), None);
    let messages = [
        Message::system("You have been provided with a set of responses."),
        Message::user("Hi"),
        Message::assistant("Hello! How can I help?"),
        Message::user("Tell me a joke."),
    ];
    let text = tmpl.render(&messages, true).unwrap();
    assert_eq!(
        text,
        "System: You have been provided with a set of responses.\n\n\
         User: Hi\n\n\
         Assistant: Hello! How can I help?\n\n\
         User: Tell me a joke.\n\n\
         Assistant:"
    );
    assert_eq!(tmpl.render(&messages[1..2], false).unwrap(), "User: Hi\n\n");
    let stops = tmpl.stop_strings();
    for s in ["\nUser:", "\nSystem:", "\nAssistant:"] {
        assert!(stops.iter().any(|x| x == s), "missing stop string {s:?} in {stops:?}");
    }
    // The rendered prompt tokenizes with BOS first, as llama.cpp would feed it.
    let ids = tok.encode(&text, true).unwrap();
    assert_eq!(ids[0], 2);
    assert_eq!(tok.decode(&ids[1..]), text);
}
