//! The tokenizer, built purely from a GGUF file's `tokenizer.ggml.*` metadata and reproducing
//! llama.cpp's `llama-vocab.cpp` token for token.
//!
//! Two vocabulary types are supported, as `tokenizer.ggml.model` names them:
//!
//! * `gpt2` — byte-level BPE. The text is split by the pre-tokenizer regexes that llama.cpp picks
//!   for `tokenizer.ggml.pre` (see [`SUPPORTED_PRE`]), then byte-level encoded and merged by the
//!   ranks of `tokenizer.ggml.merges` ([`bpe`]: `tokenizers`' pre-tokenizers, then its BPE merge
//!   loop over the compact [`vocab::Vocab`]; `ignore_merges` for the llama3 family, as llama.cpp
//!   does).
//! * `llama` — SentencePiece (Llama 2, Mistral, Gemma). llama.cpp does not run SentencePiece's own
//!   algorithm but its "SPM" tokenizer: spaces become `▁` (with a leading `▁` when
//!   `tokenizer.ggml.add_space_prefix`, default true, asks and the fragment follows a special token
//!   or starts the text), the text is split into UTF-8 characters, and adjacent symbols whose
//!   concatenation is a vocabulary token are merged, highest `tokenizer.ggml.scores` first (ties:
//!   leftmost). Symbols that are not tokens fall back to `<0xXX>` byte tokens. This is implemented
//!   here directly (a priority queue over a linked list of symbols, exactly like llama.cpp);
//!   emulating it with a `tokenizers` BPE model whose merges are derived from the vocabulary cannot
//!   reproduce its tie-breaking (equal scores pick the leftmost pair, BPE ranks cannot be equal)
//!   nor merges of characters that are not themselves tokens, and it costs seconds of load time on
//!   a 262k vocabulary.
//!
//! Special tokens: tokens of type CONTROL, USER_DEFINED and UNKNOWN are cut out of the text before
//! the model sees it, exactly like llama.cpp's `tokenizer_st_partition` with `parse_special`: the
//! special tokens are tried longest text first (equal lengths: lower id first), each splitting every
//! remaining raw fragment at its leftmost non-overlapping occurrences. A byte trie finds which
//! special tokens occur at all, so only those few are searched for.
//!
//! End of generation ([`GgufTokenizer::eog_ids`]) follows llama.cpp too: EOS, `eot`/`eom` ids from
//! the metadata, the FIM pad/repo/file-separator tokens, and every token whose text is one of
//! llama.cpp's end-of-turn texts (`<|im_end|>`, `<end_of_turn>`, `<|eot_id|>`, `<|endoftext|>`…).
//! Such tokens are also treated as CONTROL (so they render as nothing), as llama.cpp does.
//!
//! Known deliberate differences from llama.cpp: when the metadata has no BOS/EOS ids a `gpt2`
//! vocabulary gets none (llama.cpp defaults both to id 11, which is only right for Falcon); merges
//! whose parts or result are not in the vocabulary are dropped (llama.cpp would keep merging into a
//! non-token and then drop its bytes); a duplicated token text keeps its last id.

mod bpe;
mod build;
mod pre;
mod specials;
mod spm;
mod stream;
pub mod vocab;

use std::path::PathBuf;

use bpe::Bpe;
use pre::{byte_level_decode, parse_byte_token, pre_spec, unicode_to_byte_table};
pub use pre::SUPPORTED_PRE;
use specials::{is_c_space, Frag, Specials};
pub use stream::Utf8Stream;
use vocab::Vocab;

use crate::error::{Error, Result};
use crate::model::gguf::GgufFile;

// Token attributes (llama.cpp's `llama_token_attr`, as bit flags).
const ATTR_UNKNOWN: u16 = 1 << 0;
const ATTR_UNUSED: u16 = 1 << 1;
const ATTR_NORMAL: u16 = 1 << 2;
const ATTR_CONTROL: u16 = 1 << 3;
const ATTR_USER_DEFINED: u16 = 1 << 4;
const ATTR_BYTE: u16 = 1 << 5;
const ATTR_LSTRIP: u16 = 1 << 7;
const ATTR_RSTRIP: u16 = 1 << 8;

// ---------------------------------------------------------------------------------------------
// The tokenizer
// ---------------------------------------------------------------------------------------------

/// Which algorithm a vocabulary uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VocabKind {
    /// `tokenizer.ggml.model = gpt2`: byte-level BPE.
    BytePairEncoding,
    /// `tokenizer.ggml.model = llama`: SentencePiece-style (llama.cpp SPM).
    SentencePiece,
}

enum Algo {
    Bpe(Box<Bpe>),
    Spm { scores: Vec<f32>, byte_tokens: Vec<Option<u32>> },
}

/// A tokenizer with llama.cpp parity, built from GGUF metadata.
pub struct GgufTokenizer {
    path: PathBuf,
    kind: VocabKind,
    pre: String,
    algo: Algo,
    vocab: Vocab,
    attrs: Vec<u16>,
    /// Concatenated rendered bytes of all tokens; token `i` is `pieces[offsets[i]..offsets[i+1]]`.
    pieces: Vec<u8>,
    piece_offsets: Vec<u32>,
    specials: Specials,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    eog: Vec<u32>,
}

impl std::fmt::Debug for GgufTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufTokenizer")
            .field("path", &self.path)
            .field("kind", &self.kind)
            .field("pre", &self.pre)
            .field("vocab_size", &self.vocab.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("eog", &self.eog)
            .finish()
    }
}

