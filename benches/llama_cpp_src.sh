#!/usr/bin/env bash
# Unpack llama.cpp's source (the copy vendored in the llama-cpp-python 0.3.36 sdist) into DIR,
# once: `bash benches/llama_cpp_src.sh DIR`. The sdist comes through `pip download`, so the
# user's pip configuration (index, mirrors, proxies, find-links) applies; it is cached in
# $MOA_SDIST_CACHE (default ~/.cache/moa-local/sdist). Only llama-cpp-python itself is taken as
# source (--no-binary for it alone), so pip does not build its build tools from source too.
set -euo pipefail
dir=${1:?usage: llama_cpp_src.sh DIR}
ver=0.3.36
[ -f "$dir/CMakeLists.txt" ] && exit 0
cache="${MOA_SDIST_CACHE:-$HOME/.cache/moa-local/sdist}"
sdist="$cache/llama_cpp_python-$ver.tar.gz"
if [ ! -f "$sdist" ]; then
  mkdir -p "$cache"
  echo "fetching the llama-cpp-python $ver sdist with pip…" >&2
  python3 -m pip download --no-deps --no-binary llama-cpp-python --disable-pip-version-check -q \
    -d "$cache" "llama-cpp-python==$ver" ||
    { echo "llama_cpp_src.sh: pip could not download llama-cpp-python==$ver (is the package index reachable?)" >&2; exit 1; }
fi
mkdir -p "$dir"
tar -xzf "$sdist" -C "$dir" --strip-components=3 "llama_cpp_python-$ver/vendor/llama.cpp"
