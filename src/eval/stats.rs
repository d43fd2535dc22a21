//! Paired bootstrap statistics over questions: a score's 95% interval, and the paired difference
//! of two systems on the same questions with its interval. A score is a ratio of per-question
//! sums (`num / den`), which covers means (den = 1 per question), prompt-level accuracies and
//! instruction-level accuracies (den = instructions of the prompt) alike. Resampling is seeded,
//! so a report is reproducible.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Resamples per interval.
pub const RESAMPLES: usize = 2000;

/// One question's contribution to a score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Item {
    pub num: f64,
    pub den: f64,
}

impl Item {
    pub fn value(v: f64) -> Self {
        Self { num: v, den: 1.0 }
    }
}

/// A score with its bootstrap 95% interval (percentile method).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Estimate {
    pub value: f64,
    pub low: f64,
    pub high: f64,
    /// Questions it was computed over.
    pub n: usize,
}

impl std::fmt::Display for Estimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = f.precision().unwrap_or(3);
        write!(f, "{:.p$} [{:.p$}, {:.p$}]", self.value, self.low, self.high)
    }
}

fn ratio(items: &[Item], idx: impl Iterator<Item = usize>) -> f64 {
    let (mut n, mut d) = (0.0, 0.0);
    for i in idx {
        n += items[i].num;
        d += items[i].den;
    }
    if d > 0.0 { n / d } else { f64::NAN }
}

fn percentile(mut v: Vec<f64>, q: f64) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

fn interval(value: f64, n: usize, samples: Vec<f64>) -> Estimate {
    Estimate { value, low: percentile(samples.clone(), 0.025), high: percentile(samples, 0.975), n }
}

/// The score over `items` with its interval.
pub fn estimate(items: &[Item], seed: u64) -> Estimate {
    let n = items.len();
    let value = ratio(items, 0..n);
    if n == 0 {
        return Estimate { value, low: f64::NAN, high: f64::NAN, n };
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let samples = (0..RESAMPLES).map(|_| ratio(items, (0..n).map(|_| rng.random_range(0..n)))).collect();
    interval(value, n, samples)
}

/// Score of `a` minus score of `b` over the same questions (`a[i]` and `b[i]` answer question
/// i), resampling questions jointly.
pub fn paired_difference(a: &[Item], b: &[Item], seed: u64) -> Estimate {
    assert_eq!(a.len(), b.len(), "a paired difference needs the same questions");
    let n = a.len();
    let value = ratio(a, 0..n) - ratio(b, 0..n);
    if n == 0 {
        return Estimate { value, low: f64::NAN, high: f64::NAN, n };
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let samples = (0..RESAMPLES)
        .map(|_| {
            let idx: Vec<usize> = (0..n).map(|_| rng.random_range(0..n)).collect();
            ratio(a, idx.iter().copied()) - ratio(b, idx.iter().copied())
        })
        .collect();
    interval(value, n, samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_holds_the_value_and_narrows_with_more_questions() {
        let few: Vec<Item> = (0..20).map(|i| Item::value((i % 2) as f64)).collect();
        let many: Vec<Item> = (0..2000).map(|i| Item::value((i % 2) as f64)).collect();
        let (e1, e2) = (estimate(&few, 7), estimate(&many, 7));
        assert_eq!(e1.value, 0.5);
        assert!(e1.low < 0.5 && e1.high > 0.5 && e1.low >= 0.0 && e1.high <= 1.0, "{e1}");
        assert!(e2.high - e2.low < (e1.high - e1.low) / 4.0, "{e1} vs {e2}");
        // Binomial standard error at n = 20 is 0.112: the 95% interval is about ±0.22.
        assert!((e1.high - e1.low - 0.44).abs() < 0.12, "{e1}");
        assert_eq!(estimate(&few, 7), e1, "seeded: reproducible");
    }

    #[test]
    fn ratio_scores_weight_by_denominator() {
        let items = [Item { num: 1.0, den: 1.0 }, Item { num: 0.0, den: 3.0 }];
        assert_eq!(estimate(&items, 1).value, 0.25);
    }

    #[test]
    fn paired_difference_cancels_shared_question_difficulty() {
        // b = a - 0.1 on every question; question difficulty varies wildly.
        let a: Vec<Item> = (0..30).map(|i| Item::value((i * 37 % 10) as f64 / 10.0 + 0.1)).collect();
        let b: Vec<Item> = a.iter().map(|x| Item::value(x.num - 0.1)).collect();
        let d = paired_difference(&a, &b, 3);
        assert!((d.value - 0.1).abs() < 1e-9 && (d.low - 0.1).abs() < 1e-9 && (d.high - 0.1).abs() < 1e-9, "{d}");
        let unpaired = estimate(&a, 3);
        assert!(unpaired.high - unpaired.low > 0.1, "{unpaired}");
    }
}
