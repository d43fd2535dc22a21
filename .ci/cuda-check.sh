#!/usr/bin/env bash
# Type-check the CUDA build (`--features cuda`) without a GPU: installs the pinned CUDA 13.0
# toolchain wheels (see cuda-toolchain.sh) and runs `cargo check`. nvcc compiles candle's
# kernels on the first run (a few minutes); later runs with the same target dir take seconds.
#
#   .ci/cuda-check.sh [extra cargo args]
#
# CARGO_TARGET_DIR defaults to target/cuda-check so the CPU build's artifacts are untouched.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=cuda-toolchain.sh
source .ci/cuda-toolchain.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/cuda-check}"
echo "cuda-check: nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP, CARGO_TARGET_DIR=$CARGO_TARGET_DIR" >&2
start=$(date +%s)
cargo check --release --features cuda --lib --bins "$@"
echo "cuda-check: ok in $(( $(date +%s) - start ))s" >&2
