#!/usr/bin/env python3
"""Run lm-eval's official IFEval checks (strict and loose) on the agreement response set and write
the fixture tests/data/ifeval/agreement.jsonl used by tests/ifeval_agreement.rs.

The official modules (instructions.py, instructions_util.py, instructions_registry.py, utils.py of
lm_eval/tasks/ifeval) are loaded by file path under a minimal package shim, unmodified, so importing
them does not pull lm-eval's heavy dependencies. Needs nltk>=3.9.1 (punkt_tab), langdetect and
immutabledict.

Determinism: langdetect is seeded (DetectorFactory.seed = 0) and the global `random` is reseeded
with 0 before each strict and each loose evaluation of a response: the official code only draws
random numbers when a kwarg is invalid (keywords:letter_frequency with letter "!" or "#" draws
random.choice(string.ascii_letters), which is "Y" right after random.seed(0)).

Usage:
  NLTK_DATA=/path/to/nltk_cache python3 benches/eval/ifeval_reference.py \
      --ifeval-dir /path/to/lm_eval/tasks/ifeval \
      --input models/eval/ifeval/input_data.jsonl \
      --responses /tmp/ifeval_agreement_responses.jsonl \
      --out tests/data/ifeval/agreement.jsonl
"""
import argparse
import importlib.util
import json
import logging
import random
import sys
import types


def load_official(ifeval_dir):
    for name in ("lm_eval", "lm_eval.tasks", "lm_eval.tasks.ifeval"):
        if name not in sys.modules:
            mod = types.ModuleType(name)
            mod.__path__ = []
            sys.modules[name] = mod
    loaded = {}
    for name in ("instructions_util", "instructions", "instructions_registry", "utils"):
        full = "lm_eval.tasks.ifeval." + name
        spec = importlib.util.spec_from_file_location(full, f"{ifeval_dir}/{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[full] = mod
        setattr(sys.modules["lm_eval.tasks.ifeval"], name, mod)
        spec.loader.exec_module(mod)
        loaded[name] = mod
    return loaded


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ifeval-dir", default="/tmp/evaldata/x/lm_eval/tasks/ifeval")
    ap.add_argument("--input", default="models/eval/ifeval/input_data.jsonl")
    ap.add_argument("--responses", default="/tmp/ifeval_agreement_responses.jsonl")
    ap.add_argument("--out", default="tests/data/ifeval/agreement.jsonl")
    a = ap.parse_args()
    logging.disable(logging.CRITICAL)  # langdetect failures are logged per response
    from langdetect import DetectorFactory

    DetectorFactory.seed = 0
    mods = load_official(a.ifeval_dir)
    utils = mods["utils"]
    prompts = {}
    for line in open(a.input, encoding="utf-8"):
        if line.strip():
            p = json.loads(line)
            prompts[p["key"]] = p
    n = 0
    with open(a.out, "w", encoding="utf-8") as out:
        for line in open(a.responses, encoding="utf-8"):
            if not line.strip():
                continue
            r = json.loads(line)
            p = prompts[r["key"]]
            inp = utils.InputExample(
                key=p["key"],
                instruction_id_list=p["instruction_id_list"],
                prompt=p["prompt"],
                kwargs=p["kwargs"],
            )
            random.seed(0)
            strict = utils.test_instruction_following_strict(inp, r["response"])
            random.seed(0)
            loose = utils.test_instruction_following_loose(inp, r["response"])
            row = {
                "key": p["key"],
                "source": r.get("source", ""),
                "prompt": p["prompt"],
                "instruction_id_list": p["instruction_id_list"],
                "kwargs": p["kwargs"],
                "response": r["response"],
                "strict": strict.follow_instruction_list,
                "loose": loose.follow_instruction_list,
            }
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    print(f"ifeval_reference: {n} responses checked -> {a.out}")


if __name__ == "__main__":
    main()
