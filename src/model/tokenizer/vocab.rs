//! Compact vocabulary storage: every token text in one buffer with `u32` offsets, and an
//! open-addressing hash index from text to id. About 14 bytes per token plus its text, where a
//! `HashMap<String, u32>` beside a `Vec<String>` costs around 100 — tens of MiB for the 150k–260k
//! vocabularies of current models, which would otherwise rival a small model's weights.

/// Token texts by id, and ids by text (for a text stored twice, the last id wins, as in
/// llama.cpp's `token_to_id` map).
pub struct Vocab {
    text: String,
    /// Token `i` is `text[offsets[i]..offsets[i + 1]]`.
    offsets: Vec<u32>,
    /// `id + 1` per slot, 0 for empty; its length is a power of two at least twice the tokens.
    index: Vec<u32>,
}

/// FNV-1a: short keys, no allocation, good enough spread for a table kept half empty.
fn hash(s: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in s {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^ (h >> 29)
}

impl Vocab {
    /// Store `texts` in id order. Fails if the texts exceed 4 GiB.
    pub fn new<'a>(texts: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut text = String::new();
        let mut offsets = vec![0u32];
        for t in texts {
            text.push_str(t);
            offsets.push(u32::try_from(text.len()).map_err(|_| "token texts exceed 4 GiB".to_string())?);
        }
        text.shrink_to_fit();
        let n = offsets.len() - 1;
        let mut v = Self { text, offsets, index: vec![0; (2 * n).next_power_of_two().max(2)] };
        for id in 0..n as u32 {
            let slot = v.slot(v.text(id));
            v.index[slot] = id + 1;
        }
        Ok(v)
    }

    /// The slot holding `s`, or the empty slot where it would go.
    fn slot(&self, s: &str) -> usize {
        let mask = self.index.len() - 1;
        let mut i = hash(s.as_bytes()) as usize & mask;
        loop {
            match self.index[i] {
                0 => return i,
                e if self.text(e - 1) == s => return i,
                _ => i = (i + 1) & mask,
            }
        }
    }

    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Text of token `id` (panics when out of range).
    pub fn text(&self, id: u32) -> &str {
        let i = id as usize;
        &self.text[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// Id of the token whose text is exactly `s`.
    pub fn get(&self, s: &str) -> Option<u32> {
        match self.index[self.slot(s)] {
            0 => None,
            e => Some(e - 1),
        }
    }

    /// Bytes held (texts, offsets, index).
    #[cfg(test)]
    pub fn heap_bytes(&self) -> usize {
        self.text.capacity() + 4 * (self.offsets.capacity() + self.index.capacity())
    }
}

#[cfg(test)]
mod tests {
    use super::Vocab;

    #[test]
    fn lookup_round_trips_and_last_duplicate_wins() {
        let texts: Vec<String> = (0..5000).map(|i| format!("tok{i}")).chain(["tok7".to_string(), "ü▁".into()]).collect();
        let v = Vocab::new(texts.iter().map(String::as_str)).unwrap();
        assert_eq!(v.len(), 5002);
        assert_eq!(v.get("tok7"), Some(5000), "a duplicated text keeps its last id");
        assert_eq!(v.get("tok4999"), Some(4999));
        assert_eq!(v.get("ü▁"), Some(5001));
        assert_eq!(v.text(5001), "ü▁");
        assert_eq!(v.get("tok5000"), None);
        assert_eq!(v.get(""), None);
        assert!(v.heap_bytes() < 5002 * 32, "{} bytes", v.heap_bytes());
    }
}
