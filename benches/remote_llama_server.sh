#!/usr/bin/env bash
# llama-server as a remote MoA proposer, on loopback. Builds llama-server from the same
# llama-cpp-python sdist as the benches, serves one GGUF with it (--jinja: the file's own chat
# template), runs a MoA recipe whose first proposer is that endpoint and whose second proposer
# and aggregator are local, and checks the parity rule of tests/greedy_parity.rs: at temperature 0
# the remote proposer's answer must agree with `moa-local generate` on the same file for the
# first 16 tokens (or be identical when shorter). Prints the run's summary, the two answers'
# token ids and where they part. Exit 0 when the rule holds; 1 when not; 77 (skipped) without
# cmake or a C++ compiler, so CI may call it where the build is absent.
#
#   bash benches/remote_llama_server.sh [-m smollm2] [-a qwen-coder] [-n 48] [-t THREADS] [-p PROMPT]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
model=smollm2; local_model=qwen-coder; n=48; threads=$(nproc); prompt="Name three primary colors and one fact about each."
while getopts "m:a:n:t:p:" o; do case $o in m) model=$OPTARG;; a) local_model=$OPTARG;; n) n=$OPTARG;; t) threads=$OPTARG;; p) prompt=$OPTARG;; *) exit 2;; esac; done
command -v cmake >/dev/null && command -v c++ >/dev/null || { echo "remote_llama_server.sh: skipped (needs cmake and c++)" >&2; exit 77; }

server=$(bash benches/llama_cpp_build.sh llama-server)
cargo build --release -q
moa=./target/release/moa-local
gguf=$(bash benches/model_file.sh "$model" remote_llama_server.sh)
out=$(mktemp -d)
port=18947
"$server" -m "$gguf" -t "$threads" -c 4096 --jinja --port $port --alias "$model" >"$out/llama.log" 2>&1 & pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 600); do curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break; sleep 0.5; done
curl -sf "http://127.0.0.1:$port/health" >/dev/null || { echo "llama-server did not come up:" >&2; tail -5 "$out/llama.log" >&2; exit 1; }

url="http://127.0.0.1:$port/v1#$model"
echo "== plan (the endpoint is asked for its model and context)"
MOA_THREADS=$threads $moa plan --models "$url,$local_model" --aggregator "$local_model" --max-tokens "$n" "$prompt"
echo "== MoA run: proposers [$url, $local_model], aggregator $local_model"
MOA_THREADS=$threads $moa --models "$url,$local_model" --aggregator "$local_model" --temperature 0 --max-tokens "$n" \
  --reference-order recipe --json "$prompt" >"$out/run.json"
MOA_THREADS=$threads $moa generate --model "$model" --temperature 0 --max-tokens "$n" --json "$prompt" >"$out/gen.json"

python3 - "$out/run.json" "$out/gen.json" "$moa" "$model" <<'PY'
import json, subprocess, sys
run, gen, moa, model = json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), sys.argv[3], sys.argv[4]
remote = run["layers"][0]["answers"][0]
if remote.get("error"):
    sys.exit(f"the remote proposer failed: {remote['error']}")
tok = lambda t: json.loads(subprocess.check_output([moa, "tokenize", "--no-bos", "--model", model, t]))
# The remote text re-tokenized; the local one as generated.
a, b = tok(remote["text"]), gen["generated_ids"]
same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
print(f"remote (llama-server) answer: {remote['stats']['generated_tokens']} tokens, {remote['stats']['decode_tps']:.1f} tok/s:\n  {remote['text']!r}")
print(f"moa-local generate:          {gen['timings']['generated_tokens']} tokens, {gen['timings']['decode_tps']:.1f} tok/s:\n  {gen['text']!r}")
print(f"aggregate ({run['aggregate']['model']}): {run['aggregate']['text'][:200]!r}…")
print(f"token ids agree for the first {same} of {len(a)} / {len(b)}")
need = min(16, len(a), len(b))
if same < need and a != b:
    sys.exit(f"parity rule broken: the answers part at token {same} (< {need}); a near-tie there needs tests/greedy_parity.rs's teacher-forced check")
print("parity rule holds (first 16 tokens, or identical)")
PY
