//! MT-Bench: every system answers the questions (turn 2 sees its own turn-1 answer as the
//! conversation), a local judge grades each turn 1–10 with FastChat's prompts (reference-guided
//! for math, reasoning and coding), and answers and judgments are written in FastChat's formats
//! (`mt_bench/model_answer/<system>.jsonl`, `mt_bench/model_judgment/<judge>_single.jsonl`).

use crate::error::Result;
use crate::eval::data::{stratified_subset, MtBench, MtQuestion};
use crate::eval::judge;
use crate::eval::report::{mean, summarize, write_file, Scored, Summary};
use crate::eval::run::Context;
use crate::eval::stats::Item;
use crate::model::Message;

fn tstamp() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

pub fn run(ctx: &Context) -> Result<Summary> {
    let o = ctx.opts;
    let bench = MtBench::load(&o.data)?;
    let cats: Vec<&str> = bench.questions.iter().map(|q| q.category.as_str()).collect();
    let pick = stratified_subset(&cats, o.limit, o.subset_seed);
    let qs: Vec<&MtQuestion> = pick.iter().map(|&i| &bench.questions[i]).collect();
    let turns = o.turns;

    // Answers, system by system (each keeps its models loaded while it runs).
    ctx.phase("answering", o.systems.len() * qs.len() * turns);
    let mut answers: Vec<Vec<Vec<crate::eval::answers::Record>>> = Vec::new();
    for s in &o.systems {
        let mut per_q = Vec::new();
        for (&idx, q) in pick.iter().zip(&qs) {
            let mut conv = Vec::new();
            let mut recs = Vec::new();
            for t in 0..turns.min(q.turns.len()) {
                conv.push(Message::user(q.turns[t].clone()));
                let r = ctx.answer(s, &format!("mt-bench/{}/turn{}", q.question_id, t + 1), &conv, idx)?;
                conv.push(Message::assistant(r.text.clone()));
                recs.push(r);
            }
            per_q.push(recs);
        }
        let lines: Vec<String> = qs
            .iter()
            .zip(&per_q)
            .map(|(q, recs)| {
                serde_json::json!({
                    "question_id": q.question_id, "answer_id": recs.first().map(|r| &r.key[..22]), "model_id": s.name,
                    "choices": [{"index": 0, "turns": recs.iter().map(|r| &r.text).collect::<Vec<_>>()}], "tstamp": tstamp(),
                })
                .to_string()
            })
            .collect();
        write_file(&o.out.join("mt_bench/model_answer").join(format!("{}.jsonl", s.name)), &(lines.join("\n") + "\n"))?;
        answers.push(per_q);
    }

    // Judgments.
    let judge = ctx.judge_system()?;
    ctx.phase("judging", o.systems.len() * qs.len() * turns);
    let mut scored = Vec::new();
    let mut judgment_lines = Vec::new();
    for (s, per_q) in o.systems.iter().zip(&answers) {
        let mut by_turn: Vec<Vec<Item>> = vec![Vec::new(); turns];
        let mut unjudged = 0;
        for (q, recs) in qs.iter().zip(per_q) {
            let texts: Vec<String> = recs.iter().map(|r| r.text.clone()).collect();
            for (t, items) in by_turn.iter_mut().enumerate() {
                if t >= recs.len() {
                    items.push(Item { num: 0.0, den: 0.0 });
                    continue;
                }
                let (name, conv) = judge::single(&bench, q, t, &texts)?;
                let j = ctx.judge(&format!("mt-bench/{}/turn{}/{}/{}", q.question_id, t + 1, s.name, name), &conv)?;
                let score = judge::rating(&j.text);
                unjudged += usize::from(score.is_none());
                items.push(score.map_or(Item { num: 0.0, den: 0.0 }, Item::value));
                judgment_lines.push(
                    serde_json::json!({
                        "question_id": q.question_id, "model": s.name, "judge": [judge.name, name],
                        "user_prompt": conv.last().map(|m| &m.content), "judgment": j.text, "score": score.unwrap_or(-1.0),
                        "turn": t + 1, "tstamp": tstamp(),
                    })
                    .to_string(),
                );
            }
        }
        let all: Vec<&crate::eval::answers::Record> = per_q.iter().flatten().collect();
        let mut metrics = Vec::new();
        if turns == 2 {
            let both = by_turn[0].iter().zip(&by_turn[1]).map(|(a, b)| Item { num: a.num + b.num, den: a.den + b.den }).collect();
            metrics.push(("score".to_string(), both));
        }
        for (t, items) in by_turn.into_iter().enumerate() {
            metrics.push((format!("turn{}", t + 1), items));
        }
        scored.push(Scored {
            system: s.clone(),
            metrics,
            answers: all.len(),
            failed: all.iter().filter(|r| r.error.is_some()).count(),
            mean_chars: mean(&all, |r| r.text.chars().count() as f64),
            mean_tokens: mean(&all, |r| r.tokens as f64),
            mean_secs: mean(&all, |r| r.secs),
            unjudged,
        });
    }
    write_file(&o.out.join("mt_bench/model_judgment").join(format!("{}_single.jsonl", judge.name)), &(judgment_lines.join("\n") + "\n"))?;
    let ids = qs.iter().map(|q| q.question_id.to_string()).collect();
    Ok(summarize("mt-bench", ids, o.settings, Some(judge.spec.clone()), &scored))
}
