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

/// `tokenizer.ggml.token_type` value → attribute (GGUF: 0 undefined, 1 normal, 2 unknown,
/// 3 control, 4 user defined, 5 unused, 6 byte).
fn attr_from_type(t: i32) -> u16 {
    match t {
        1 => ATTR_NORMAL,
        2 => ATTR_UNKNOWN,
        3 => ATTR_CONTROL,
        4 => ATTR_USER_DEFINED,
        5 => ATTR_UNUSED,
        6 => ATTR_BYTE,
        _ => 0,
    }
}

/// Token texts that end generation (llama.cpp's list in `llama_vocab::impl::load`).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];
/// Texts llama.cpp recognises as the end-of-turn token when `eot_token_id` is absent.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];

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

/// Everything a tokenizer is built from, as read from the metadata (separate from the GGUF file
/// so that unit tests can build small vocabularies).
struct VocabSpec {
    kind: VocabKind,
    pre: String,
    tokens: Vec<String>,
    types: Option<Vec<i32>>,
    scores: Option<Vec<f32>>,
    merges: Vec<String>,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
    fim_pad: Option<u32>,
    fim_rep: Option<u32>,
    fim_sep: Option<u32>,
    add_bos: Option<bool>,
    add_eos: Option<bool>,
    add_space_prefix: Option<bool>,
    model_name: String,
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

/// Turn a metadata error into a tokenizer error that still names the field.
fn as_tok_err(e: Error) -> Error {
    match e {
        Error::Metadata { path, field, problem } => {
            Error::Tokenizer { path, reason: format!("metadata field `{field}` {problem}") }
        }
        other => other,
    }
}

impl GgufTokenizer {
    /// Build the tokenizer from `tokenizer.ggml.*` metadata.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let spec = read_spec(g).map_err(as_tok_err)?;
        Self::from_spec(spec, g.path.clone())
    }

