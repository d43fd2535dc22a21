//! IFEval as an evaluation suite: every system answers a fixed subset of the 541 prompts; the
//! project's checkers (`eval::ifeval`) score each response strictly and loosely; the summary has
//! prompt- and instruction-level accuracy with intervals and a per-instruction-type table.
//! Responses are written as `<system>/ifeval_responses.jsonl` (`{"prompt", "response"}`, the
//! format lm-eval's and Google's IFEval scorers read).

use std::fmt::Write as _;

use crate::error::Result;
use crate::eval::data::subset;
use crate::eval::ifeval::{load_prompts, IfEval, Prompt, PromptVerdict};
use crate::eval::report::{mean, summarize, write_file, Scored, Summary};
use crate::eval::run::Context;
use crate::eval::stats::Item;
use crate::model::Message;

pub fn run(ctx: &Context) -> Result<Summary> {
    let o = ctx.opts;
    let path = o.data.join("ifeval/input_data.jsonl");
    if !path.exists() {
        return Err(crate::Error::Config(format!("{} is missing: fetch the evaluation data with `bash benches/eval/fetch.sh`", path.display())));
    }
    let all = load_prompts(&path)?;
    let checker = IfEval::new(&o.data.join("punkt_tab/english"))?;
    // Prompts whose arguments the official code would fill at random cannot be scored
    // reproducibly; they are left out of the pool (and named).
    let (usable, random): (Vec<&Prompt>, Vec<&Prompt>) = all.iter().partition(|p| p.instructions().is_ok());
    if !random.is_empty() {
        eprintln!(
            "ifeval: {} prompt(s) left out (arguments the official checker draws at random): keys {:?}",
            random.len(),
            random.iter().map(|p| p.key).collect::<Vec<_>>()
        );
    }
    // A question's seed follows its place in the data, not in the subset: a larger --limit
    // reuses the smaller run's answers.
    let indices = subset(usable.len(), o.limit, o.subset_seed);
    let pick: Vec<&Prompt> = indices.iter().map(|&i| usable[i]).collect();

    ctx.phase("answering", o.systems.len() * pick.len());
    let mut scored = Vec::new();
    let mut per_type_rows: Vec<(String, crate::eval::ifeval::Scores)> = Vec::new();
    for s in &o.systems {
        let mut recs = Vec::new();
        let mut verdicts: Vec<PromptVerdict> = Vec::new();
        for (&i, p) in indices.iter().zip(&pick) {
            let r = ctx.answer(s, &format!("ifeval/{}", p.key), &[Message::user(p.prompt.clone())], i)?;
            verdicts.push(checker.evaluate(p, &r.text)?);
            recs.push(r);
        }
        let lines: Vec<String> =
            pick.iter().zip(&recs).map(|(p, r)| serde_json::json!({"prompt": p.prompt, "response": r.text}).to_string()).collect();
        write_file(&ctx.system_dir(s).join("ifeval_responses.jsonl"), &(lines.join("\n") + "\n"))?;
        let owned: Vec<Prompt> = pick.iter().map(|p| (*p).clone()).collect();
        per_type_rows.push((s.name.clone(), crate::eval::ifeval::score(&owned, &verdicts)?));
        let all_of = |v: &[bool]| Item::value(f64::from(u8::from(v.iter().all(|&x| x))));
        let share = |v: &[bool]| Item { num: v.iter().filter(|&&x| x).count() as f64, den: v.len() as f64 };
        let metrics = vec![
            ("prompt_strict".to_string(), verdicts.iter().map(|v| all_of(&v.strict)).collect()),
            ("prompt_loose".to_string(), verdicts.iter().map(|v| all_of(&v.loose)).collect()),
            ("inst_strict".to_string(), verdicts.iter().map(|v| share(&v.strict)).collect()),
            ("inst_loose".to_string(), verdicts.iter().map(|v| share(&v.loose)).collect()),
        ];
        scored.push(Scored {
            system: s.clone(),
            metrics,
            answers: recs.len(),
            failed: recs.iter().filter(|r| r.error.is_some()).count(),
            mean_chars: mean(&recs, |r| r.text.chars().count() as f64),
            mean_tokens: mean(&recs, |r| r.tokens as f64),
            mean_secs: mean(&recs, |r| r.secs),
            unjudged: 0,
        });
    }
    let ids = pick.iter().map(|p| p.key.to_string()).collect();
    let mut summary = summarize("ifeval", ids, o.settings, None, &scored);
    summary.extra_markdown = per_type_table(&per_type_rows);
    summary.extra = serde_json::json!({ "per_type": per_type_rows.iter().map(|(n, s)| (n.clone(), &s.per_type)).collect::<std::collections::BTreeMap<_, _>>() });
    Ok(summary)
}

/// Loose accuracy per instruction type, one column per system.
fn per_type_table(rows: &[(String, crate::eval::ifeval::Scores)]) -> String {
    let mut s = String::from("\nLoose accuracy per instruction type (followed/total):\n\n| instruction |");
    for (n, _) in rows {
        let _ = write!(s, " {n} |");
    }
    let _ = writeln!(s, "\n|---|{}", "---:|".repeat(rows.len()));
    let types: std::collections::BTreeSet<&String> = rows.iter().flat_map(|(_, sc)| sc.per_type.keys()).collect();
    for t in types {
        let _ = write!(s, "| {t} |");
        for (_, sc) in rows {
            match sc.per_type.get(t) {
                Some(c) => {
                    let _ = write!(s, " {}/{} |", c.loose_followed, c.total);
                }
                None => s.push_str(" — |"),
            }
        }
        s.push('\n');
    }
    s
}
