//! Memory: the pre-load estimate against the measured peak resident memory (VmHWM of a child
//! process) for each test model, and a 3-proposer MoA run under a budget that fits one model at a
//! time: it runs in waves, its peak stays under the budget plus a stated margin, and
//! `moa-local plan` printed the very plan the run executed. With an ample budget the proposers'
//! generations overlap.

use std::process::Command;

fn moa(args: &[&str]) -> serde_json::Value {
    let o = Command::new(env!("CARGO_BIN_EXE_moa-local")).args(args).output().expect("running moa-local");
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn estimate_is_within_15_percent_of_the_measured_peak() {
    for m in ["smollm2", "qwen-coder", "gemma3"] {
        let v = moa(&["generate", "--model", m, "--raw", "--temperature", "0", "--max-tokens", "32", "--json", "The capital of France is"]);
        let est = v["memory"]["estimated_peak_bytes"].as_f64().unwrap();
        let rss = v["memory"]["peak_rss_bytes"].as_f64().unwrap();
        let err = (est - rss) / rss;
        println!("{m}: estimated {:.0} MiB, measured peak {:.0} MiB ({:+.1}%)", est / 1048576.0, rss / 1048576.0, err * 100.0);
        assert!(err.abs() <= 0.15, "{m}: estimate off by {:.1}%", err * 100.0);
    }
}

const BUDGET_MIB: f64 = 800.0;
/// Allowed excess over the budget: allocator slack and thread stacks.
const MARGIN_MIB: f64 = 64.0;

#[test]
fn a_tight_budget_runs_in_waves_under_budget_and_plan_matches_the_run() {
    let args = ["--models", "qwen-coder,smollm2,gemma3", "--aggregator", "smollm2", "--max-tokens", "16", "--memory-budget", "800MiB", "--seed", "3"];
    let mut plan_args = vec!["plan", "--json"];
    plan_args.extend_from_slice(&args);
    plan_args.push("What is MoA?");
    let plan = moa(&plan_args);
    let plan_again = moa(&plan_args);
    assert_eq!(plan, plan_again, "the plan is deterministic");
    let mut run_args = args.to_vec();
    run_args.extend_from_slice(&["--json", "What is MoA?"]);
    let run = moa(&run_args);
    assert_eq!(run["plan"], plan, "the run executes the plan `plan` printed");
    let waves = plan["layers"][0]["waves"].as_array().unwrap();
    assert!(waves.len() >= 2, "one model at a time must mean several waves: {plan}");
    for (wi, w) in waves.iter().enumerate() {
        for j in w["jobs"].as_array().unwrap() {
            let a = &run["layers"][0]["answers"][j.as_u64().unwrap() as usize];
            assert_eq!(a["wave"].as_u64().unwrap() as usize, wi + 1);
            assert!(a["error"].is_null(), "{a}");
        }
    }
    let peak = run["peak_rss_bytes"].as_f64().unwrap() / 1048576.0;
    println!("peak {peak:.0} MiB, budget {BUDGET_MIB} MiB, waves {}", waves.len());
    assert!(peak <= BUDGET_MIB + MARGIN_MIB, "peak {peak:.0} MiB over budget {BUDGET_MIB} + {MARGIN_MIB} MiB");
}

#[test]
fn an_ample_budget_runs_proposers_together_and_their_generations_overlap() {
    let run = moa(&["--models", "smollm2,gemma3,smollm2", "--max-tokens", "24", "--memory-budget", "8GiB", "--seed", "1", "--json", "Name three colors."]);
    let waves = run["plan"]["layers"][0]["waves"].as_array().unwrap();
    assert_eq!(waves.len(), 1);
    let answers = run["layers"][0]["answers"].as_array().unwrap();
    let start = |a: &serde_json::Value| a["stats"]["start_secs"].as_f64().unwrap();
    let end = |a: &serde_json::Value| a["stats"]["end_secs"].as_f64().unwrap();
    let latest_start = answers.iter().map(start).fold(f64::MIN, f64::max);
    let earliest_end = answers.iter().map(end).fold(f64::MAX, f64::min);
    assert!(latest_start < earliest_end, "generation intervals must overlap: {answers:?}");
}