    fn from_spec(spec: VocabSpec, path: PathBuf) -> Result<Self> {
        let err = |reason: String| Error::Tokenizer { path: path.clone(), reason };
        let n = spec.tokens.len();
        if n == 0 {
            return Err(err("metadata field `tokenizer.ggml.tokens` is empty".into()));
        }
        if n > u32::MAX as usize / 2 {
            return Err(err(format!("vocabulary of {n} tokens is too large")));
        }
        if let Some(t) = &spec.types {
            if t.len() < n {
                return Err(err(format!(
                    "metadata field `tokenizer.ggml.token_type` has {} entries for {n} tokens",
                    t.len()
                )));
            }
        }
        if let Some(s) = &spec.scores {
            if s.len() < n {
                return Err(err(format!(
                    "metadata field `tokenizer.ggml.scores` has {} entries for {n} tokens",
                    s.len()
                )));
            }
        }

        // Texts (llama.cpp renames empty tokens) and the text → id index (last id wins).
        let mut tokens = spec.tokens;
        for (i, t) in tokens.iter_mut().enumerate() {
            if t.is_empty() {
                *t = format!("[EMPTY_{i}]");
            }
        }
        let vocab = Vocab::new(tokens.iter().map(String::as_str)).map_err(&err)?;
        drop(tokens);
        let mut attrs: Vec<u16> = match &spec.types {
            Some(t) => t[..n].iter().map(|&x| attr_from_type(x)).collect(),
            None => vec![ATTR_NORMAL; n],
        };

        // Special ids: metadata, else llama.cpp's SPM defaults (gpt2: none, see module docs).
        let in_range = |id: Option<u32>| id.filter(|&i| (i as usize) < n);
        let (default_bos, default_eos, default_unk) = match spec.kind {
            VocabKind::SentencePiece => (Some(1), Some(2), Some(0)),
            VocabKind::BytePairEncoding => (None, None, None),
        };
        let bos = in_range(spec.bos).or(in_range(default_bos));
        let eos = in_range(spec.eos).or(in_range(default_eos));
        let unk = in_range(spec.unk).or(in_range(default_unk));

        let pre = match spec.kind {
            VocabKind::BytePairEncoding => Some(pre_spec(&spec.pre).ok_or_else(|| {
                err(format!(
                    "unsupported pre-tokenizer `tokenizer.ggml.pre = {}` (supported: {})",
                    spec.pre,
                    SUPPORTED_PRE.join(", ")
                ))
            })?),
            VocabKind::SentencePiece => None,
        };
        let add_bos_default = match (&pre, spec.kind) {
            (Some(p), _) => p.add_bos_default,
            (None, VocabKind::SentencePiece) => true,
            (None, VocabKind::BytePairEncoding) => false,
        };
        let add_bos = spec.add_bos.unwrap_or(add_bos_default);
        let add_eos = spec.add_eos.unwrap_or(false);
        let add_space_prefix = match spec.kind {
            VocabKind::SentencePiece => spec.add_space_prefix.unwrap_or(true),
            VocabKind::BytePairEncoding => false,
        };
        if add_bos && bos.is_none() {
            return Err(err(
                "tokenizer.ggml.add_bos_token is true but tokenizer.ggml.bos_token_id is not set".into(),
            ));
        }
        if add_eos && eos.is_none() {
            return Err(err(
                "tokenizer.ggml.add_eos_token is true but tokenizer.ggml.eos_token_id is not set".into(),
            ));
        }

        // End of generation, as llama.cpp determines it (forcing those tokens to CONTROL).
        let find_first = |list: &[&str]| -> Option<u32> { list.iter().filter_map(|t| vocab.get(t)).min() };
        // Ids from the metadata win; otherwise found by text, and then forced to CONTROL.
        let mut detect = |meta: Option<u32>, list: &[&str]| -> Option<u32> {
            if let Some(id) = in_range(meta) {
                return Some(id);
            }
            let id = find_first(list)?;
            attrs[id as usize] |= ATTR_CONTROL;
            Some(id)
        };
        let eot = detect(spec.eot, EOT_TEXTS);
        let eom = detect(spec.eom, &["<|eom_id|>"]);
        let fim_pad = detect(spec.fim_pad, FIM_PAD_TEXTS);
        let fim_rep = detect(spec.fim_rep, FIM_REP_TEXTS);
        let fim_sep = detect(spec.fim_sep, FIM_SEP_TEXTS);
        let mut eog: Vec<u32> = [fim_pad, fim_rep, fim_sep].into_iter().flatten().collect();
        for t in EOG_TEXTS {
            if let Some(id) = vocab.get(t) {
                eog.push(id);
                attrs[id as usize] |= ATTR_CONTROL;
            }
        }
        // gpt-oss: these structural tokens are always rendered.
        for t in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(id) = vocab.get(t) {
                attrs[id as usize] = ATTR_USER_DEFINED;
            }
        }
        eog.extend([eos, eot, eom].into_iter().flatten());
        eog.sort_unstable();
        eog.dedup();
        // o200k_harmony / solar-open: `<|end|>` is not end of generation there.
        let has = |eog: &[u32], t: &str| eog.iter().any(|&id| vocab.text(id) == t);
        if (has(&eog, "<|return|>") && has(&eog, "<|call|>") || has(&eog, "<|calls|>") && has(&eog, "<|flush|>"))
            && has(&eog, "<|end|>")
        {
            if let Some(pos) = eog.iter().position(|&id| vocab.text(id) == "<|end|>") {
                attrs[eog[pos] as usize] = ATTR_USER_DEFINED;
                eog.remove(pos);
            }
        }
        // gemma4 / paddleocr: `</s>` is not end of generation when `<|tool_response>` is.
        if has(&eog, "<|tool_response>") {
            if let Some(pos) = eog.iter().position(|&id| vocab.text(id) == "</s>") {
                attrs[eog[pos] as usize] = ATTR_NORMAL;
                eog.remove(pos);
            }
        }
        // Phi-3: special tokens swallow the whitespace after them (llama.cpp's RSTRIP).
        let lname = spec.model_name.to_lowercase();
        if lname.contains("phi-3") || lname.contains("phi3") {
            for a in attrs.iter_mut() {
                if *a & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN) != 0 {
                    *a |= ATTR_RSTRIP;
                }
            }
            if let Some(id) = vocab.get("</s>") {
                attrs[id as usize] |= ATTR_RSTRIP;
            }
            for t in ["<unk>", "<s>", "<|endoftext|>"] {
                if let Some(id) = vocab.get(t) {
                    attrs[id as usize] &= !ATTR_RSTRIP;
                }
            }
        }

        // Rendered bytes of every token (llama.cpp's token_to_piece with special = false).
        let inv = unicode_to_byte_table();
        let mut pieces = Vec::new();
        let mut piece_offsets = Vec::with_capacity(n + 1);
        piece_offsets.push(0u32);
        for (id, &a) in attrs.iter().enumerate() {
            let t = vocab.text(id as u32);
            if a & (ATTR_CONTROL | ATTR_UNKNOWN) != 0 {
                // renders as nothing
            } else if a & ATTR_USER_DEFINED != 0 {
                pieces.extend_from_slice(t.as_bytes());
            } else if a & ATTR_NORMAL != 0 {
                match spec.kind {
                    VocabKind::SentencePiece => pieces.extend_from_slice(t.replace('▁', " ").as_bytes()),
                    VocabKind::BytePairEncoding => byte_level_decode(t, &inv, &mut pieces),
                }
            } else if a & ATTR_BYTE != 0 {
                if let Some(b) = parse_byte_token(t) {
                    pieces.push(b);
                }
            }
            piece_offsets.push(u32::try_from(pieces.len()).map_err(|_| err("token texts exceed 4 GiB".into()))?);
        }
        pieces.shrink_to_fit();

        let specials = Specials::build(&vocab, &attrs);

        let algo = match spec.kind {
            VocabKind::SentencePiece => {
                let scores = spec.scores.map(|mut s| {
                    s.truncate(n);
                    s
                });
                let scores = scores.unwrap_or_else(|| vec![0.0; n]);
                let byte_tokens = (0..=255u8)
                    .map(|b| {
                        vocab
                            .get(&format!("<0x{b:02X}>"))
                            .or_else(|| std::str::from_utf8(&[b]).ok().and_then(|s| vocab.get(s)))
                            .or(unk)
                    })
                    .collect();
                Algo::Spm { scores, byte_tokens }
            }
            VocabKind::BytePairEncoding => {
                let pre = pre.expect("gpt2 vocabularies always have a pre-tokenizer spec");
                Algo::Bpe(Box::new(Bpe::new(&vocab, &spec.merges, &pre.regexes, pre.ignore_merges).map_err(&err)?))
            }
        };

        Ok(Self {
            path,
            kind: spec.kind,
            pre: spec.pre,
            algo,
            vocab,
            attrs,
            pieces,
            piece_offsets,
            specials,
            bos,
            eos,
            unk,
            add_bos,
            add_eos,
            add_space_prefix,
            eog,
        })
    }

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


    /// The raw bytes token `id` renders to in generated text (control tokens: nothing). Unknown
    /// ids render as nothing.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        let i = id as usize;
        if i + 1 >= self.piece_offsets.len() {
            return &[];
        }
        &self.pieces[self.piece_offsets[i] as usize..self.piece_offsets[i + 1] as usize]
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

