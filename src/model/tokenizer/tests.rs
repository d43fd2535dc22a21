//! Unit tests of the tokenizer on small hand-made vocabularies.

use super::pre::byte_to_unicode_table;
use super::build::VocabSpec;
use super::specials::Frag;
use super::*;

fn spec(kind: VocabKind, tokens: &[&str], types: &[i32], scores: Option<Vec<f32>>) -> VocabSpec {
    VocabSpec {
        kind,
        pre: "gpt-2".into(),
        tokens: tokens.iter().map(|s| s.to_string()).collect(),
        types: Some(types.to_vec()),
        scores,
        merges: Vec::new(),
        bos: Some(1),
        eos: Some(2),
        unk: Some(0),
        eot: None,
        eom: None,
        fim_pad: None,
        fim_rep: None,
        fim_sep: None,
        add_bos: Some(false),
        add_eos: Some(false),
        add_space_prefix: Some(false),
        model_name: String::new(),
    }
}

#[test]
fn tokenizer_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<GgufTokenizer>();
}

#[test]
fn utf8_stream_emoji_split_in_three() {
    let crab = "🦀".as_bytes(); // 4 bytes
    let mut s = Utf8Stream::default();
    assert_eq!(s.push(&crab[..1]), "");
    assert_eq!(s.push(&crab[1..3]), "");
    assert!(s.has_pending());
    assert_eq!(s.push(&[crab[3], b'!']), "🦀!");
    assert_eq!(s.finish(), "");
}

#[test]
fn utf8_stream_invalid_bytes() {
    let mut s = Utf8Stream::new();
    // 0xFF can never start a character; "é" then a lone continuation byte.
    assert_eq!(s.push(&[b'a', 0xFF, b'b']), "a\u{FFFD}b");
    assert_eq!(s.push(&[0xC3, 0xA9, 0x80]), "é\u{FFFD}");
    // A started 3-byte sequence interrupted by ASCII.
    assert_eq!(s.push(&[0xE2, 0x82]), "");
    assert_eq!(s.push(b"x"), "\u{FFFD}x");
    // Left unfinished at the end.
    assert_eq!(s.push(&[0xF0, 0x9F]), "");
    assert_eq!(s.finish(), "\u{FFFD}");
}

#[test]
fn byte_level_mapping_round_trips() {
    let fwd = byte_to_unicode_table();
    let inv = unicode_to_byte_table();
    assert_eq!(fwd[b' ' as usize], 'Ġ');
    assert_eq!(fwd[b'\n' as usize], 'Ċ');
    assert_eq!(fwd[b'A' as usize], 'A');
    for b in 0..=255u8 {
        assert_eq!(inv[fwd[b as usize] as usize], Some(b));
    }
}

#[test]
fn partition_tries_longest_special_first() {
    // specials "AB" (3) and "BCD" (4): llama.cpp cuts BCD first → "A" + BCD.
    let toks = ["<unk>", "<s>", "</s>", "AB", "BCD", "A", "B", "C", "D"];
    let types = [2, 3, 3, 3, 3, 1, 1, 1, 1];
    let t = GgufTokenizer::from_spec(spec(VocabKind::SentencePiece, &toks, &types, None), "t".into()).unwrap();
    assert_eq!(t.partition("ABCD"), vec![Frag::Raw(0, 1), Frag::Token(4)]);
    assert_eq!(t.encode("ABCD", false).unwrap(), vec![5, 4]);
    assert_eq!(t.encode("xABy", false).unwrap_or_default().len(), 3);
    assert_eq!(t.partition("ABAB"), vec![Frag::Token(3), Frag::Token(3)]);
    assert_eq!(t.partition(""), vec![]);
}

#[test]
fn spm_merges_by_score_with_byte_fallback() {
    // "▁ab" wins over "ab" by score; 'é' is not in the vocabulary → its two bytes.
    let toks = ["<unk>", "<s>", "</s>", "▁", "a", "b", "▁a", "ab", "▁ab", "<0xC3>", "<0xA9>"];
    let types = [2, 3, 3, 1, 1, 1, 1, 1, 1, 6, 6];
    let scores = vec![0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -5.0, -4.0, -6.0, 0.0, 0.0];
    let mut s = spec(VocabKind::SentencePiece, &toks, &types, Some(scores));
    s.add_space_prefix = Some(true);
    s.add_bos = Some(true);
    let t = GgufTokenizer::from_spec(s, "t".into()).unwrap();
    // "▁ab": first merge is "ab" (-4, beats "▁a" -5), then "▁" + "ab" = "▁ab".
    assert_eq!(t.encode("ab", true).unwrap(), vec![1, 8]);
    assert_eq!(t.encode("é", false).unwrap(), vec![3, 9, 10]);
    assert_eq!(t.decode(&[1, 8, 9, 10]), " abé");
    assert!(t.is_eog(2));
}

#[test]
fn eog_detection_by_text() {
    let toks = ["<unk>", "<s>", "</s>", "<|im_end|>", "<end_of_turn>", "<|fim_pad|>", "x"];
    let types = [2, 3, 3, 1, 3, 3, 1];
    let t = GgufTokenizer::from_spec(spec(VocabKind::SentencePiece, &toks, &types, None), "t".into()).unwrap();
    assert_eq!(t.eog_ids(), &[2, 3, 4, 5]);
    // <|im_end|> was NORMAL: forced to CONTROL, renders as nothing and is parsed as special.
    assert!(t.is_control(3));
    assert_eq!(t.token_bytes(3), b"");
    assert_eq!(t.encode("x<|im_end|>", false).unwrap(), vec![6, 3]);
}

#[test]
fn unknown_pre_is_an_error_listing_supported() {
    let toks = ["a", "b"];
    let mut s = spec(VocabKind::BytePairEncoding, &toks, &[1, 1], None);
    s.pre = "no-such-pre".into();
    s.bos = None;
    s.eos = None;
    let e = GgufTokenizer::from_spec(s, "t".into()).unwrap_err().to_string();
    assert!(e.contains("no-such-pre") && e.contains("qwen2") && e.contains("smollm"), "{e}");
}
