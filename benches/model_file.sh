#!/usr/bin/env bash
# The GGUF file a model name stands for, for the bench scripts that hand a file to llama.cpp:
# a bundled catalog alias (models/catalog.toml) becomes models/FILE, anything else is printed as
# given. Fails, naming the script that asked, when the file is missing.
#   bash benches/model_file.sh NAME CALLER
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
name=${1:?usage: model_file.sh NAME CALLER}; caller=${2:-model_file.sh}
gguf=$(python3 - "$name" <<'PY'
import sys, tomllib
entry = tomllib.load(open("models/catalog.toml", "rb")).get(sys.argv[1], {})
print("models/" + entry["file"] if "file" in entry and "repo" not in entry else sys.argv[1])
PY
)
[ -f "$gguf" ] || { echo "$caller: no GGUF file for $name (run models/fetch.sh)" >&2; exit 1; }
echo "$gguf"
