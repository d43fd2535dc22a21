//! Strict and loose evaluation of one response (`utils.test_instruction_following_strict` /
//! `_loose`) and the aggregate scores lm-eval reports: prompt-level accuracy (the share of prompts
//! whose every instruction is followed) and instruction-level accuracy (`agg_inst_level_acc`:
//! the share of all instructions followed), strict and loose, plus counts per instruction type.

use std::collections::BTreeMap;

use serde::Serialize;

use super::instructions::Instruction;
use super::punkt::Punkt;
use super::pystr;

/// The verdicts for one prompt's response, one entry per instruction of the prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PromptVerdict {
    pub strict: Vec<bool>,
    pub loose: Vec<bool>,
}

/// Followed / total for one instruction type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TypeCount {
    pub strict_followed: usize,
    pub loose_followed: usize,
    pub total: usize,
}

/// Aggregate IFEval scores, as fractions in [0, 1].
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Scores {
    pub prompts: usize,
    pub instructions: usize,
    pub prompt_level_strict_acc: f64,
    pub prompt_level_loose_acc: f64,
    pub inst_level_strict_acc: f64,
    pub inst_level_loose_acc: f64,
    pub per_type: BTreeMap<String, TypeCount>,
}

/// Strict: every instruction checked on the response as is; an empty (whitespace-only)
/// response follows nothing. (`utils.py` also rebuilds an instruction with `prompt=` when its
/// args contain a `prompt` key; none of the 25 checkers has one, so that step does nothing.)
pub fn strict(instructions: &[Instruction], response: &str, punkt: &Punkt) -> Vec<bool> {
    let nonempty = !pystr::strip(response).is_empty();
    instructions.iter().map(|i| nonempty && i.check_following(response, punkt)).collect()
}

/// The eight loose variants of `test_instruction_following_loose`, in its order.
pub fn loose_variants(response: &str) -> [String; 8] {
    let lines: Vec<&str> = response.split('\n').collect();
    let n = lines.len();
    let join = |a: usize, b: usize| if a < b { lines[a..b].join("\n") } else { String::new() };
    let remove_first = pystr::strip(&join(1, n)).to_string();
    let remove_last = pystr::strip(&join(0, n.saturating_sub(1))).to_string();
    let remove_both = pystr::strip(&join(1, n.saturating_sub(1))).to_string();
    let unstar = |s: &str| s.replace('*', "");
    [
        response.to_string(),
        unstar(response),
        remove_first.clone(),
        remove_last.clone(),
        remove_both.clone(),
        unstar(&remove_first),
        unstar(&remove_last),
        unstar(&remove_both),
    ]
}

/// Loose: an instruction is followed when any non-empty variant follows it.
pub fn loose(instructions: &[Instruction], response: &str, punkt: &Punkt) -> Vec<bool> {
    let variants = loose_variants(response);
    instructions
        .iter()
        .map(|i| variants.iter().any(|r| !pystr::strip(r).is_empty() && i.check_following(r, punkt)))
        .collect()
}

/// Aggregate verdicts; `ids[k]` are the instruction ids of the prompt `verdicts[k]` answers.
pub fn aggregate<'a>(items: impl IntoIterator<Item = (&'a [String], &'a PromptVerdict)>) -> Scores {
    let mut s = Scores::default();
    let (mut ps, mut pl, mut is, mut il) = (0usize, 0usize, 0usize, 0usize);
    for (ids, v) in items {
        s.prompts += 1;
        ps += v.strict.iter().all(|&b| b) as usize;
        pl += v.loose.iter().all(|&b| b) as usize;
        for (k, id) in ids.iter().enumerate() {
            let st = v.strict.get(k).copied().unwrap_or(false);
            let lo = v.loose.get(k).copied().unwrap_or(false);
            s.instructions += 1;
            is += st as usize;
            il += lo as usize;
            let t = s.per_type.entry(id.clone()).or_default();
            t.total += 1;
            t.strict_followed += st as usize;
            t.loose_followed += lo as usize;
        }
    }
    let frac = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    s.prompt_level_strict_acc = frac(ps, s.prompts);
    s.prompt_level_loose_acc = frac(pl, s.prompts);
    s.inst_level_strict_acc = frac(is, s.instructions);
    s.inst_level_loose_acc = frac(il, s.instructions);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loose_variants_drop_first_last_lines_and_stars() {
        let v = loose_variants("Sure!\n**Answer** here\nBye");
        assert_eq!(v[2], "**Answer** here\nBye");
        assert_eq!(v[4], "**Answer** here");
        assert_eq!(v[7], "Answer here");
        let one = loose_variants("single");
        assert_eq!((one[2].as_str(), one[3].as_str(), one[4].as_str()), ("", "", ""));
    }

    #[test]
    fn aggregate_counts_prompts_and_instructions() {
        let ids = vec!["punctuation:no_comma".to_string(), "startend:quotation".to_string()];
        let a = PromptVerdict { strict: vec![true, false], loose: vec![true, true] };
        let b = PromptVerdict { strict: vec![true, true], loose: vec![true, true] };
        let s = aggregate([(ids.as_slice(), &a), (ids.as_slice(), &b)]);
        assert_eq!((s.prompts, s.instructions), (2, 4));
        assert_eq!(s.prompt_level_strict_acc, 0.5);
        assert_eq!(s.inst_level_strict_acc, 0.75);
        assert_eq!(s.prompt_level_loose_acc, 1.0);
        assert_eq!(s.per_type["startend:quotation"], TypeCount { strict_followed: 1, loose_followed: 2, total: 2 });
    }
}
