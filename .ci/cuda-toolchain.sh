#!/usr/bin/env bash
# A CUDA 13.0 toolchain (nvcc + headers + cudart) from PyPI wheels, enough for
# `cargo check --features cuda` (candle's kernels are compiled by nvcc; nothing is linked and
# no GPU or driver is needed). About 104 MB, installed once into a cache directory.
#
#   .ci/cuda-toolchain.sh            # install if missing, print the `export` lines
#   eval "$(.ci/cuda-toolchain.sh)"  # install if missing and set the environment
#   source .ci/cuda-toolchain.sh     # same, when sourced
#
# Environment: MOA_CUDA_DIR (cache dir, default ~/.cache/moa-local/cuda13),
# CUDA_COMPUTE_CAP (default 90), CUDAFORGE_THREADS (default 2), PYTHON (default python3).
#
# The versions are pinned to 13.0.x: cudarc 0.19 (candle 0.11.1) accepts CUDA 13.0-13.4 only,
# and the wheels of one release must match each other.

_moa_cuda_main() {
    local dir="${MOA_CUDA_DIR:-$HOME/.cache/moa-local/cuda13}"
    local root="$dir/nvidia/cu13"
    local py="${PYTHON:-python3}"
    local wheels=(
        "nvidia-cuda-nvcc==13.0.88"
        "nvidia-nvvm==13.0.88"
        "nvidia-cuda-crt==13.0.88"
        "nvidia-cuda-runtime==13.0.96"
        "nvidia-cuda-cccl==13.0.85"
    )
    # The stamp records the exact wheel set; a different set (or a partial install) reinstalls.
    local stamp="$dir/.moa-cuda-wheels"
    local want
    want="$(printf '%s\n' "${wheels[@]}")"
    if [ -x "$root/bin/nvcc" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        echo "cuda-toolchain: using $root" >&2
    else
        echo "cuda-toolchain: installing ${wheels[*]} into $dir" >&2
        mkdir -p "$dir" && rm -f "$stamp" || return 1
        # --upgrade replaces what a partial or older install left in the target directory.
        PIP_ROOT_USER_ACTION=ignore "$py" -m pip install --quiet --disable-pip-version-check --no-deps --upgrade \
            --target "$dir" "${wheels[@]}" >&2 \
            || { echo "cuda-toolchain: pip install failed" >&2; return 1; }
        if [ ! -x "$root/bin/nvcc" ]; then
            echo "cuda-toolchain: $root/bin/nvcc missing after install" >&2
            return 1
        fi
        printf '%s\n' "$want" > "$stamp"
    fi
    _MOA_CUDA_EXPORTS="export CUDA_ROOT='$root'
export CUDA_PATH='$root'
export CUDA_HOME='$root'
export PATH='$root/bin':\"\$PATH\"
export CUDA_COMPUTE_CAP='${CUDA_COMPUTE_CAP:-90}'
export CUDAFORGE_THREADS='${CUDAFORGE_THREADS:-2}'"
}

if (return 0 2>/dev/null); then
    # Sourced: set the variables in the caller's shell.
    if _moa_cuda_main; then
        eval "$_MOA_CUDA_EXPORTS"
        unset _MOA_CUDA_EXPORTS
        unset -f _moa_cuda_main
    else
        unset -f _moa_cuda_main
        return 1
    fi
else
    set -euo pipefail
    _moa_cuda_main
    printf '%s\n' "$_MOA_CUDA_EXPORTS"
fi
