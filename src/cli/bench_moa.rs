//! `moa-local bench --moa`: the MoA critical path on warm models. Each repetition runs the
//! recipe three ways on one runtime, in rotating order and without kept prompt caches: the default (references in finish order,
//! the aggregator prefilled as they arrive, drafts from the references), the same in recipe
//! order, and the baseline (recipe order, the aggregator prefilled after the last proposer,
//! one token per step). Per run: when the last proposer ended, the wait from there to the first
//! aggregate token, the aggregator's decode speed and drafts, and the wall time. At temperature
//! 0 the recipe-order run must write the baseline's text exactly (early prefill and drafts
//! preserve the output), and the default run too when its references came in recipe order.

use std::process::ExitCode;
use std::sync::Arc;

use moa_local::model::Message;
use moa_local::moa::staircase::ReferenceOrder;
use moa_local::moa::{self, MoaReport, Overrides, Recipe, RunOptions};
use moa_local::runtime::{DeviceSpec, Runtime};

use super::bench::BenchArgs;

const MODES: [(&str, bool, ReferenceOrder); 3] = [
    ("default (finish order, early prefill, drafts)", true, ReferenceOrder::Finish),
    ("recipe order, early prefill, drafts", true, ReferenceOrder::Recipe),
    ("baseline (recipe order, --no-early-prefill --no-draft)", false, ReferenceOrder::Recipe),
];

fn options(mode: usize, seed: u64) -> RunOptions {
    let (_, on, order) = MODES[mode];
    RunOptions { seed, draft: on, early_prefill: on, reference_order: order, ..RunOptions::default() }
}

struct Row {
    mode: usize,
    run: usize,
    report: MoaReport,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

pub fn moa_bench(a: &BenchArgs, models: &[String], spec: DeviceSpec) -> anyhow::Result<ExitCode> {
    let o = Overrides {
        models: Some(models.to_vec()),
        aggregator: a.aggregator.clone(),
        layers: Some(a.layers),
        max_tokens: Some(a.max_tokens),
        temperature: Some(a.temperature),
        ..Default::default()
    };
    let recipe = Recipe::build(None, &o, &[])?;
    let rt = Arc::new(Runtime::new(spec)?);
    let tokio = tokio::runtime::Runtime::new()?;
    let conv = vec![Message::user(&a.prompt)];
    // Every run starts without kept prompt caches (the same prompt again would reuse them).
    let run = |mode: usize, seed: u64| {
        rt.clear_prefix_caches();
        tokio.block_on(moa::run(rt.clone(), &recipe, &conv, &options(mode, seed), moa::report::no_events()))
    };
    // Warm-up: loads every model (not counted).
    run(2, 1)?;
    let mut rows = Vec::new();
    for r in 0..a.reps.max(1) {
        for k in 0..MODES.len() {
            let mode = (r + k) % MODES.len();
            rows.push(Row { mode, run: r + 1, report: run(mode, 1)? });
        }
    }
    if a.json {
        let doc: Vec<_> = rows
            .iter()
            .map(|x| serde_json::json!({"mode": MODES[x.mode].0, "run": x.run, "critical_path": x.report.critical_path, "aggregate": x.report.aggregate.stats, "aggregate_text": x.report.aggregate.text, "total_secs": x.report.total_secs}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "MoA bench: proposers {models:?}, aggregator {}, layers {}, max tokens {}, temperature {}, {} run(s) per mode on warm models, device {spec}",
        recipe.aggregator.model,
        a.layers,
        a.max_tokens,
        a.temperature,
        a.reps.max(1)
    );
    println!("| mode | run | proposers done s | wait for 1st aggregate token s | left to prefill | aggregator decode tok/s | drafts accepted | total s |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for x in &rows {
        let (c, s) = (&x.report.critical_path, &x.report.aggregate.stats);
        println!(
            "| {} | {} | {:.2} | {:.2} | {}/{} | {:.1} | {}/{} | {:.2} |",
            MODES[x.mode].0,
            x.run,
            c.last_proposer_end_secs,
            c.wait_for_first_token_secs,
            c.aggregate_prefilled_after_proposers,
            s.prompt_tokens,
            s.decode_tps,
            s.accepted_tokens,
            s.drafted_tokens,
            x.report.total_secs
        );
    }
    println!("\nmedians:");
    let of = |m: usize, f: &dyn Fn(&MoaReport) -> f64| median(rows.iter().filter(|x| x.mode == m).map(|x| f(&x.report)).collect());
    let wait = |r: &MoaReport| r.critical_path.wait_for_first_token_secs;
    let decode = |r: &MoaReport| r.aggregate.stats.decode_tps;
    let total = |r: &MoaReport| r.total_secs;
    for (m, (name, _, _)) in MODES.iter().enumerate() {
        println!(
            "- {name}: wait {:.2}s, aggregator decode {:.1} tok/s ({:.2}x baseline), total {:.2}s ({:.2}x baseline)",
            of(m, &wait),
            of(m, &decode),
            of(m, &decode) / of(2, &decode).max(1e-9),
            of(m, &total),
            of(m, &total) / of(2, &total).max(1e-9)
        );
    }
    if a.temperature == 0.0 {
        let base: Vec<&Row> = rows.iter().filter(|x| x.mode == 2).collect();
        let same = |x: &Row| base.iter().any(|b| b.report.aggregate.text == x.report.aggregate.text);
        let recipe_runs: Vec<&Row> = rows.iter().filter(|x| x.mode == 1).collect();
        let in_order = |x: &Row| x.report.layers.last().is_some_and(|l| l.answers.iter().enumerate().all(|(i, a)| a.reference.is_none_or(|p| p == i + 1)));
        let default_in_order: Vec<&Row> = rows.iter().filter(|x| x.mode == 0 && in_order(x)).collect();
        println!(
            "\ntext: recipe-order runs identical to the baseline: {}/{}; default runs whose references came in recipe order identical: {}/{}",
            recipe_runs.iter().filter(|x| same(x)).count(),
            recipe_runs.len(),
            default_in_order.iter().filter(|x| same(x)).count(),
            default_in_order.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
