//! Byte-level BPE over a [`Vocab`]: the text is split by the pre-tokenizer (a `tokenizers`
//! `Sequence` of `Split(regex, Isolated)` steps, then `ByteLevel` without regex or prefix space),
//! and each piece is merged by merge rank. The merge loop is the one `tokenizers`' BPE model runs
//! (a min-heap of (rank, position), stale entries skipped; `ignore_merges` takes a piece that is
//! itself a token whole), kept here so that the vocabulary is stored once, compactly, instead of
//! in the three hash maps of a `tokenizers::models::bpe::BPE`.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::pre::PreSpec;
use super::vocab::Vocab;

pub struct Bpe {
    pre: Sequence,
    /// (left id, right id) → (rank, merged id); the first listing of a pair wins.
    merges: HashMap<(u32, u32), (u32, u32)>,
    ignore_merges: bool,
    /// SentencePiece-style BPE (see [`PreSpec::raw_utf8`]): the `<0xXX>` token of each byte.
    byte_fallback: Option<Vec<Option<u32>>>,
}

/// A character that is not a token (raw-UTF-8 vocabularies): never merged, written as bytes.
const NOT_A_TOKEN: u32 = u32::MAX;

#[derive(Clone, Copy)]
struct Symbol {
    id: u32,
    prev: isize,
    next: isize,
    /// Bytes covered; 0 once merged into its left neighbour.
    len: usize,
}

#[derive(PartialEq, Eq)]
struct Merge {
    pos: usize,
    rank: u32,
    id: u32,
}

impl Ord for Merge {
    /// `BinaryHeap` is a max-heap: invert so the lowest rank, then the leftmost, comes first.
    fn cmp(&self, other: &Self) -> Ordering {
        other.rank.cmp(&self.rank).then_with(|| other.pos.cmp(&self.pos))
    }
}

impl PartialOrd for Merge {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Bpe {
    /// `merges` as stored in `tokenizer.ggml.merges` ("left right"); a merge whose parts or
    /// result are not tokens is dropped.
    pub fn new(vocab: &Vocab, merges: &[String], spec: &PreSpec) -> Result<Self, String> {
        let mut map = HashMap::with_capacity(merges.len());
        let mut joined = String::new();
        for (rank, m) in merges.iter().enumerate() {
            // llama.cpp splits at the first space after the first byte.
            let Some(pos) = m.as_bytes().iter().skip(1).position(|&b| b == b' ').map(|p| p + 1) else { continue };
            let (a, b) = (&m[..pos], &m[pos + 1..]);
            let (Some(ia), Some(ib)) = (vocab.get(a), vocab.get(b)) else { continue };
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            if let Some(id) = vocab.get(&joined) {
                map.entry((ia, ib)).or_insert((rank as u32, id));
            }
        }
        map.shrink_to_fit();
        let mut steps: Vec<PreTokenizerWrapper> = Vec::with_capacity(spec.regexes.len() + 1);
        for re in &spec.regexes {
            let split = Split::new(SplitPattern::Regex(re.to_string()), SplitDelimiterBehavior::Isolated, false)
                .map_err(|e| format!("bad pre-tokenizer regex {re:?}: {e}"))?;
            steps.push(split.into());
        }
        if !spec.raw_utf8 {
            steps.push(ByteLevel::new(false, false, false).into());
        }
        let byte_fallback = spec.raw_utf8.then(|| (0..=255u8).map(|b| vocab.get(&format!("<0x{b:02X}>"))).collect());
        Ok(Self { pre: Sequence::new(steps), merges: map, ignore_merges: spec.ignore_merges, byte_fallback })
    }

    /// Append the ids of `text` (no special tokens in it) to `out`.
    pub fn encode(&self, vocab: &Vocab, text: &str, out: &mut Vec<u32>) -> Result<(), String> {
        let escaped;
        let text = if self.byte_fallback.is_some() {
            escaped = text.replace(' ', "\u{2581}");
            escaped.as_str()
        } else {
            text
        };
        let mut pts = PreTokenizedString::from(text);
        self.pre.pre_tokenize(&mut pts).map_err(|e| format!("pre-tokenizing failed: {e}"))?;
        let mut syms = Vec::new();
        let mut heap = BinaryHeap::new();
        for (piece, _, _) in pts.get_splits(OffsetReferential::Original, OffsetType::Byte) {
            self.word(vocab, piece, &mut syms, &mut heap, out);
        }
        Ok(())
    }

    fn pair(&self, syms: &[Symbol], l: usize) -> Option<Merge> {
        let r = syms[l].next;
        if r < 0 {
            return None;
        }
        self.merges.get(&(syms[l].id, syms[r as usize].id)).map(|&(rank, id)| Merge { pos: l, rank, id })
    }

    fn word(&self, vocab: &Vocab, w: &str, syms: &mut Vec<Symbol>, heap: &mut BinaryHeap<Merge>, out: &mut Vec<u32>) {
        if w.is_empty() {
            return;
        }
        // A word that is a token is taken whole with `ignore_merges`, and so is a run of newlines
        // in a raw-UTF-8 vocabulary (llama.cpp's Gemma 4 rule).
        if self.ignore_merges || (self.byte_fallback.is_some() && w.bytes().all(|b| b == b'\n')) {
            if let Some(id) = vocab.get(w) {
                out.push(id);
                return;
            }
        }
        // One symbol per character that is a token (byte-level characters always are; in a
        // raw-UTF-8 vocabulary the others stay as unmergeable symbols, written as bytes).
        syms.clear();
        let mut buf = [0u8; 4];
        for c in w.chars() {
            let id = vocab.get(c.encode_utf8(&mut buf)).or(self.byte_fallback.as_ref().map(|_| NOT_A_TOKEN));
            if let Some(id) = id {
                let i = syms.len() as isize;
                syms.push(Symbol { id, prev: i - 1, next: i + 1, len: c.len_utf8() });
            }
        }
        let Some(last) = syms.last_mut() else { return };
        last.next = -1;
        heap.clear();
        heap.extend((0..syms.len()).filter_map(|l| self.pair(syms, l)));
        while let Some(top) = heap.pop() {
            let l = top.pos;
            if syms[l].len == 0 || syms[l].next < 0 {
                continue;
            }
            let r = syms[l].next as usize;
            // A stale entry: the pair at `l` changed since it was queued.
            if self.merges.get(&(syms[l].id, syms[r].id)).is_none_or(|&(_, id)| id != top.id) {
                continue;
            }
            let right = syms[r];
            syms[l].id = top.id;
            syms[l].len += right.len;
            syms[l].next = right.next;
            syms[r].len = 0;
            if right.next >= 0 {
                syms[right.next as usize].prev = l as isize;
            }
            if syms[l].prev >= 0 {
                heap.extend(self.pair(syms, syms[l].prev as usize));
            }
            heap.extend(self.pair(syms, l));
        }
        let mut at = 0;
        for s in syms.iter() {
            if s.len == 0 {
                continue;
            }
            match (&self.byte_fallback, s.id) {
                (Some(bytes), NOT_A_TOKEN) => out.extend(w.as_bytes()[at..at + s.len].iter().filter_map(|&b| bytes[b as usize])),
                _ => out.push(s.id),
            }
            at += s.len;
        }
    }
}
