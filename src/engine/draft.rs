//! Drafts from the context (prompt lookup, as in LLMA, arXiv 2304.04487): an aggregator copies
//! long spans of its references, so the tokens that followed the latest earlier occurrence of the
//! output's last 1–4 tokens — in the prompt or in the output itself — are a cheap guess of what
//! comes next. The decode loop verifies a chain of such guesses in one forward pass.
//!
//! The guess is a pure function of the token sequence ([`Lookup::next`]): the latest position
//! `e ≤ len − 2` at which the longest matching suffix (4 tokens, else 3, 2, 1) ends, and the
//! token after it. So a chain built on tentative tokens proposes exactly what lookups after
//! accepting them would, and a sampled run's tokens do not depend on how long its drafts were
//! (see `Sampler::sample_hinted`).
//!
//! [`DraftLength`] picks each draft's length from the measured cost of an m-row pass against a
//! 1-row step and the acceptance so far, so that a run whose drafts fail costs next to nothing.

use std::collections::HashMap;

/// Longest suffix looked up.
pub const MAX_NGRAM: usize = 4;
/// Longest draft verified in one pass.
pub const MAX_DRAFT: usize = 12;

/// An n-gram index over committed tokens, plus a scan over tentative ones.
#[derive(Default)]
pub struct Lookup {
    tokens: Vec<u32>,
    /// (n, the n tokens zero-padded) → the latest end position `e` indexed so far.
    ends: HashMap<(u8, [u32; MAX_NGRAM]), u32>,
    /// Ends `< indexed` are in `ends`.
    indexed: usize,
}

fn key(s: &[u32]) -> (u8, [u32; MAX_NGRAM]) {
    let mut k = [0u32; MAX_NGRAM];
    k[..s.len()].copy_from_slice(s);
    (s.len() as u8, k)
}

impl Lookup {
    pub fn new(tokens: &[u32]) -> Self {
        let mut l = Self::default();
        l.extend(tokens);
        l
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Commit tokens (the prompt, accepted output).
    pub fn extend(&mut self, toks: &[u32]) {
        self.tokens.extend_from_slice(toks);
        // Ends up to len − 2 are indexed: the suffix ending at len − 1 must not find itself.
        let upto = self.tokens.len().saturating_sub(1);
        for e in self.indexed..upto {
            for n in 1..=MAX_NGRAM.min(e + 1) {
                self.ends.insert(key(&self.tokens[e + 1 - n..=e]), e as u32);
            }
        }
        self.indexed = self.indexed.max(upto);
    }

    /// The guess for the token after `committed ++ tentative`, and the length of the matched
    /// suffix.
    pub fn next(&self, tentative: &[u32]) -> Option<(u32, usize)> {
        let c = self.tokens.len();
        let len = c + tentative.len();
        let at = |i: usize| if i < c { self.tokens[i] } else { tentative[i - c] };
        for n in (1..=MAX_NGRAM.min(len)).rev() {
            let suffix: Vec<u32> = (len - n..len).map(at).collect();
            // Ends in the tentative part (and the one committed end not indexed yet) are later
            // than any indexed one: scan them first, latest first.
            let first_unindexed = self.indexed.max(n - 1);
            for e in (first_unindexed..len.saturating_sub(1)).rev() {
                if (0..n).all(|j| at(e + 1 - n + j) == suffix[j]) {
                    return Some((at(e + 1), n));
                }
            }
            if let Some(&e) = self.ends.get(&key(&suffix)) {
                return Some((at(e as usize + 1), n));
            }
        }
        None
    }

    /// A chain of up to `k` guesses after `committed ++ first`, each made on the ones before.
    pub fn chain(&self, first: &[u32], k: usize) -> Vec<u32> {
        let mut tent = first.to_vec();
        let mut out = Vec::with_capacity(k);
        while out.len() < k {
            let Some((t, _)) = self.next(&tent) else { break };
            tent.push(t);
            out.push(t);
        }
        out
    }
}

/// Chooses draft lengths from measured pass costs and acceptance.
///
/// A pass of `1 + k` rows is modelled as costing `a + b·k` seconds, fitted by least squares
/// over recent passes (older ones decay); acceptance as geometric with a per-token probability
/// `p`, estimated as accepted / (accepted + mismatches) (a draft is accepted up to its first
/// mismatch, so the tokens after it say nothing). The length maximises expected tokens per
/// second, `(1 − p^(k+1)) / (1 − p) / (a + b·k)`; 0 when no draft beats a 1-row step. In a
/// batch of `n` decoding sequences (see [`DraftLength::choose_for`]) the pass's rows are all of
/// theirs, `a + b·n·k`, for `n` times the tokens: each sequence's share is `a / n + b·k`, so
/// drafts that pay for one sequence (a memory-bound step, rows nearly free) stop paying once
/// the batch makes the step compute-bound.
pub struct DraftLength {
    /// Decayed sums for the fit: weight, Σx, Σy, Σx², Σxy (x = extra rows, y = seconds).
    sums: [f64; 5],
    /// Distinct extra-row counts seen (the fit needs two).
    seen: [bool; 2],
    accepted: f64,
    mismatches: f64,
    /// Steps since the last draft (to try again now and then after drafting stopped paying).
    idle: usize,
}

impl Default for DraftLength {
    fn default() -> Self {
        // Prior acceptance 2 of 3.
        Self { sums: [0.0; 5], seen: [false; 2], accepted: 2.0, mismatches: 1.0, idle: 0 }
    }
}

const DECAY: f64 = 0.9;

impl DraftLength {
    /// Record a pass with `extra` rows beyond one per sequence that took `secs`.
    pub fn observe_pass(&mut self, extra: usize, secs: f64) {
        let x = extra as f64;
        let s = &mut self.sums;
        for v in s.iter_mut() {
            *v *= DECAY;
        }
        s[0] += 1.0;
        s[1] += x;
        s[2] += secs;
        s[3] += x * x;
        s[4] += x * secs;
        self.seen[(extra > 0) as usize] = true;
    }

