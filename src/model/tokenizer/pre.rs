//! Pre-tokenization data for byte-level BPE vocabularies: llama.cpp's regexes per
//! `tokenizer.ggml.pre`, and the GPT-2 byte <-> unicode mapping used to render tokens.

// ---------------------------------------------------------------------------------------------
// Pre-tokenizer regexes (llama.cpp's `llm_tokenizer_bpe` constructor), by `tokenizer.ggml.pre`.
// ---------------------------------------------------------------------------------------------

const RE_GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const RE_LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const RE_QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const RE_QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const RE_MINICPM5: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const RE_SEED_CODER: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+";
const RE_BAILINGMOE: &str = r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";
const RE_GPT4O: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const RE_TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// deepseek-llm's six regexes, applied in turn (llama.cpp's `LLAMA_VOCAB_PRE_TYPE_DEEPSEEK_LLM`).
const RE_DEEPSEEK_LLM: [&str; 6] = [
    "[\r\n]",
    "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
    "\\s?[!-/:-~！-／：-～‘-‟　-。]+",
    "\\s+$",
    "[一-龥ࠀ-一가-퟿]+",
    "\\p{N}+",
];
/// deepseek-coder's five (`LLAMA_VOCAB_PRE_TYPE_DEEPSEEK_CODER`).
const RE_DEEPSEEK_CODER: [&str; 5] = [
    "[\r\n]",
    "\\s?\\p{L}+",
    "\\s?\\p{P}+",
    "[一-龥ࠀ-一가-퟿]+",
    "\\p{N}",
];
const RE_DEEPSEEK3_CJK: &str = "[一-龥぀-ゟ゠-ヿ]+";
const RE_DEEPSEEK3: &str = "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+";
const RE_BLOOM: &str = r" ?[^(\s|.,!?…。，、।۔،)]+";

/// The `tokenizer.ggml.pre` values this crate understands (llama.cpp's names).
pub const SUPPORTED_PRE: &[&str] = &[
    "default",
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
    "jina-v5-nano",
    "dbrx",
    "smaug-bpe",
    "chatglm-bpe",
    "glm4",
    "gpt-2",
    "phi-2",
    "jina-es",
    "jina-de",
    "gigachat",
    "jina-v2-es",
    "jina-v2-de",
    "a.x-4.0",
    "mellum",
    "modern-bert",
    "exaone4",
    "jina-v1-en",
    "jina-v2-code",
    "roberta-bpe",
    "mpt",
    "olmo",
    "jais",
    "trillion",
    "granite-docling",
    "starcoder",
    "refact",
    "command-r",
    "smollm",
    "codeshell",
    "exaone",
    "minerva-7b",
    "mellum2",
    "qwen2",
    "deepseek-r1-qwen",
    "kormo",
    "f2llmv2",
    "megrez",
    "stablelm2",
    "hunyuan",
    "solar-open",
    "grok-2",
    "qwen35",
    "minicpm5",
    "falcon",
    "gpt-4o",
    "llama4",
    "kanana2",
    "talkie",
    "minimax-m2",
    "tekken",
    "deepseek-v3",
    "deepseek-llm",
    "deepseek-coder",
    "gemma4",
    "hunyuan-dense",
    "joyai-llm",
    "hy_v4",
    "seed-coder",
    "bailingmoe",
    "bailingmoe2",
    "llada-moe",
    "bloom",
    "poro-chat",
    "gpt3-finnish",
];

/// How a `gpt2` vocabulary pre-tokenizes, per llama.cpp.
pub(super) struct PreSpec {
    pub regexes: Vec<&'static str>,
    pub ignore_merges: bool,
    /// llama.cpp's `add_bos` default for this pre-tokenizer (metadata can override it).
    pub add_bos_default: bool,
    /// SentencePiece-style BPE (Gemma 4, llama.cpp's `byte_encode = false` with
    /// `escape_whitespaces`): spaces become `▁`, tokens are raw UTF-8 rather than GPT-2's byte
    /// characters, and a character outside the vocabulary falls back to `<0xXX>` byte tokens.
    pub raw_utf8: bool,
}

