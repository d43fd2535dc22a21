//! AlpacaEval-style pairwise evaluation: every system answers AlpacaEval's instructions; the
//! local judge compares each answer with the GPT-4 (1106-preview) baseline's output using
//! FastChat's pairwise prompt, in both orders (a verdict that flips with the order is a tie).
//! Reports the win rate (ties count half) beside the answers' lengths — the length-controlled
//! correction of AlpacaEval 2 needs its fitted GLM and is not computed. Outputs are written as
//! AlpacaEval's `model_outputs.json` per system.

use crate::error::{Error, Result};
use crate::eval::data::{subset, Alpaca};
use crate::eval::judge;
use crate::eval::report::{mean, summarize, write_file, Scored, Summary};
use crate::eval::run::Context;
use crate::eval::stats::Item;
use crate::model::Message;

pub fn run(ctx: &Context) -> Result<Summary> {
    let o = ctx.opts;
    let data = Alpaca::load(&o.data)?;
    let bench = crate::eval::data::MtBench::load(&o.data)?;
    let pair = bench.judge("pair-v2")?;
    let pick = subset(data.items.len(), o.limit, o.subset_seed);

    ctx.phase("answering", o.systems.len() * pick.len());
    let mut outputs = Vec::new();
    for s in &o.systems {
        let recs = pick
            .iter()
            .map(|&i| ctx.answer(s, &format!("alpaca/{i}"), &[Message::user(data.items[i].instruction.clone())], i))
            .collect::<Result<Vec<_>>>()?;
        let doc: Vec<serde_json::Value> = pick
            .iter()
            .zip(&recs)
            .map(|(&i, r)| serde_json::json!({"instruction": data.items[i].instruction, "output": r.text, "generator": s.name, "dataset": data.items[i].dataset}))
            .collect();
        let text = serde_json::to_string_pretty(&doc).map_err(|e| Error::Other(format!("model_outputs.json: {e}")))?;
        write_file(&ctx.system_dir(s).join("model_outputs.json"), &text)?;
        outputs.push(recs);
    }

    ctx.phase("judging (both orders)", o.systems.len() * pick.len() * 2);
    let mut scored = Vec::new();
    let mut annotations = Vec::new();
    for (s, recs) in o.systems.iter().zip(&outputs) {
        let mut items = Vec::new();
        let mut unjudged = 0;
        for (&i, r) in pick.iter().zip(recs) {
            let it = &data.items[i];
            let first = ctx.judge(&format!("alpaca/{i}/{}/as-A", s.name), &judge::pairwise(pair, &it.instruction, &r.text, &it.output)?)?;
            let second = ctx.judge(&format!("alpaca/{i}/{}/as-B", s.name), &judge::pairwise(pair, &it.instruction, &it.output, &r.text)?)?;
            let (v1, v2) = (judge::verdict(&first.text), judge::verdict(&second.text));
            let outcome = judge::both_orders(v1, v2);
            unjudged += usize::from(outcome.is_none());
            items.push(outcome.map_or(Item { num: 0.0, den: 0.0 }, Item::value));
            annotations.push(serde_json::json!({
                "instruction": it.instruction, "generator_1": it.generator, "generator_2": s.name,
                "verdict_system_as_a": v1, "verdict_system_as_b": v2, "preference": outcome.map(|w| 2.0 - w),
            }));
        }
        scored.push(Scored {
            system: s.clone(),
            metrics: vec![("win_rate".to_string(), items)],
            answers: recs.len(),
            failed: recs.iter().filter(|r| r.error.is_some()).count(),
            mean_chars: mean(recs, |r| r.text.chars().count() as f64),
            mean_tokens: mean(recs, |r| r.tokens as f64),
            mean_secs: mean(recs, |r| r.secs),
            unjudged,
        });
    }
    let text = serde_json::to_string_pretty(&annotations).map_err(|e| Error::Other(format!("annotations.json: {e}")))?;
    write_file(&o.out.join("alpaca_annotations.json"), &text)?;
    let judge = ctx.judge_system()?;
    let ids = pick.iter().map(|i| i.to_string()).collect();
    let mut summary = summarize("alpaca", ids, o.settings, Some(judge.spec.clone()), &scored);
    let baseline_chars = mean(&pick, |&i| data.items[i].output.chars().count() as f64);
    summary.extra_markdown = format!("\nBaseline: {} (mean {:.0} chars). win_rate: a win is 1, a tie (or a verdict that flips with the order) 0.5.\n", data.items[pick[0].min(data.items.len() - 1)].generator, baseline_chars);
    summary.extra = serde_json::json!({"baseline_mean_chars": baseline_chars});
    Ok(summary)
}
