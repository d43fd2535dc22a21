//! llama.cpp's SentencePiece-compatible merge loop (`llm_tokenizer_spm_session`): a priority
//! queue of adjacent symbol pairs over a linked list, highest score first, ties leftmost.

use super::vocab::Vocab;

#[derive(Clone, Copy)]
struct SpmSymbol {
    start: usize,
    len: usize,
    prev: isize,
    next: isize,
}

struct SpmBigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for SpmBigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for SpmBigram {}
impl PartialOrd for SpmBigram {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for SpmBigram {
    /// Max-heap order: higher score first, then the leftmost pair.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.score.total_cmp(&other.score).then_with(|| other.left.cmp(&self.left))
    }
}

/// llama.cpp's `llm_tokenizer_spm_session::tokenize` on one (already escaped) fragment.
pub(super) fn spm_tokenize(vocab: &Vocab, text: &str, scores: &[f32], byte_tokens: &[Option<u32>], out: &mut Vec<u32>) {
    if text.is_empty() {
        return;
    }
    let mut syms: Vec<SpmSymbol> = Vec::with_capacity(text.len());
    let count = text.chars().count();
    for (i, (start, c)) in text.char_indices().enumerate() {
        syms.push(SpmSymbol {
            start,
            len: c.len_utf8(),
            prev: i as isize - 1,
            next: if i + 1 == count { -1 } else { i as isize + 1 },
        });
    }
    let mut heap = std::collections::BinaryHeap::with_capacity(syms.len());
    let try_add = |syms: &[SpmSymbol], heap: &mut std::collections::BinaryHeap<SpmBigram>, l: isize, r: isize| {
        if l < 0 || r < 0 {
            return;
        }
        let (l, r) = (l as usize, r as usize);
        let start = syms[l].start;
        let size = syms[l].len + syms[r].len;
        if let Some(id) = vocab.get(&text[start..start + size]) {
            heap.push(SpmBigram { score: scores[id as usize], left: l, right: r, size });
        }
    };
    for i in 1..syms.len() {
        try_add(&syms, &mut heap, i as isize - 1, i as isize);
    }
    while let Some(bg) = heap.pop() {
        let (l, r) = (bg.left, bg.right);
        if syms[l].len == 0 || syms[r].len == 0 || syms[l].len + syms[r].len != bg.size {
            continue;
        }
        syms[l].len += syms[r].len;
        syms[r].len = 0;
        syms[l].next = syms[r].next;
        if syms[r].next >= 0 {
            let nx = syms[r].next as usize;
            syms[nx].prev = l as isize;
        }
        let (prev, next) = (syms[l].prev, syms[l].next);
        try_add(&syms, &mut heap, prev, l as isize);
        try_add(&syms, &mut heap, l as isize, next);
    }
    let mut i: isize = 0;
    while i >= 0 {
        let s = syms[i as usize];
        let piece = &text[s.start..s.start + s.len];
        match vocab.get(piece) {
            Some(id) => out.push(id),
            None => {
                for &b in piece.as_bytes() {
                    if let Some(id) = byte_tokens[b as usize] {
                        out.push(id);
                    }
                }
            }
        }
        i = s.next;
    }
}