pub(super) fn pre_spec(pre: &str) -> Option<PreSpec> {
    let spec = |regexes: Vec<&'static str>| PreSpec { regexes, ignore_merges: false, add_bos_default: false, raw_utf8: false };
    Some(match pre {
        "" | "default" => spec(vec![r"[\p{P}\$\+<=>\^~\|]+", RE_GPT2, r"\p{N}+", "[0-9][0-9][0-9]"]),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2"
        | "jina-v5-nano" => PreSpec { regexes: vec![RE_LLAMA3], ignore_merges: true, add_bos_default: true, raw_utf8: false },
        "dbrx" | "smaug-bpe" | "chatglm-bpe" | "glm4" => spec(vec![RE_LLAMA3]),
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de" | "a.x-4.0"
        | "mellum" | "modern-bert" | "exaone4" | "jina-v1-en" | "jina-v2-code" | "roberta-bpe" | "mpt"
        | "olmo" | "jais" | "trillion" | "granite-docling" => spec(vec![RE_GPT2]),
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => {
            spec(vec![r"\p{N}", RE_GPT2])
        }
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2" | "hunyuan"
        | "solar-open" | "grok-2" => spec(vec![RE_QWEN2]),
        "qwen35" => spec(vec![RE_QWEN35]),
        "deepseek-llm" => spec(RE_DEEPSEEK_LLM.to_vec()),
        // Only newlines split a text: BPE merges run over whole lines (llama.cpp: BPE merge
        // lookup asserts no newline inside a token). add_bos is forced on, as llama.cpp does.
        "gemma4" => PreSpec { regexes: vec!["[^\n]+|[\n]+"], ignore_merges: false, add_bos_default: true, raw_utf8: true },
        "deepseek-coder" => spec(RE_DEEPSEEK_CODER.to_vec()),
        "minicpm5" => PreSpec { regexes: vec![r"\p{N}{1,3}", RE_MINICPM5], ignore_merges: true, add_bos_default: false, raw_utf8: false },
        "falcon" => spec(vec![r"[\p{P}\$\+<=>\^~\|`]+", RE_GPT2, "[0-9][0-9][0-9]"]),
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => spec(vec![RE_GPT4O]),
        "tekken" => PreSpec { regexes: vec![RE_TEKKEN], ignore_merges: true, add_bos_default: true, raw_utf8: false },
        "deepseek-v3" | "hunyuan-dense" | "joyai-llm" | "hy_v4" => {
            spec(vec![r"\p{N}{1,3}", RE_DEEPSEEK3_CJK, RE_DEEPSEEK3])
        }
        "seed-coder" => spec(vec![RE_SEED_CODER]),
        "bailingmoe" | "bailingmoe2" | "llada-moe" => spec(vec![RE_BAILINGMOE]),
        "bloom" | "poro-chat" | "gpt3-finnish" => spec(vec![RE_BLOOM]),
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// GPT-2 byte <-> unicode mapping
// ---------------------------------------------------------------------------------------------

/// GPT-2's `bytes_to_unicode`: printable bytes map to themselves, the rest to U+0100 upwards.
pub(super) fn byte_to_unicode_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut assigned = [false; 256];
    for b in (0x21u32..=0x7E).chain(0xA1..=0xAC).chain(0xAE..=0xFF) {
        table[b as usize] = char::from_u32(b).unwrap_or('\0');
        assigned[b as usize] = true;
    }
    let mut n = 0u32;
    for b in 0..256usize {
        if !assigned[b] {
            table[b] = char::from_u32(256 + n).unwrap_or('\0');
            n += 1;
        }
    }
    table
}

/// Inverse of [`byte_to_unicode_table`], indexed by code point (all mapped chars are < U+0144).
pub(super) fn unicode_to_byte_table() -> Vec<Option<u8>> {
    let mut inv = vec![None; 0x200];
    for (b, c) in byte_to_unicode_table().iter().enumerate() {
        inv[*c as usize] = Some(b as u8);
    }
    inv
}

/// Bytes a byte-level BPE token text stands for. Characters outside the mapping (not produced by
/// a proper conversion) are kept as their own UTF-8.
pub(super) fn byte_level_decode(text: &str, inv: &[Option<u8>], out: &mut Vec<u8>) {
    for c in text.chars() {
        match inv.get(c as usize).copied().flatten() {
            Some(b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

/// The byte of an SPM `<0xXX>` token.
pub(super) fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}
