#!/usr/bin/env bash
# Serving under load, on loopback: `moa-local serve` (continuous batching, --parallel P), the
# same with --parallel 1 (one sequence at a time: the previous behaviour), and llama-server
# (-np P, built from the same llama-cpp-python sdist as compare_llama_cpp.sh) on the same GGUF,
# threads and requests. For each client count: aggregate completion tok/s, mean and p95
# latency and time to first token (streamed requests); then whether moa-local's answers (temperature 0) are the same batched and alone; then
# two MoA requests one after the other against the same two at once.
#
#   bash benches/serve_load.sh [-m qwen-coder] [-p 4] [-t 2] [-n 64] [-r 2] [-c "1 4 8"]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
model=qwen-coder; par=4; threads=$(nproc); n=64; reps=2; clients="1 4 8"
while getopts "m:p:t:n:r:c:" o; do case $o in m) model=$OPTARG;; p) par=$OPTARG;; t) threads=$OPTARG;; n) n=$OPTARG;; r) reps=$OPTARG;; c) clients=$OPTARG;; *) exit 2;; esac; done

server=$(bash benches/llama_cpp_build.sh llama-server)
cargo build --release -q
gguf=$(bash benches/model_file.sh "$model" serve_load.sh)
out=$(mktemp -d)
port=18931
pid=
stop() { if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi; pid=; }
trap stop EXIT
wait_up() {
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && return 0; sleep 0.5; done
  echo "serve_load.sh: the server on port $port did not come up" >&2; exit 1
}
run_all() { # label
  for c in $clients; do
    python3 benches/serve_load.py --base "http://127.0.0.1:$port" --model "$model" -c "$c" -r "$reps" -n "$n" \
      --out "$out/$1.c$c.json" >/dev/null
  done
}
MOA_THREADS=$threads ./target/release/moa-local serve --port $port --models "$model" --parallel "$par" --queue 64 \
  >"$out/moa.log" 2>&1 & pid=$!
wait_up; run_all moa; stop
MOA_THREADS=$threads ./target/release/moa-local serve --port $port --models "$model" --parallel 1 --queue 64 \
  >"$out/moa1.log" 2>&1 & pid=$!
wait_up; run_all moa1; stop
# Two MoA requests (the default recipe over the bundled models) one after the other, then at once.
MOA_THREADS=$threads ./target/release/moa-local serve --port $port --moa-concurrency 2 \
  >"$out/moa2.log" 2>&1 & pid=$!
wait_up; python3 benches/serve_load.py --base "http://127.0.0.1:$port" --model moa -n "$n" --pair >"$out/pair.json"; stop
"$server" -m "$gguf" -t "$threads" -np "$par" -c $((par * 2048)) --port $port >"$out/llama.log" 2>&1 & pid=$!
wait_up; run_all llama; stop
python3 - "$out" "$clients" "$par" "$threads" "$n" <<'PY'
import json, sys
out, clients, par, threads, n = sys.argv[1], sys.argv[2].split(), sys.argv[3], sys.argv[4], sys.argv[5]
load = lambda l, c: json.load(open(f"{out}/{l}.c{c}.json"))
print(f"| clients | moa-local (--parallel {par}) tok/s | mean / p95 s | TTFT mean / p95 s | moa-local --parallel 1 tok/s | mean / p95 s | llama-server -np {par} tok/s | mean / p95 s | TTFT mean / p95 s | moa / llama |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
same = []
for c in clients:
    m, m1, l = (load(x, c) for x in ("moa", "moa1", "llama"))
    f = lambda r: f"{r['summary']['mean_latency_s']:.2f} / {r['summary']['p95_latency_s']:.2f}"
    t = lambda r: f"{r['summary'].get('mean_ttft_s', float('nan')):.2f} / {r['summary'].get('p95_ttft_s', float('nan')):.2f}"
    print(f"| {c} | {m['summary']['tok_s']:.1f} | {f(m)} | {t(m)} | {m1['summary']['tok_s']:.1f} | {f(m1)} | {l['summary']['tok_s']:.1f} | {f(l)} | {t(l)} | {m['summary']['tok_s'] / l['summary']['tok_s']:.2f}x |")
    a = {r["prompt"]: r["text"] for r in m["results"]}
    b = {r["prompt"]: r["text"] for r in m1["results"]}
    same += [a[p] == b[p] for p in a if p in b]
print(f"\n{threads} threads, max_tokens {n}, temperature 0; moa-local answers batched vs one at a time: {sum(same)} of {len(same)} identical")
p = json.load(open(f"{out}/pair.json"))
print(f"two MoA requests (default recipe, --moa-concurrency 2): one after the other {p['sequential_s']:.1f} s, at once {p['concurrent_s']:.1f} s; same answers: {p['same_answers']}")
PY
