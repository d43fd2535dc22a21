//! Agreement of the Rust IFEval checkers with lm-eval 0.4.13's official ones on the fixture
//! `tests/data/ifeval/agreement.jsonl` (verdicts produced by `benches/eval/ifeval_reference.py`,
//! see tests/data/ifeval/README.md): instruction-level agreement must be at least 99% for strict
//! and for loose, and the prompt-level accuracies must match within the same tolerance. Every
//! disagreement is printed.

use std::path::Path;

use moa_local::eval::ifeval::{score, IfEval, Prompt, PromptVerdict};
use serde_json::Value;

const MIN_AGREEMENT: f64 = 0.99;

fn excerpt(s: &str) -> String {
    let one_line: String = s.chars().map(|c| if c == '\n' { '⏎' } else { c }).collect();
    let head: String = one_line.chars().take(90).collect();
    if one_line.chars().count() > 90 { format!("{head}…") } else { head }
}

fn bools(v: &Value, field: &str, line: usize) -> Vec<bool> {
    v[field]
        .as_array()
        .unwrap_or_else(|| panic!("fixture line {line}: `{field}` is not a list"))
        .iter()
        .map(|b| b.as_bool().unwrap_or_else(|| panic!("fixture line {line}: `{field}` holds a non-bool")))
        .collect()
}

#[test]
fn rust_checkers_agree_with_lm_eval() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let punkt_dir = IfEval::default_punkt_dir(root);
    if !punkt_dir.is_dir() {
        let msg = format!("{} is missing: run `bash benches/eval/fetch.sh ifeval`", punkt_dir.display());
        if std::env::var_os("CI").is_some() {
            panic!("{msg}");
        }
        eprintln!("skipping the IFEval agreement test: {msg}");
        return;
    }
    let ifeval = IfEval::new(&punkt_dir).expect("punkt parameters load");
    let fixture = root.join("tests/data/ifeval/agreement.jsonl");
    let text = std::fs::read_to_string(&fixture).expect("fixture tests/data/ifeval/agreement.jsonl is readable");

    let (mut prompts, mut ours, mut official) = (Vec::new(), Vec::new(), Vec::new());
    let (mut total, mut strict_same, mut loose_same) = (0usize, 0usize, 0usize);
    let mut disagreements = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("fixture line {}: {e}", n + 1));
        let prompt = Prompt::parse(line).unwrap_or_else(|e| panic!("fixture line {}: {e}", n + 1));
        let response = v["response"].as_str().unwrap_or_else(|| panic!("fixture line {}: no response", n + 1));
        let want = PromptVerdict { strict: bools(&v, "strict", n + 1), loose: bools(&v, "loose", n + 1) };
        let got = ifeval.evaluate(&prompt, response).unwrap_or_else(|e| panic!("fixture line {}: {e}", n + 1));
        for (k, id) in prompt.instruction_id_list.iter().enumerate() {
            total += 1;
            for (mode, w, g, same) in [
                ("strict", want.strict[k], got.strict[k], &mut strict_same),
                ("loose", want.loose[k], got.loose[k], &mut loose_same),
            ] {
                if w == g {
                    *same += 1;
                } else {
                    disagreements.push(format!(
                        "line {:4} key {:4} {:46} {mode:6} official={w:5} ours={g:5} [{}] {}",
                        n + 1,
                        prompt.key,
                        id,
                        v["source"].as_str().unwrap_or(""),
                        excerpt(response)
                    ));
                }
            }
        }
        prompts.push(prompt);
        ours.push(got);
        official.push(want);
    }
    assert!(total >= 1000, "the fixture should hold at least 1000 instruction checks, has {total}");
    println!("{} disagreements:", disagreements.len());
    for d in &disagreements {
        println!("  {d}");
    }
    let strict = strict_same as f64 / total as f64;
    let loose = loose_same as f64 / total as f64;
    let s_ours = score(&prompts, &ours).expect("scores");
    let s_off = score(&prompts, &official).expect("scores");
    println!(
        "{} responses, {total} instructions: agreement strict {:.4}, loose {:.4}",
        prompts.len(),
        strict,
        loose
    );
    println!(
        "prompt-level strict ours {:.4} official {:.4}; loose ours {:.4} official {:.4}",
        s_ours.prompt_level_strict_acc, s_off.prompt_level_strict_acc, s_ours.prompt_level_loose_acc, s_off.prompt_level_loose_acc
    );
    println!(
        "instruction-level strict ours {:.4} official {:.4}; loose ours {:.4} official {:.4}",
        s_ours.inst_level_strict_acc, s_off.inst_level_strict_acc, s_ours.inst_level_loose_acc, s_off.inst_level_loose_acc
    );
    assert!(strict >= MIN_AGREEMENT, "strict instruction-level agreement {strict:.4} < {MIN_AGREEMENT}");
    assert!(loose >= MIN_AGREEMENT, "loose instruction-level agreement {loose:.4} < {MIN_AGREEMENT}");
    let tol = 1.0 - MIN_AGREEMENT;
    assert!((s_ours.prompt_level_strict_acc - s_off.prompt_level_strict_acc).abs() <= tol, "prompt-level strict differs");
    assert!((s_ours.prompt_level_loose_acc - s_off.prompt_level_loose_acc).abs() <= tol, "prompt-level loose differs");
}