    /// Record a verified draft of `drafted` tokens of which the first `accepted` matched.
    pub fn observe_draft(&mut self, drafted: usize, accepted: usize) {
        self.accepted = DECAY * self.accepted + accepted as f64;
        self.mismatches = DECAY * self.mismatches + (accepted < drafted) as u8 as f64;
    }

    /// The fitted (a, b): seconds of a 1-row step and per extra row.
    fn cost(&self) -> Option<(f64, f64)> {
        let [w, sx, sy, sxx, sxy] = self.sums;
        let var = w * sxx - sx * sx;
        if !(self.seen[0] && self.seen[1]) || var <= 1e-12 * w * w {
            return None;
        }
        let b = ((w * sxy - sx * sy) / var).max(0.0);
        let a = ((sy - b * sx) / w).max(1e-6);
        Some((a, b))
    }

    fn acceptance(&self) -> f64 {
        (self.accepted / (self.accepted + self.mismatches)).clamp(0.0, 0.98)
    }

    /// The estimates, for tracing.
    pub fn describe(&self) -> String {
        format!("cost {:?} acceptance {:.2}", self.cost(), self.acceptance())
    }

    /// Draft length for the next step (0: a plain 1-row step), at most `cap`.
    pub fn choose(&mut self, cap: usize) -> usize {
        self.choose_for(cap, 1)
    }

