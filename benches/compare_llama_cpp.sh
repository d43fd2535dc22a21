#!/usr/bin/env bash
# Side-by-side throughput: llama.cpp's llama-bench and `moa-local bench` on the same GGUF files,
# threads and test sizes, in one run; prints both tables and the ratios (moa-local / llama.cpp).
#
#   bash benches/compare_llama_cpp.sh [-t THREADS] [-p 128] [-n 64] [-r 5] [MODEL ...]
#
# llama.cpp comes from the llama-cpp-python source distribution on PyPI (its vendored copy),
# built once for this CPU (GGML_NATIVE) into $MOA_LLAMA_CPP_DIR (default ~/.cache/moa-local/llama.cpp);
# MOA_LLAMA_CPP_AMX=0 uses a build without its AMX kernels (see llama_cpp_build.sh).
# Needs cmake and a C++ compiler (apt-get install cmake g++). Models default to the test models.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
threads=$(nproc); pp=128; tg=64; reps=5
while getopts "t:p:n:r:" o; do case $o in t) threads=$OPTARG;; p) pp=$OPTARG;; n) tg=$OPTARG;; r) reps=$OPTARG;; *) exit 2;; esac; done
shift $((OPTIND - 1))
models=("$@"); [ ${#models[@]} -gt 0 ] || models=(models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf models/SmolLM2-135M-Instruct.Q4_1.gguf)

bench=$(bash benches/llama_cpp_build.sh llama-bench)
cargo build --release -q
out=$(mktemp -d)
for m in "${models[@]}"; do
  if ! "$bench" -m "$m" -t "$threads" -p "$pp" -n "$tg" -r "$reps" -o json >"$out/$(basename "$m").llama.json" 2>"$out/llama.err"; then
    echo "llama-bench failed on $m; its last lines:" >&2; tail -5 "$out/llama.err" >&2
    echo "(if it died in AMX code, rerun with MOA_LLAMA_CPP_AMX=0 for a build without it)" >&2
    exit 1
  fi
  ./target/release/moa-local bench -m "$m" -t "$threads" -p "$pp" -n "$tg" -r "$reps" --json >"$out/$(basename "$m").moa.json"
done
python3 - "$out" "$pp" "$tg" "$threads" <<'PY'
import glob, json, os, sys
out, pp, tg, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
print(f"| model | test | llama.cpp t/s | moa-local t/s | ratio |\n|---|---|---:|---:|---:|")
for lf in sorted(glob.glob(os.path.join(out, "*.llama.json"))):
    name = os.path.basename(lf)[:-len(".llama.json")]
    ll = json.load(open(lf))
    moa = json.load(open(lf.replace(".llama.json", ".moa.json")))[0]["results"]
    for test, n_p, n_g in (("pp", pp, 0), ("tg", 0, tg)):
        l = next((r for r in ll if r["n_prompt"] == n_p and r["n_gen"] == n_g), None)
        m = next((r for r in moa if r["test"] == f"{test}{n_p or n_g}"), None)
        if l and m:
            print(f"| {name} | {test}{n_p or n_g} | {l['avg_ts']:.2f} ± {l['stddev_ts']:.2f} | {m['mean_tps']:.2f} ± {m['sd_tps']:.2f} | {m['mean_tps']/l['avg_ts']:.2f}x |")
print(f"\nthreads {threads}; both engines measured in this run on the same files")
PY
rm -rf "$out"
