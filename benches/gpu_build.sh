#!/usr/bin/env bash
# Build, on a machine without a GPU, what benches/gpu_run.sh runs on a lent GPU machine, into
# target/gpu-carry (xz-compressed; carry that directory):
#   moa-local.xz     release binary with --features cuda (CUDA_COMPUTE_CAP, default 90)
#   device_path.xz   the tests/device_path.rs test binary with --features cuda
#   lib_tests.xz     the library's unit tests (the CPU kernels' checks on that host's CPU)
#   llama-bench.xz   llama.cpp's llama-bench with GGML_CUDA=ON for the same architecture
#                    (from the llama-cpp-python sdist, flash attention kernels not compiled)
# Both Rust binaries use -C target-cpu=x86-64-v3: the GPU host's CPU is not this one.
#
# Linking needs libraries no CUDA wheel set for `cargo check` has: cuBLAS, cuRAND, NVRTC (real
# wheels, ~570 MB, cached) and a link-only libcuda.so made here from cuda.h's declarations (every
# function returns an error; it only ever sits on this machine's link path, never at run time).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source .ci/cuda-toolchain.sh
cache="${MOA_CUDA_DIR:-$HOME/.cache/moa-local/cuda13}"
tk="$cache-link"          # toolkit + link libraries, one tree (cmake wants that)
if [ ! -e "$tk/lib/stubs/libcuda.so" ]; then
  mkdir -p "$tk"
  cp -a "$CUDA_ROOT/." "$tk/"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --no-deps --target "$tk.wheels" \
    nvidia-cublas==13.1.0.3 nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88
  cp -a "$tk.wheels/nvidia/cu13/." "$tk/"
  (cd "$tk/lib" && for f in *.so.*; do b=${f%%.so.*}; [ -e "$b.so" ] || ln -s "$f" "$b.so"; done && ln -sfn lib ../lib64)
  mkdir -p "$tk/lib/stubs"
  gcc -E -I "$tk/include" "$tk/include/cuda.h" | tr '\n' ' ' | grep -oE '\bcu[A-Z][A-Za-z0-9_]*\s*\(' \
    | sed 's/\s*($//' | sort -u | sed 's/.*/int &(void){return 999;}/' > "$tk/lib/stubs/libcuda.c"
  gcc -shared -fPIC -o "$tk/lib/stubs/libcuda.so" -Wl,-soname,libcuda.so.1 "$tk/lib/stubs/libcuda.c"
fi
carry=target/gpu-carry; mkdir -p "$carry"
export LIBRARY_PATH="$tk/lib/stubs:$tk/lib" RUSTFLAGS="-C target-cpu=x86-64-v3" CARGO_TARGET_DIR=target/cuda-rel
cargo build --release --features cuda --bin moa-local
cargo test --release --features cuda --lib --test device_path --no-run 2>&1 | tee "$carry/test-build.log"
test_bin=$(sed -n 's/.*Executable tests\/device_path.rs (\(.*\))/\1/p' "$carry/test-build.log" | tail -1)
lib_bin=$(sed -n 's/.*Executable unittests src\/lib.rs (\(.*\))/\1/p' "$carry/test-build.log" | tail -1)
xz -T2 -6 -c "$lib_bin" > "$carry/lib_tests.xz"
xz -T2 -6 -c target/cuda-rel/release/moa-local > "$carry/moa-local.xz"
xz -T2 -6 -c "$test_bin" > "$carry/device_path.xz"

ll="${MOA_LLAMA_CPP_CUDA_DIR:-$HOME/.cache/moa-local/llama.cpp-cuda}"
if [ ! -x "$ll/build/bin/llama-bench" ]; then
  bash benches/llama_cpp_src.sh "$ll"
  PATH="$tk/bin:$PATH" cmake -S "$ll" -B "$ll/build" -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="$CUDA_COMPUTE_CAP" -DGGML_CUDA_FA=OFF -DGGML_CUDA_NCCL=OFF -DGGML_NATIVE=OFF \
    -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DCUDAToolkit_ROOT="$tk" -DCMAKE_CUDA_COMPILER="$tk/bin/nvcc" \
    -DCMAKE_LIBRARY_PATH="$tk/lib/stubs"
  PATH="$tk/bin:$PATH" cmake --build "$ll/build" --target llama-bench -j "$(nproc)"
fi
xz -T2 -6 -c "$ll/build/bin/llama-bench" > "$carry/llama-bench.xz"
ls -la "$carry"