    /// Draft length per sequence for the next pass of `n` decoding sequences (each drafting up
    /// to the length chosen; passes observed with their total extra rows).
    pub fn choose_for(&mut self, cap: usize, n: usize) -> usize {
        let cap = cap.min(MAX_DRAFT);
        if cap == 0 {
            return 0;
        }
        let Some((a, b)) = self.cost().map(|(a, b)| (a / n.max(1) as f64, b)) else {
            // Measure a 1-row step first, then a short draft.
            return if self.seen[0] { cap.min(2) } else { 0 };
        };
        let p = self.acceptance();
        let mut best = (0usize, 1.0 / a);
        for k in 1..=cap {
            let tokens = (1.0 - p.powi(k as i32 + 1)) / (1.0 - p);
            let rate = tokens / (a + b * k as f64);
            if rate > best.1 * 1.0001 {
                best = (k, rate);
            }
        }
        if best.0 == 0 {
            // Probe now and then so that a change in acceptance is noticed.
            self.idle += 1;
            if self.idle >= 16 {
                self.idle = 0;
                return 1;
            }
        } else {
            self.idle = 0;
        }
        best.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lookup's definition, written out by brute force.
    fn brute(seq: &[u32]) -> Option<(u32, usize)> {
        let len = seq.len();
        for n in (1..=MAX_NGRAM.min(len)).rev() {
            let suf = &seq[len - n..];
            for e in (n - 1..len.saturating_sub(1)).rev() {
                if &seq[e + 1 - n..=e] == suf {
                    return Some((seq[e + 1], n));
                }
            }
        }
        None
    }

    #[test]
    fn lookup_matches_its_definition_on_committed_and_tentative_tokens() {
        let mut x = 12345u64;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 5) as u32
        };
        let seq: Vec<u32> = (0..300).map(|_| rnd()).collect();
        for c in [0, 1, 2, 5, 40, 150, 299] {
            let l = Lookup::new(&seq[..c]);
            for t in 0..(seq.len() - c).min(9) {
                let all = &seq[..c + t];
                assert_eq!(l.next(&seq[c..c + t]), brute(all), "committed {c}, tentative {t}");
            }
        }
        // Incremental commits index the same as one.
        let mut l = Lookup::new(&seq[..10]);
        for i in 10..200 {
            l.extend(&seq[i..i + 1]);
            assert_eq!(l.next(&[]), brute(&seq[..=i]), "after committing {i}");
        }
    }

    #[test]
    fn a_chain_is_the_lookups_of_its_own_prefixes() {
        let prompt = [1, 2, 3, 4, 5, 6, 7, 1, 2, 9, 9, 3, 4, 5];
        let l = Lookup::new(&prompt);
        let chain = l.chain(&[], 6);
        assert_eq!(chain[..2], [6, 7], "3 4 5 was followed by 6 7");
        let mut tent = Vec::new();
        for &t in &chain {
            assert_eq!(l.next(&tent).map(|g| g.0), Some(t));
            tent.push(t);
        }
        assert!(Lookup::new(&[]).next(&[]).is_none());
    }

    #[test]
    fn the_length_follows_cost_and_acceptance() {
        let mut d = DraftLength::default();
        assert_eq!(d.choose(8), 0, "a 1-row step is measured first");
        d.observe_pass(0, 0.050);
        assert_eq!(d.choose(8), 2);
        d.observe_pass(2, 0.060);
        for _ in 0..20 {
            d.observe_draft(8, 8);
        }
        assert!(d.choose(8) >= 6, "cheap rows, every draft accepted: long drafts");
        // Expensive rows: a row costs as much as a step, so even sure drafts barely pay.
        let mut e = DraftLength::default();
        e.observe_pass(0, 0.05);
        e.observe_pass(4, 0.25);
        assert_eq!(e.choose(8), 0, "a draft that costs its tokens' steps does not pay");
        for _ in 0..40 {
            d.observe_draft(4, 0);
        }
        let picks: Vec<usize> = (0..32).map(|_| d.choose(8)).collect();
        assert!(picks.iter().filter(|&&k| k > 0).count() <= 2, "failing drafts stop but for probes: {picks:?}");
        assert_eq!(d.choose(0), 0);
    }

    #[test]
    fn a_batch_drafts_only_while_its_rows_are_cheap_per_sequence() {
        // Passes of 8 sequences: 60 ms for their 8 rows, 6.25 ms per extra row (compute-bound).
        let mut d = DraftLength::default();
        d.observe_pass(0, 0.060);
        d.observe_pass(16, 0.160);
        // One sequence would draft on these numbers (a step's 60 ms buys 9 extra rows)...
        assert!(d.choose(8) > 0);
        // ...eight share the step: 7.5 ms each, and a drafted row at 6.25 ms accepted 2 times
        // in 3 does not pay.
        assert_eq!(d.choose_for(8, 8), 0);
    }
}
