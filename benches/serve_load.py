#!/usr/bin/env python3
"""Load test of an OpenAI-compatible server on loopback: C concurrent clients send R chat requests
each (fixed prompts, temperature 0, max_tokens N, streamed) and the run reports aggregate
completion tok/s, mean and p95 latency, mean and p95 time to first token (the first content
chunk), and every answer (for comparing servers' outputs).

    python3 benches/serve_load.py --base http://127.0.0.1:8080 --model qwen-coder -c 8 -r 2 -n 64 --out run.json

Used by benches/serve_load.sh; standard library only."""

import argparse
import json
import statistics
import threading
import time
import urllib.request

PROMPTS = [
    "Write a Python function that reverses a string.",
    "What is the capital of Australia? Answer in one sentence.",
    "Explain what a hash map is in two sentences.",
    "List three prime numbers greater than 50.",
    "Write a haiku about the sea.",
    "How do I read a file line by line in Rust?",
    "What does HTTP status 404 mean?",
    "Give me a SQL query that counts rows in a table named users.",
    "Name three sorting algorithms and their time complexity.",
    "What is the difference between a process and a thread?",
    "Write a bash one-liner that counts the lines of all .py files.",
    "Why is the sky blue? Keep it short.",
    "Convert 100 degrees Fahrenheit to Celsius and show the formula.",
    "What is a closure in JavaScript?",
    "Suggest a name for a coffee shop run by robots.",
    "Explain recursion to a ten-year-old.",
]


def ask(base, model, prompt, n, temperature=0.0, seed=1, ttft=None):
    """One streamed request: (latency, completion tokens, text); `ttft` (a list) gets the time to
    the first content chunk. Tokens come from the usage chunk, else one per content chunk."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": n,
                       "temperature": temperature, "seed": seed, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    req = urllib.request.Request(f"{base}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
    t = time.monotonic()
    text, chunks, usage, first = "", 0, None, None
    with urllib.request.urlopen(req, timeout=600) as r:
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            v = json.loads(line[5:])
            if v.get("usage"):
                usage = v["usage"]["completion_tokens"]
            for ch in v.get("choices") or []:
                piece = (ch.get("delta") or {}).get("content") or ""
                if piece:
                    if first is None:
                        first = time.monotonic() - t
                    chunks += 1
                    text += piece
    if ttft is not None and first is not None:
        ttft.append(first)
    return time.monotonic() - t, usage if usage is not None else chunks, text


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("-c", type=int, default=8, help="concurrent clients")
    ap.add_argument("-r", type=int, default=2, help="requests per client")
    ap.add_argument("-n", type=int, default=64, help="max_tokens")
    ap.add_argument("--out")
    ap.add_argument("--pair", action="store_true",
                    help="two requests one after the other, then the same two at once (seeded, temperature 0.7)")
    a = ap.parse_args()
    if a.pair:
        return pair(a)
    ask(a.base, a.model, "Say hi.", 4)  # warm-up: the model is loaded
    results, lock = [], threading.Lock()

    def client(i):
        for j in range(a.r):
            p = PROMPTS[(i * a.r + j) % len(PROMPTS)]
            first = []
            lat, toks, text = ask(a.base, a.model, p, a.n, ttft=first)
            with lock:
                results.append({"prompt": p, "latency": lat, "tokens": toks, "text": text, "ttft": first[0] if first else None})

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(a.c)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    lats = sorted(r["latency"] for r in results)
    summary = {
        "clients": a.c,
        "requests": len(results),
        "wall_s": wall,
        "tokens": sum(r["tokens"] for r in results),
        "tok_s": sum(r["tokens"] for r in results) / wall,
        "mean_latency_s": statistics.mean(lats),
        "p95_latency_s": lats[min(len(lats) - 1, int(0.95 * len(lats)))],
    }
    ttfts = sorted(r["ttft"] for r in results if r["ttft"] is not None)
    if ttfts:
        summary["mean_ttft_s"] = statistics.mean(ttfts)
        summary["p95_ttft_s"] = ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))]
    print(json.dumps(summary))
    if a.out:
        json.dump({"summary": summary, "results": results}, open(a.out, "w"), indent=1)


def pair(a):
    ask(a.base, a.model, "Say hi.", 4)
    two = [(PROMPTS[15], 11), (PROMPTS[9], 12)]
    t0 = time.monotonic()
    seq = [ask(a.base, a.model, p, a.n, 0.7, s)[2] for p, s in two]
    t_seq = time.monotonic() - t0
    got = [None, None]

    def one(i):
        got[i] = ask(a.base, a.model, two[i][0], a.n, 0.7, two[i][1])[2]

    t0 = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    t_con = time.monotonic() - t0
    print(json.dumps({"sequential_s": t_seq, "concurrent_s": t_con, "same_answers": got == seq}))


if __name__ == "__main__":
    main()
