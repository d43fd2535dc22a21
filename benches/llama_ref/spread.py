"""Combine llama_ref's two runs of one model into the parity reference: the run without flash
attention, plus `spread`, how far the run with it lies from that one while both follow the same
tokens (each prompt up to the first step where their greedy tokens differ): the absolute logit
differences of the shared top-5 tokens (median, p95, max) and, where the two part, the gap in the
reference's logits between the two choices.

    python3 spread.py REF.json FA.json MODEL.gguf > parity.json
"""
import hashlib, json, os, sys

ref, fa = (json.load(open(p)) for p in sys.argv[1:3])
devs, gaps, agree = [], [], 0
for a, b in zip(ref["cases"], fa["cases"]):
    for s, (ta, tb) in enumerate(zip(a["top"], b["top"])):
        da, db = dict(map(tuple, ta)), dict(map(tuple, tb))
        devs += [abs(da[i] - db[i]) for i in da if i in db]
        if a["greedy_ids"][s] != b["greedy_ids"][s]:
            if b["greedy_ids"][s] in da:
                gaps.append(ta[0][1] - da[b["greedy_ids"][s]])
            break
        agree += 1
devs.sort()
n = len(devs)
sha = hashlib.sha256(open(sys.argv[3], "rb").read()).hexdigest()
ref["model"] = os.path.basename(sys.argv[3])
ref["sha256"] = sha
ref["source"] = "llama.cpp from the llama-cpp-python 0.3.36 sdist, CPU, flash attention off (benches/llama_reference.sh)"
ref["spread"] = {
    "what": "llama.cpp with flash attention against without, on the steps where both follow the same tokens",
    "steps": agree,
    "logit_abs_median": devs[n // 2],
    "logit_abs_p95": devs[n * 95 // 100],
    "logit_abs_max": devs[-1],
    "partings": len(gaps),
    "parting_gap_max": max(gaps, default=0.0),
}
cases = ref.pop("cases")
print(json.dumps(ref | {"cases": cases}, separators=(",", ":")))