impl GgufTokenizer {
    /// Token ids of `text`, special tokens parsed out of it. With `add_bos`, BOS (and EOS) are
    /// added as the metadata asks (`tokenizer.ggml.add_bos_token` / `add_eos_token`); without it,
    /// never.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let frags = self.partition(text);
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos && self.add_bos {
            if let Some(b) = self.bos {
                out.push(b);
            }
        }
        match &self.algo {
            Algo::Spm { scores, byte_tokens } => {
                let mut prev_special = true;
                let mut buf = String::new();
                for f in frags {
                    match f {
                        Frag::Raw(a, b) => {
                            buf.clear();
                            if self.add_space_prefix && prev_special {
                                buf.push('▁');
                            }
                            for c in text[a..b].chars() {
                                buf.push(if c == ' ' { '▁' } else { c });
                            }
                            spm::spm_tokenize(&self.vocab, &buf, scores, byte_tokens, &mut out);
                            prev_special = false;
                        }
                        Frag::Token(t) => {
                            out.push(t);
                            prev_special = true;
                        }
                    }
                }
            }
            Algo::Bpe(tk) => {
                for f in frags {
                    match f {
                        Frag::Raw(a, b) => {
                            tk.encode(&self.vocab, &text[a..b], &mut out)
                                .map_err(|reason| Error::Tokenizer { path: self.path.clone(), reason })?;
                        }
                        Frag::Token(t) => out.push(t),
                    }
                }
            }
        }
        if add_bos && self.add_eos {
            if let Some(e) = self.eos {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Split `text` into raw fragments and special tokens (llama.cpp's `tokenizer_st_partition`).
    fn partition(&self, text: &str) -> Vec<Frag> {
        if text.is_empty() {
            return Vec::new();
        }
        let bytes = text.as_bytes();
        let mut frags = vec![Frag::Raw(0, text.len())];
        for rank in self.specials.present(bytes) {
            let id = self.specials.order[rank as usize];
            let needle = self.vocab.text(id);
            let attr = self.attrs[id as usize];
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                let Frag::Raw(mut a, b) = f else {
                    next.push(f);
                    continue;
                };
                while a < b {
                    let Some(m) = text[a..b].find(needle).map(|p| a + p) else { break };
                    let mut left_end = m;
                    if attr & ATTR_LSTRIP != 0 {
                        while left_end > a && is_c_space(bytes[left_end - 1]) {
                            left_end -= 1;
                        }
                    }
                    if left_end > a {
                        next.push(Frag::Raw(a, left_end));
                    }
                    next.push(Frag::Token(id));
                    a = m + needle.len();
                    if attr & ATTR_RSTRIP != 0 {
                        while a < b && is_c_space(bytes[a]) {
                            a += 1;
                        }
                    }
                }
                if a < b {
                    next.push(Frag::Raw(a, b));
                }
            }
            frags = next;
        }
        frags
    }


    /// Token ids of a prompt text as generation feeds it: BOS as the metadata asks, not doubled
    /// when the text (a rendered chat template) already starts with it.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode(text, true)?;
        if let (Some(bos), [a, b, ..]) = (self.bos_id(), ids.as_slice()) {
            if *a == bos && *b == bos {
                ids.remove(0);
            }
        }
        Ok(ids)
    }

    /// The raw bytes token `id` renders to in generated text (control tokens: nothing). Unknown
    /// ids render as nothing.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        let i = id as usize;
        if i + 1 >= self.piece_offsets.len() {
            return &[];
        }
        &self.pieces[self.piece_offsets[i] as usize..self.piece_offsets[i + 1] as usize]
    }

    /// Bytes of the vocabulary's longest token: a text of `n` bytes has at least
    /// `n / max_token_bytes()` tokens, which bounds a prompt's length before it is tokenized.
    pub fn max_token_bytes(&self) -> usize {
        self.piece_offsets.windows(2).map(|w| (w[1] - w[0]) as usize).max().unwrap_or(0).max(1)
    }

    /// Text of `ids` (their [`token_bytes`](Self::token_bytes) concatenated, lossy UTF-8).
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend_from_slice(self.token_bytes(id));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Whether `id` ends generation.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// All end-of-generation ids, sorted.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    pub fn unk_id(&self) -> Option<u32> {
        self.unk
    }

    /// Whether [`encode`](Self::encode) with `add_bos = true` prepends BOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether [`encode`](Self::encode) with `add_bos = true` appends EOS.
    pub fn adds_eos(&self) -> bool {
        self.add_eos
    }

    /// Id of the token whose text is exactly `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.vocab.get(text)
    }

    /// Stored text of token `id` (as in the vocabulary: `Ġ`/`▁` markers, `<0x0A>`…).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        ((id as usize) < self.vocab.len()).then(|| self.vocab.text(id))
    }

    /// Whether `id` is a control token (renders as nothing, e.g. `<|im_start|>`).
    pub fn is_control(&self, id: u32) -> bool {
        self.attrs.get(id as usize).is_some_and(|a| a & ATTR_CONTROL != 0)
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    pub fn kind(&self) -> VocabKind {
        self.kind
    }

    /// `tokenizer.ggml.pre` (empty when absent).
    pub fn pre(&self) -> &str {
        &self.pre
    }
}


#[cfg(test)]
mod tests;
