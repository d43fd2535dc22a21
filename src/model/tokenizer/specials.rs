//! Special tokens cut out of the text before the model sees it (llama.cpp's
//! `tokenizer_st_partition`): their matching order and a byte trie that finds which occur.

use std::collections::HashMap;

use super::vocab::Vocab;
use super::{ATTR_CONTROL, ATTR_UNKNOWN, ATTR_USER_DEFINED};

// ---------------------------------------------------------------------------------------------
// Special-token partition
// ---------------------------------------------------------------------------------------------

/// The special tokens (CONTROL / USER_DEFINED / UNKNOWN) in llama.cpp's matching order, with a
/// byte trie over their texts to find which of them occur in a given text.
pub(super) struct Specials {
    /// Token ids, longest text first (ties: lower id first).
    pub order: Vec<u32>,
    /// Trie edges: (node, byte) → node. Node 0 is the root.
    edges: HashMap<(u32, u8), u32>,
    /// Per trie node: the ranks (index into `order`) of the specials ending there.
    terminal: Vec<Vec<u32>>,
    first_byte: [bool; 256],
}

impl Specials {
    pub fn build(vocab: &Vocab, attrs: &[u16]) -> Self {
        let mut order: Vec<u32> = (0..vocab.len() as u32)
            .filter(|&id| attrs[id as usize] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN) != 0)
            .collect();
        // Stable sort: equal lengths keep id order.
        order.sort_by_key(|&id| std::cmp::Reverse(vocab.text(id).len()));
        let mut edges = HashMap::new();
        let mut terminal: Vec<Vec<u32>> = vec![Vec::new()];
        let mut first_byte = [false; 256];
        for (rank, &id) in order.iter().enumerate() {
            let bytes = vocab.text(id).as_bytes();
            let Some(&b0) = bytes.first() else { continue };
            first_byte[b0 as usize] = true;
            let mut node = 0u32;
            for &b in bytes {
                node = match edges.get(&(node, b)) {
                    Some(&n) => n,
                    None => {
                        let n = terminal.len() as u32;
                        terminal.push(Vec::new());
                        edges.insert((node, b), n);
                        n
                    }
                };
            }
            terminal[node as usize].push(rank as u32);
        }
        Self { order, edges, terminal, first_byte }
    }

    /// Ranks of the special tokens that occur somewhere in `text`, in matching order.
    pub fn present(&self, text: &[u8]) -> Vec<u32> {
        let mut seen = vec![false; self.order.len()];
        let mut any = false;
        for start in 0..text.len() {
            if !self.first_byte[text[start] as usize] {
                continue;
            }
            let mut node = 0u32;
            for &b in &text[start..] {
                match self.edges.get(&(node, b)) {
                    Some(&n) => node = n,
                    None => break,
                }
                for &rank in &self.terminal[node as usize] {
                    seen[rank as usize] = true;
                    any = true;
                }
            }
        }
        if !any {
            return Vec::new();
        }
        (0..self.order.len() as u32).filter(|&r| seen[r as usize]).collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Frag {
    /// Byte range of raw text.
    Raw(usize, usize),
    /// A special token cut out of the text.
    Token(u32),
}

pub(super) fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}
