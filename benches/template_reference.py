#!/usr/bin/env python3
"""Reference renders of real chat templates with Python jinja2, for tests/template_corpus.rs.

    python3 benches/template_reference.py [TEMPLATES_DIR] > tests/data/templates.json

TEMPLATES_DIR defaults to llama.cpp's `models/templates/` inside the llama-cpp-python sdist that
benches/llama_cpp_build.sh unpacks (~/.cache/moa-local/llama.cpp). Each template is rendered the
way Hugging Face transformers renders chat templates (ImmutableSandboxedEnvironment, trim_blocks,
lstrip_blocks, loopcontrols, raise_exception, a json.dumps tojson with ensure_ascii=False,
strftime_now) with the variables moa-local passes: messages, add_generation_prompt, bos_token,
eos_token, tools=None. strftime_now reads a fixed clock (CLOCK, UTC) so the renders are
reproducible; the Rust test sets the same clock. A render jinja2 refuses (raise_exception, a
missing feature) is recorded as an error, and moa-local must refuse it too.
"""
import datetime
import hashlib
import json
import os
import sys

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

CLOCK = 1780000000  # 2026-05-28 20:26:40 UTC
BOS, EOS = "<s>", "</s>"

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "system", "content": "Answer briefly.\nUse plain text."},
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "7"},
        {"role": "user", "content": "  Another one, with \"quotes\" and unicode: é 漢字 🙂  "},
    ],
    [
        {"role": "user", "content": "First question"},
        {"role": "assistant", "content": "First answer"},
        {"role": "user", "content": "Second question"},
        {"role": "assistant", "content": "Second answer"},
        {"role": "user", "content": ""},
    ],
]


class AssistantTracker(Extension):
    """transformers' {% generation %} … {% endgeneration %} block: renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_generation_support"), [], [], body).set_lineno(lineno)

    def _generation_support(self, caller):
        return caller()


def env():
    def raise_exception(msg):
        raise jinja2.exceptions.TemplateError(msg)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.datetime.fromtimestamp(CLOCK, tz=datetime.timezone.utc).strftime(fmt)

    e = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[AssistantTracker, "jinja2.ext.loopcontrols"])
    e.filters["tojson"] = tojson
    e.globals["raise_exception"] = raise_exception
    e.globals["strftime_now"] = strftime_now
    return e


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser("~/.cache/moa-local/llama.cpp/models/templates")
    out = {"generator": "benches/template_reference.py", "jinja2": jinja2.__version__, "clock": CLOCK,
           "bos_token": BOS, "eos_token": EOS, "conversations": CONVERSATIONS, "templates": {}}
    e = env()
    for name in sorted(os.listdir(d)):
        if not name.endswith(".jinja"):
            continue
        src = open(os.path.join(d, name), encoding="utf-8").read()
        entry = {"sha256": hashlib.sha256(src.encode()).hexdigest(), "source": src, "renders": []}
        try:
            t = e.from_string(src)
        except Exception as ex:  # jinja2 cannot compile it: not a reference
            entry["compile_error"] = f"{type(ex).__name__}: {ex}"
            out["templates"][name] = entry
            continue
        for conv in CONVERSATIONS:
            for agp in (True, False):
                r = {"add_generation_prompt": agp}
                try:
                    r["rendered"] = t.render(messages=conv, add_generation_prompt=agp, bos_token=BOS,
                                             eos_token=EOS, tools=None)
                except Exception as ex:
                    r["error"] = f"{type(ex).__name__}: {ex}"
                entry["renders"].append(r)
        out["templates"][name] = entry
    json.dump(out, sys.stdout, ensure_ascii=False, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
