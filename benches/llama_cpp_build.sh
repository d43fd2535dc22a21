#!/usr/bin/env bash
# Build one llama.cpp tool (CPU, native) from the llama-cpp-python 0.3.36 sdist, once, and print
# its path: `bash benches/llama_cpp_build.sh llama-bench|llama-server`. The source and build live
# in $MOA_LLAMA_CPP_DIR (default ~/.cache/moa-local/llama.cpp). Needs cmake and a C++ compiler.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tool=${1:?usage: llama_cpp_build.sh TOOL}
dir="${MOA_LLAMA_CPP_DIR:-$HOME/.cache/moa-local/llama.cpp}"
bin="$dir/build/bin/$tool"
if [ ! -x "$bin" ]; then
  command -v cmake >/dev/null || { echo "llama_cpp_build.sh: cmake is required (apt-get install cmake)" >&2; exit 1; }
  bash benches/llama_cpp_src.sh "$dir"
  echo "building $tool (CPU, native)…" >&2
  server=OFF; [ "$tool" = llama-server ] && server=ON
  cmake -S "$dir" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DGGML_CUDA=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=$server >/dev/null
  cmake --build "$dir/build" --target "$tool" -j "$(nproc)" >/dev/null
fi
echo "$bin"
