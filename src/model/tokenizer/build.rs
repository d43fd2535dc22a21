//! Building a [`GgufTokenizer`] from `tokenizer.ggml.*` metadata: the vocabulary spec read from
//! the header, token attributes, the BPE merge table or SentencePiece scores, rendered pieces,
//! special tokens and the end-of-generation set (llama.cpp's rules, see the parent module).

use std::path::PathBuf;

use super::*;

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

/// Everything a tokenizer is built from, as read from the metadata (separate from the GGUF file
/// so that unit tests can build small vocabularies).
pub(super) struct VocabSpec {
    pub(super) kind: VocabKind,
    pub(super) pre: String,
    pub(super) tokens: Vec<String>,
    pub(super) types: Option<Vec<i32>>,
    pub(super) scores: Option<Vec<f32>>,
    pub(super) merges: Vec<String>,
    pub(super) bos: Option<u32>,
    pub(super) eos: Option<u32>,
    pub(super) unk: Option<u32>,
    pub(super) eot: Option<u32>,
    pub(super) eom: Option<u32>,
    pub(super) fim_pad: Option<u32>,
    pub(super) fim_rep: Option<u32>,
    pub(super) fim_sep: Option<u32>,
    pub(super) add_bos: Option<bool>,
    pub(super) add_eos: Option<bool>,
    pub(super) add_space_prefix: Option<bool>,
    pub(super) model_name: String,
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

    pub(super) fn from_spec(spec: VocabSpec, path: PathBuf) -> Result<Self> {
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
        let raw_utf8 = pre.as_ref().is_some_and(|p| p.raw_utf8);
        let add_bos_default = match (&pre, spec.kind) {
            (Some(p), _) => p.add_bos_default,
            (None, VocabKind::SentencePiece) => true,
            (None, VocabKind::BytePairEncoding) => false,
        };
        // (Gemma 4 always adds BOS: llama.cpp overrides a file that says otherwise.)
        let add_bos = spec.add_bos.unwrap_or(add_bos_default) || (raw_utf8 && bos.is_some());
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
                    VocabKind::BytePairEncoding if raw_utf8 => pieces.extend_from_slice(t.replace('▁', " ").as_bytes()),
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
                Algo::Bpe(Box::new(Bpe::new(&vocab, &spec.merges, &pre).map_err(&err)?))
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

}

/// Read the tokenizer metadata of `g`.
fn read_spec(g: &GgufFile) -> Result<VocabSpec> {
    let model = g.str("tokenizer.ggml.model")?;
    let kind = match model {
        "gpt2" | "gemma4" => VocabKind::BytePairEncoding,
        "llama" => VocabKind::SentencePiece,
        other => {
            return Err(Error::Tokenizer {
                path: g.path.clone(),
                reason: format!(
                    "unsupported tokenizer model `tokenizer.ggml.model = {other}` (supported: gpt2, gemma4, llama)"
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
        // llama.cpp sets Gemma 4's pre-tokenizer from its model, whatever the file says.
        pre: if model == "gemma4" { "gemma4".into() } else { g.opt_str("tokenizer.ggml.pre").unwrap_or("").to_string() },
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