/// Read the tokenizer metadata of `g`.
fn read_spec(g: &GgufFile) -> Result<VocabSpec> {
    let model = g.str("tokenizer.ggml.model")?;
    let kind = match model {
        "gpt2" => VocabKind::BytePairEncoding,
        "llama" => VocabKind::SentencePiece,
        other => {
            return Err(Error::Tokenizer {
                path: g.path.clone(),
                reason: format!(
                    "unsupported tokenizer model `tokenizer.ggml.model = {other}` (supported: gpt2, llama)"
                ),
            })
        }
    };
    let tokens: Vec<String> = g.str_array("tokenizer.ggml.tokens")?.into_iter().map(str::to_string).collect();
    let types = if g.has("tokenizer.ggml.token_type") { Some(g.i32_array("tokenizer.ggml.token_type")?) } else { None };
    let scores = if g.has("tokenizer.ggml.scores") {
        match g.f32_array("tokenizer.ggml.scores") {
            Ok(s) => Some(s),
            Err(e) => match g.i32_array("tokenizer.ggml.scores") {
                Ok(s) => Some(s.into_iter().map(|x| x as f32).collect()),
                Err(_) => return Err(e),
            },
        }
    } else {
        None
    };
    let merges: Vec<String> = match kind {
        VocabKind::BytePairEncoding => {
            g.str_array("tokenizer.ggml.merges")?.into_iter().map(str::to_string).collect()
        }
        VocabKind::SentencePiece => Vec::new(),
    };
    let opt_id = |key: &str| -> Result<Option<u32>> { if g.has(key) { g.u32(key).map(Some) } else { Ok(None) } };
    let opt_bool = |key: &str| -> Result<Option<bool>> { if g.has(key) { g.bool_or(key, false).map(Some) } else { Ok(None) } };
    Ok(VocabSpec {
        kind,
        pre: g.opt_str("tokenizer.ggml.pre").unwrap_or("").to_string(),
        tokens,
        types,
        scores,
        merges,
        bos: opt_id("tokenizer.ggml.bos_token_id")?,
        eos: opt_id("tokenizer.ggml.eos_token_id")?,
        unk: opt_id("tokenizer.ggml.unknown_token_id")?,
        eot: opt_id("tokenizer.ggml.eot_token_id")?,
        eom: opt_id("tokenizer.ggml.eom_token_id")?,
        fim_pad: opt_id("tokenizer.ggml.fim_pad_token_id")?,
        fim_rep: opt_id("tokenizer.ggml.fim_rep_token_id")?,
        fim_sep: opt_id("tokenizer.ggml.fim_sep_token_id")?,
        add_bos: opt_bool("tokenizer.ggml.add_bos_token")?,
        add_eos: opt_bool("tokenizer.ggml.add_eos_token")?,
        add_space_prefix: opt_bool("tokenizer.ggml.add_space_prefix")?,
        model_name: g.opt_str("general.name").unwrap_or("").to_string(),
    })
}

#[cfg(test)]
mod tests;
