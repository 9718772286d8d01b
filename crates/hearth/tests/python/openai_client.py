"""Drives a hearth API with the official OpenAI Python client.

The API is named by the environment only, so the same script checks one node or a cluster:
  HEARTH_BASE_URL  e.g. http://127.0.0.1:52415/v1
  HEARTH_API_KEY   a token from `hearth token create` (any string where none is required)
  HEARTH_MODEL     optional; default: the first model /v1/models lists

Exits non-zero, with the failed check, when the API does not behave as OpenAI's would.
"""

import os
import sys

import openai
from openai import OpenAI

BASE_URL = os.environ["HEARTH_BASE_URL"]
API_KEY = os.environ["HEARTH_API_KEY"]
MAX_TOKENS = 24
MESSAGES = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "Name three colours of the rainbow."},
]

checks = 0


def check(ok, what):
    global checks
    if not ok:
        raise AssertionError(what)
    checks += 1


def expect_error(cls, status, code, call):
    try:
        call()
    except cls as e:
        check(e.status_code == status, f"{cls.__name__}: status {e.status_code}, want {status}")
        body = e.body if isinstance(e.body, dict) else {}
        # The client hands over the `error` object of OpenAI's shape.
        check(isinstance(body.get("message"), str) and body["message"], f"error message: {e.body!r}")
        check(isinstance(body.get("type"), str), f"error type: {e.body!r}")
        if code is not None:
            check(e.code == code, f"error code {e.code!r}, want {code!r}")
        return e
    raise AssertionError(f"expected {cls.__name__} ({status})")


client = OpenAI(base_url=BASE_URL, api_key=API_KEY, max_retries=0, timeout=300)

models = client.models.list()
ids = [m.id for m in models.data]
check(len(ids) >= 1, f"/v1/models lists a model: {ids}")
model = os.environ.get("HEARTH_MODEL") or ids[0]
check(client.models.retrieve(model).id == model, "/v1/models/{id} answers for a listed model")

# Non-streaming, greedy.
whole = client.chat.completions.create(
    model=model, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0
)
choice = whole.choices[0]
text = choice.message.content
check(isinstance(text, str) and text, "the answer has text")
check(choice.message.role == "assistant", "the answer is the assistant's")
check(choice.finish_reason in ("stop", "length"), f"finish_reason {choice.finish_reason!r}")
usage = whole.usage
check(usage.prompt_tokens > 0, "prompt_tokens counted")
check(1 <= usage.completion_tokens <= MAX_TOKENS, f"completion_tokens {usage.completion_tokens}")
check(usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, "total_tokens adds up")
if choice.finish_reason == "length":
    check(usage.completion_tokens == MAX_TOKENS, "a cut answer used every token it was given")

# The prompt is counted by the server's tokenizer: more conversation, more prompt tokens; the
# same conversation gives the same count (below, streamed).
longer = client.chat.completions.create(
    model=model,
    messages=MESSAGES + [{"role": "assistant", "content": text}, {"role": "user", "content": "And two more?"}],
    max_tokens=1,
    temperature=0,
)
check(longer.usage.prompt_tokens > usage.prompt_tokens, "a longer conversation counts more prompt tokens")
check(longer.usage.completion_tokens == 1 and longer.choices[0].finish_reason == "length",
      "max_tokens=1 gives one token, finish_reason length")

# Streaming with usage: the same text, the same counts.
stream = client.chat.completions.create(
    model=model,
    messages=MESSAGES,
    max_tokens=MAX_TOKENS,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
)
pieces, finish, stream_usage, chunk_ids, after_usage = [], None, None, set(), 0
for chunk in stream:
    chunk_ids.add(chunk.id)
    if stream_usage is not None:
        after_usage += 1
    if chunk.usage is not None:
        stream_usage = chunk.usage
        check(chunk.choices == [], "the usage chunk has no choices")
        continue
    for c in chunk.choices:
        if c.delta.content:
            pieces.append(c.delta.content)
        if c.finish_reason is not None:
            finish = c.finish_reason
check(len(chunk_ids) == 1, f"one id for the whole stream: {chunk_ids}")
check("".join(pieces) == text, f"streamed text {''.join(pieces)!r} == whole text {text!r}")
check(finish == choice.finish_reason, f"streamed finish_reason {finish!r}")
check(stream_usage is not None and after_usage == 0, "usage arrives last when asked for")
check(stream_usage.prompt_tokens == usage.prompt_tokens, "streamed prompt_tokens == whole")
check(stream_usage.completion_tokens == usage.completion_tokens, "streamed completion_tokens == whole")
check(stream_usage.total_tokens == usage.total_tokens, "streamed total_tokens == whole")
# A chunk carries at least one token's text (text is held back only to complete a character or
# a stop string), so there are never more content chunks than tokens.
check(1 <= len(pieces) <= stream_usage.completion_tokens,
      f"{len(pieces)} content chunks for {stream_usage.completion_tokens} tokens")

# Without include_usage no usage chunk comes.
plain = list(client.chat.completions.create(
    model=model, messages=MESSAGES, max_tokens=4, temperature=0, stream=True))
check(all(c.usage is None for c in plain), "no usage unless asked for")
check(plain[-1].choices[0].finish_reason is not None, "the last chunk has a finish_reason")

# The legacy completions endpoint.
comp = client.completions.create(model=model, prompt="The capital of France is", max_tokens=5, temperature=0)
check(comp.choices[0].finish_reason in ("stop", "length"), "completion finish_reason")
check(comp.usage.completion_tokens <= 5 and comp.usage.prompt_tokens > 0, "completion usage")

# Errors arrive as the client's typed exceptions, in OpenAI's shape.
expect_error(openai.BadRequestError, 400, None, lambda: client.chat.completions.create(
    model=model, messages=MESSAGES, max_tokens=-1))
expect_error(openai.BadRequestError, 400, None, lambda: client.chat.completions.create(
    model=model, messages=MESSAGES, temperature=5))
expect_error(openai.NotFoundError, 404, "model_not_found", lambda: client.chat.completions.create(
    model="no-such-model", messages=MESSAGES, max_tokens=4))
bad_key = OpenAI(base_url=BASE_URL, api_key="hth_" + "0" * 64, max_retries=0)
expect_error(openai.AuthenticationError, 401, "invalid_api_key", lambda: bad_key.models.list())

print(f"ok: {checks} checks against {BASE_URL} ({model})")
