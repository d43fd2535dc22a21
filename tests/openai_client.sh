#!/usr/bin/env bash
# Run tests/openai_client.py (the real `openai` Python client, `python3 -m pip install openai`)
# against `target/release/moa-local serve` with the bundled test models on a free loopback port.
# Builds nothing: `cargo build --release` (or `cargo test --release`) must have built the binary.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bin=target/release/moa-local
[ -x "$bin" ] || { echo "openai_client.sh: $bin is missing; run cargo build --release first" >&2; exit 1; }
python3 -c 'import openai' 2>/dev/null || { echo "openai_client.sh: the openai package is missing (python3 -m pip install openai)" >&2; exit 1; }

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
key="test-key-$$"
log=$(mktemp)
HF_HUB_OFFLINE=1 MOA_API_KEY="$key" "$bin" serve --models qwen-coder,smollm2 --temperature 0 --max-tokens 8 \
    --host 127.0.0.1 --port "$port" >"$log" 2>&1 &
pid=$!
cleanup() {
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -f "$log"
}
trap cleanup EXIT

# Wait for /health (model loading takes a few seconds; allow 3 minutes on a busy machine).
python3 - "$port" "$pid" <<'PY' || { echo "openai_client.sh: the server did not come up; its log:" >&2; cat "$log" >&2; exit 1; }
import os, sys, time, urllib.request
port, pid = sys.argv[1], int(sys.argv[2])
deadline = time.time() + 180
while time.time() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(1)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.2)
sys.exit(1)
PY

MOA_BASE_URL="http://127.0.0.1:$port/v1" MOA_API_KEY="$key" python3 tests/openai_client.py
