#!/usr/bin/env bash
# Build one llama.cpp tool (CPU, native) from the llama-cpp-python 0.3.36 sdist, once, and print
# its path: `bash benches/llama_cpp_build.sh llama-bench|llama-server`. The source and build live
# in $MOA_LLAMA_CPP_DIR (default ~/.cache/moa-local/llama.cpp). Needs cmake and a C++ compiler.
#
# MOA_LLAMA_CPP_AMX=0 builds without llama.cpp's AMX kernels (into build-noamx): the CPU's other
# features are passed one by one instead of -march=native. Use it where the native build dies in
# `ldtilecfg` / `tinygemm_kernel_amx` (a VM that lists the AMX flags but does not run AMX).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tool=${1:?usage: llama_cpp_build.sh TOOL}
dir="${MOA_LLAMA_CPP_DIR:-$HOME/.cache/moa-local/llama.cpp}"
build="$dir/build"
arch=(-DGGML_NATIVE=ON)
if [ "${MOA_LLAMA_CPP_AMX:-1}" = 0 ]; then
  build="$dir/build-noamx"
  flags=" $(grep -m1 '^flags' /proc/cpuinfo) "
  arch=(-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
  for f in avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx_vnni:AVX_VNNI avx512f:AVX512 \
           avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16; do
    on=OFF; [[ $flags == *" ${f%%:*} "* ]] && on=ON
    arch+=("-DGGML_${f#*:}=$on")
  done
fi
bin="$build/bin/$tool"
if [ ! -x "$bin" ]; then
  command -v cmake >/dev/null || { echo "llama_cpp_build.sh: cmake is required (apt-get install cmake)" >&2; exit 1; }
  bash benches/llama_cpp_src.sh "$dir"
  echo "building $tool (CPU, ${arch[*]})…" >&2
  server=OFF; [ "$tool" = llama-server ] && server=ON
  cmake -S "$dir" -B "$build" -DCMAKE_BUILD_TYPE=Release "${arch[@]}" -DLLAMA_CURL=OFF -DGGML_CUDA=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=$server >/dev/null
  cmake --build "$build" --target "$tool" -j "$(nproc)" >/dev/null
fi
echo "$bin"
