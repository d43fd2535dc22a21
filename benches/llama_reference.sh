#!/usr/bin/env bash
# Regenerate tests/data/parity/<model>.json: llama.cpp's token ids, 32 greedy steps and top-5
# logits per step for the prompts in tests/data/parity_prompts.json, on the bundled test models.
#
#   bash benches/llama_reference.sh [-t THREADS] [MODEL_KEY ...]
#
# llama.cpp is the copy in the llama-cpp-python 0.3.36 sdist (benches/llama_cpp_src.sh), built for
# this CPU into $MOA_LLAMA_CPP_DIR (default ~/.cache/moa-local/llama.cpp); benches/llama_ref/
# llama_ref.cpp is the small program that drives it. Each model runs twice: without flash
# attention (the reference the test compares with) and with it (llama.cpp's CPU flash-attention
# kernel rounds Q to f16 and accumulates in f16). How far llama.cpp's two runs lie apart is stored
# as `spread`: the noise floor any second engine is measured against. A key
# `synthetic-ARCH-SIZE-QUANT` is the synthetic file `moa-local bench --synthetic ARCH:SIZE:QUANT`
# writes (seed 1), e.g. synthetic-qwen3moe-tiny-q4_k_m: the mixtures of experts have no real file
# small enough to bundle.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
threads=2
while getopts "t:" o; do case $o in t) threads=$OPTARG;; *) exit 2;; esac; done
shift $((OPTIND - 1))
keys=("$@"); [ ${#keys[@]} -gt 0 ] || keys=(qwen2.5-coder-0.5b-instruct-q4_k_m smollm2-135m-instruct-q4_1 gemma-3-270m-q4_k_m)
declare -A file=(
  [qwen2.5-coder-0.5b-instruct-q4_k_m]=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
  [smollm2-135m-instruct-q4_1]=SmolLM2-135M-Instruct.Q4_1.gguf
  [gemma-3-270m-q4_k_m]=gemma-3-270m-q4_k_m.gguf
)

dir="${MOA_LLAMA_CPP_DIR:-$HOME/.cache/moa-local/llama.cpp}"
if [ ! -e "$dir/build/bin/libllama.so" ]; then
  command -v cmake >/dev/null || { echo "llama_reference.sh: cmake is required (apt-get install cmake)" >&2; exit 1; }
  bash benches/llama_cpp_src.sh "$dir"
  cmake -S "$dir" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DGGML_CUDA=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
  cmake --build "$dir/build" --target llama -j "$(nproc)" >/dev/null
fi
tool="$dir/build/llama_ref"
g++ -O2 -std=c++17 -I"$dir/include" -I"$dir/ggml/include" -I"$dir/vendor" benches/llama_ref/llama_ref.cpp \
  -L"$dir/build/bin" -lllama -lggml -lggml-base -Wl,-rpath,"$dir/build/bin" -o "$tool"

out=$(mktemp -d)
mkdir -p tests/data/parity
synth="$out/synthetic"
for k in "${keys[@]}"; do
  if [[ $k == synthetic-* ]]; then
    spec=${k#synthetic-}; spec=${spec//-/:}
    cargo run --release -q -- bench --synthetic "$spec" --synthetic-dir "$synth" -p 0 -n 0 -r 1 >/dev/null
    m="$synth/${k#synthetic-}.gguf"
  else
    m="models/${file[$k]:?unknown model key $k}"
  fi
  echo "$k: llama.cpp without flash attention…" >&2
  "$tool" "$m" tests/data/parity_prompts.json 32 5 "$threads" >"$out/$k.json"
  echo "$k: with flash attention…" >&2
  LLAMA_REF_FA=1 "$tool" "$m" tests/data/parity_prompts.json 32 5 "$threads" >"$out/$k.fa.json"
  python3 benches/llama_ref/spread.py "$out/$k.json" "$out/$k.fa.json" "$m" >"tests/data/parity/$k.json"
done
rm -rf "$out"
