"""The real `openai` Python client against a running `moa-local serve` (started by
tests/openai_client.sh with the bundled test models, greedy, tiny max_tokens).

Checks: a plain and a streamed chat completion with model="moa" (same greedy answer both ways,
usage and the `moa` extension), the models list, text completions (logprobs, echo with
max_tokens 0 as lm-evaluation-harness scores, token-id prompts, streaming), chat logprobs (plain and streamed), and the client's typed errors for an unknown
model (NotFoundError), a bad parameter (BadRequestError) and a wrong API key (AuthenticationError).
Ends with a 'N passed, N failed' line and a non-zero exit on any failure.
"""

import json
import os
import subprocess
import sys
import traceback

import openai

BASE = os.environ["MOA_BASE_URL"]
KEY = os.environ["MOA_API_KEY"]
client = openai.OpenAI(base_url=BASE, api_key=KEY, max_retries=0, timeout=600)
MESSAGES = [{"role": "user", "content": "Name a primary color."}]
answers = {}


def test_models_list():
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "moa", ids
    assert {"qwen-coder", "smollm2"} <= set(ids), ids
    assert client.models.retrieve("moa").id == "moa"


def test_chat_completion():
    r = client.chat.completions.create(model="moa", messages=MESSAGES, max_tokens=4, seed=1)
    assert r.object == "chat.completion" and r.model == "moa", r
    c = r.choices[0]
    assert c.message.role == "assistant" and c.message.content, r
    assert c.finish_reason in ("stop", "length"), r
    u = r.usage
    assert u.prompt_tokens > 0 and 1 <= u.completion_tokens <= 4, u
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens, u
    moa = r.model_extra["moa"]
    assert [a["model"] for a in moa["layers"][0]["agents"]] == ["qwen-coder", "smollm2"], moa
    assert moa["proposer_completion_tokens"] >= 1, moa
    answers["plain"] = c.message.content


def test_streamed_chat_completion():
    stream = client.chat.completions.create(
        model="moa", messages=MESSAGES, max_tokens=4, seed=1, stream=True, stream_options={"include_usage": True}
    )
    text, roles, finish, usage = "", [], [], None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk", chunk
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            if ch.delta.role:
                roles.append(ch.delta.role)
            text += ch.delta.content or ""
            if ch.finish_reason:
                finish.append(ch.finish_reason)
    assert roles == ["assistant"], roles
    assert text, "no content streamed"
    assert len(finish) == 1 and finish[0] in ("stop", "length"), finish
    assert usage is not None and usage.completion_tokens >= 1, usage
    if "plain" in answers:
        assert text == answers["plain"], (text, answers["plain"])


def test_single_model():
    r = client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=2, temperature=0)
    assert r.choices[0].message.content is not None and r.usage.completion_tokens <= 2, r


def test_n_choices():
    r = client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=3, temperature=0.9, seed=7, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2], r
    assert all(c.message.content is not None and c.finish_reason for c in r.choices), r
    assert r.usage.completion_tokens <= 9, r


def test_text_completion_echo_and_logprobs():
    prompt = "The capital of France is"
    r = client.completions.create(model="smollm2", prompt=prompt, max_tokens=4, temperature=0, logprobs=2)
    assert r.object == "text_completion" and r.id.startswith("cmpl-"), r
    c = r.choices[0]
    assert c.text and c.finish_reason in ("stop", "length"), r
    lp = c.logprobs
    assert len(lp.tokens) == r.usage.completion_tokens == len(lp.token_logprobs) == len(lp.top_logprobs), lp
    assert "".join(lp.tokens) == c.text, (lp.tokens, c.text)
    for tok, v, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert v <= 0 and len(top) == 2 and max(top.values()) == v, (tok, v, top)  # greedy: the top token
    # lm-evaluation-harness's loglikelihood request: echo, logprobs, max_tokens 0.
    s = client.completions.create(model="smollm2", prompt=prompt + c.text, max_tokens=0, echo=True, logprobs=1, temperature=0)
    e = s.choices[0].logprobs
    assert s.choices[0].text == prompt + c.text, s
    assert e.token_logprobs[0] is None and all(v <= 0 for v in e.token_logprobs[1:]), e
    assert s.usage.prompt_tokens == len(e.tokens) and s.usage.completion_tokens == 0, s
    ids = json.loads(subprocess.check_output(["target/release/moa-local", "tokenize", "--model", "smollm2", prompt]))
    # The prompt's own tokens lead the echo (the answer's tokens may merge when re-tokenized).
    assert "".join(e.tokens[: len(ids)]) == prompt, e.tokens
    # Token ids in, streamed out: the same text.
    text = "".join(ch.choices[0].text for ch in client.completions.create(model="smollm2", prompt=ids, max_tokens=4, temperature=0, stream=True))
    assert text == c.text, (text, c.text)


def test_chat_logprobs():
    r = client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=3, temperature=0, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens, r
    for t in content:
        assert len(t.top_logprobs) == 2 and t.top_logprobs[0].token == t.token and t.logprob <= 0, t
        assert bytes(t.bytes).decode("utf-8", "replace") == t.token, t
    # Streamed: the same tokens and log-probabilities, gathered from the chunks as clients do.
    streamed = []
    for ch in client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=3, temperature=0, logprobs=True, top_logprobs=2, stream=True):
        if ch.choices and ch.choices[0].logprobs and ch.choices[0].logprobs.content:
            streamed.extend(ch.choices[0].logprobs.content)
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content], streamed


def test_unknown_model_is_not_found():
    try:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=2)
    except openai.NotFoundError as e:
        assert e.status_code == 404 and "gpt-4o" in str(e), e
    else:
        raise AssertionError("expected openai.NotFoundError")


def test_bad_parameter_is_bad_request():
    try:
        client.chat.completions.create(model="moa", messages=MESSAGES, temperature=-1)
    except openai.BadRequestError as e:
        assert e.status_code == 400 and "temperature" in str(e), e
    else:
        raise AssertionError("expected openai.BadRequestError")


def test_wrong_key_is_rejected():
    other = openai.OpenAI(base_url=BASE, api_key="wrong-" + KEY, max_retries=0)
    try:
        other.models.list()
    except openai.AuthenticationError as e:
        assert e.status_code == 401, e
    else:
        raise AssertionError("expected openai.AuthenticationError")


if __name__ == "__main__":
    tests = [(n, f) for n, f in list(globals().items()) if n.startswith("test_") and callable(f)]
    failed = 0
    for name, f in tests:
        try:
            f()
            print(f"ok   {name}")
        except Exception:
            failed += 1
            print(f"FAIL {name}")
            traceback.print_exc()
    print(f"openai_client: {len(tests) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
