//! PLACEHOLDER — being written (tokenizer from GGUF metadata).
use crate::error::Result;
use crate::model::gguf::GgufFile;

pub struct GgufTokenizer {}

impl GgufTokenizer {
    pub fn from_gguf(_g: &GgufFile) -> Result<Self> {
        todo!()
    }
    pub fn encode(&self, _text: &str, _add_bos: bool) -> Result<Vec<u32>> {
        todo!()
    }
    pub fn token_bytes(&self, _id: u32) -> &[u8] {
        todo!()
    }
    pub fn is_eog(&self, _id: u32) -> bool {
        todo!()
    }
    pub fn decode(&self, _ids: &[u32]) -> String {
        todo!()
    }
    pub fn eog_ids(&self) -> &[u32] {
        todo!()
    }
}
