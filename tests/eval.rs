//! `moa-local eval` end to end on the bundled models (tiny limits): IFEval answers scored and
//! written in lm-eval's response format; an interrupted-then-repeated run answers from the cache
//! and reports the same numbers; MT-Bench writes FastChat's answer and judgment files; the judge
//! and data errors name the problem.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/eval")
}

fn eval(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moa-local")).arg("eval").args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().expect("run moa-local eval")
}

fn have_data() -> bool {
    let ok = data_dir().join("ifeval/input_data.jsonl").exists() && data_dir().join("mt_bench/question.jsonl").exists();
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "evaluation data missing: run `bash benches/eval/fetch.sh`");
        eprintln!("skipped: evaluation data missing (bash benches/eval/fetch.sh)");
    }
    ok
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "eval failed: {err}");
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn ifeval_scores_writes_responses_and_resumes_from_the_cache() {
    if !have_data() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let o = out.path().to_str().unwrap();
    let args = ["--suite", "ifeval", "--systems", "smollm2,duo=moa:smollm2+smollm2>smollm2", "--limit", "3", "--max-tokens", "24", "--temperature", "0", "--out", o];
    let first = ok(&eval(&args));
    assert!(first.contains("| smollm2 |") && first.contains("| duo (MoA) |"), "{first}");
    let s = json(&out.path().join("ifeval_summary.json"));
    assert_eq!(s["questions"], 3);
    assert_eq!(s["systems"].as_array().unwrap().len(), 2);
    assert_eq!(s["best_single"], "smollm2");
    for sys in s["systems"].as_array().unwrap() {
        let m = &sys["metrics"];
        assert_eq!(m[0]["metric"], "prompt_strict");
        for k in 0..4 {
            let e = &m[k]["score"];
            let (v, lo, hi) = (e["value"].as_f64().unwrap(), e["low"].as_f64().unwrap(), e["high"].as_f64().unwrap());
            assert!((0.0..=1.0).contains(&v) && lo <= v && v <= hi, "{e}");
        }
        assert_eq!(sys["answers"], 3);
    }
    // The MoA system is compared with the best single model on the same questions.
    assert!(s["systems"][1]["metrics"][0]["vs_best_single"]["n"] == 3, "{}", s["systems"][1]);
    let lines = std::fs::read_to_string(out.path().join("smollm2/ifeval_responses.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r["prompt"].as_str().is_some_and(|p| !p.is_empty()) && r["response"].is_string()));
    // Again: every answer comes from the cache (no generation), the numbers are the same.
    let again = eval(&args);
    ok(&again);
    assert_eq!(json(&out.path().join("ifeval_summary.json"))["systems"], s["systems"]);
    let cached = std::fs::read_to_string(out.path().join("cache/answers.jsonl")).unwrap();
    assert_eq!(cached.lines().count(), 6, "one record per system and question, none added by the rerun");
}

#[test]
fn mt_bench_writes_fastchat_answers_and_judgments() {
    if !have_data() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let o = out.path().to_str().unwrap();
    let args = ["--suite", "mt-bench", "--systems", "smollm2", "--judge", "smollm2", "--limit", "1", "--turns", "2", "--max-tokens", "16", "--judge-max-tokens", "24", "--temperature", "0", "--out", o];
    ok(&eval(&args));
    let answers = std::fs::read_to_string(out.path().join("mt_bench/model_answer/smollm2.jsonl")).unwrap();
    let a: serde_json::Value = serde_json::from_str(answers.lines().next().unwrap()).unwrap();
    assert_eq!(a["model_id"], "smollm2");
    assert_eq!(a["choices"][0]["turns"].as_array().unwrap().len(), 2, "{a}");
    let judgments = std::fs::read_to_string(out.path().join("mt_bench/model_judgment/smollm2_single.jsonl")).unwrap();
    let j: Vec<serde_json::Value> = judgments.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(j.len(), 2, "one judgment per turn");
    assert_eq!(j[1]["turn"], 2);
    assert!(j[1]["judge"][1].as_str().unwrap().ends_with("multi-turn"), "{}", j[1]);
    // The turn-2 judge prompt carries the turn-1 answer as the conversation.
    let turn1 = a["choices"][0]["turns"][0].as_str().unwrap();
    assert!(j[1]["user_prompt"].as_str().unwrap().contains(turn1.trim()), "{}", j[1]["user_prompt"]);
    let s = json(&out.path().join("mt_bench_summary.json"));
    assert_eq!(s["systems"][0]["metrics"][0]["metric"], "score");
    assert_eq!(s["judge"], "smollm2");
}

#[test]
fn bad_eval_requests_name_the_problem() {
    let out = tempfile::tempdir().unwrap();
    let o = out.path().to_str().unwrap();
    let e = eval(&["--suite", "mt-bench", "--systems", "smollm2", "--out", o]);
    assert!(!e.status.success() && String::from_utf8_lossy(&e.stderr).contains("--judge"), "{}", String::from_utf8_lossy(&e.stderr));
    let e = eval(&["--suite", "ifeval", "--systems", "smollm2", "--data", "/nonexistent", "--out", o]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("benches/eval/fetch.sh"), "{}", String::from_utf8_lossy(&e.stderr));
    let e = eval(&["--suite", "humaneval", "--systems", "smollm2", "--out", o]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("unknown suite `humaneval`"));
    let e = eval(&["--suite", "ifeval", "--systems", "moa:a++b", "--out", o]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("moa:a++b"));
}
