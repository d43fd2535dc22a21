#!/usr/bin/env bash
# Regenerate tests/data/perplexity/: llama-perplexity's PPL on tests/data/perplexity.txt (-c 128)
# for the bundled models, and for the synthetic test files of the architectures without a bundled
# real file (mixtures of experts, Llama 3 RoPE factors, Gemma 2, Phi-3, and Phi-2 and GLM-4, which run
# through candle-transformers; seed 1, written by
# `moa-local bench --synthetic ARCH:tiny:q4_k_m`) also the --kl-divergence-base logits of the
# first two chunks, which the test reads back with `moa-local perplexity --kl-divergence-base`, and
# llama.cpp's own KL divergence from them with flash attention off (the base is written with its
# default, on): how far llama.cpp lies from itself when only its attention kernel changes, the
# yardstick the test holds moa-local to.
#
#   bash benches/perplexity_reference.sh [-t THREADS]
#
# llama.cpp is the copy in the llama-cpp-python 0.3.36 sdist (benches/llama_cpp_build.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
threads=2
while getopts "t:" o; do case $o in t) threads=$OPTARG;; *) exit 2;; esac; done
ppl=$(bash benches/llama_cpp_build.sh llama-perplexity)
cargo build --release -q
out=tests/data/perplexity; mkdir -p "$out"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
text=tests/data/perplexity.txt
run() { # FILE [ARGS...]: print llama-perplexity's final PPL
  "$ppl" -m "$1" -f "$text" -c 128 -b 128 -t "$threads" "${@:2}" 2>&1 | sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p'
}
{
  echo '{"source": "llama-perplexity from the llama-cpp-python 0.3.36 sdist, CPU, -c 128 -b 128, tests/data/perplexity.txt (benches/perplexity_reference.sh)", "ppl": {'
  sep=""
  for f in models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf models/SmolLM2-135M-Instruct.Q4_1.gguf models/gemma-3-270m-q4_k_m.gguf; do
    printf '%s"%s": %s' "$sep" "$(basename "$f")" "$(run "$f")"; sep=$',\n'
  done
  spread=""
  for a in qwen3moe mixtral qwen2moe llama gemma2 phi3 phi2 glm4; do
    ./target/release/moa-local bench --synthetic "$a:tiny:q4_k_m" --synthetic-dir "$tmp" -p 0 -n 0 -r 1 >/dev/null 2>&1
    f="$tmp/$a-tiny-q4_k_m.gguf"
    printf '%s"synthetic-%s-tiny-q4_k_m": %s' "$sep" "$a" "$(run "$f" --chunks 2 --kl-divergence-base "$out/$a-tiny.kld")"
    self=$("$ppl" -m "$f" -f "$text" -c 128 -b 128 -t "$threads" --chunks 2 --kl-divergence-base "$out/$a-tiny.kld" \
      --kl-divergence -fa off 2>&1 | sed -n -e 's/^Mean    KLD: *\([-0-9.]*\).*/"mean_kld": \1, /p' \
      -e 's/^95.0%   KLD: *\([-0-9.]*\).*/"p95_kld": \1, /p' -e 's/^Same top p: *\([0-9.]*\).*/"same_top_pct": \1/p' | tr -d '\n')
    spread+="${spread:+, }\"synthetic-$a-tiny-q4_k_m\": {$self}"
  done
  echo "}, \"kld_flash_attention_off\": {$spread}}"
} >"$out/ref.json"
cat "$out/ref.json"
