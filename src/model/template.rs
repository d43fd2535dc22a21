//! PLACEHOLDER — being written (chat template from GGUF metadata).
use crate::error::Result;
use crate::model::gguf::GgufFile;
use crate::model::tokenizer::GgufTokenizer;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

pub struct ChatTemplate {}

impl ChatTemplate {
    pub fn from_gguf(_g: &GgufFile, _tok: &GgufTokenizer) -> Result<Self> {
        todo!()
    }
    pub fn render(&self, _messages: &[Message], _add_generation_prompt: bool) -> Result<String> {
        todo!()
    }
    pub fn stop_strings(&self) -> &[String] {
        todo!()
    }
}
