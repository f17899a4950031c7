"""The OpenAI Python SDK (and LangChain's ChatOpenAI) calling `emollama serve`, as a user's
script would: one scenario per run, its outcome printed as one JSON line for the Rust test
(tests/tests/openai_api.rs) to check.

usage: openai_client.py BASE_URL API_KEY SCENARIO CLIP [OPTIONS_JSON]
"""

import base64
import json
import sys
import time

import openai

base_url, api_key, scenario, clip = sys.argv[1:5]
options = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
with open(clip, "rb") as f:
    data_url = "data:video/mp4;base64," + base64.b64encode(f.read()).decode()
text = options.pop("text", "[emotion]")
max_tokens = options.pop("max_tokens", 8)
seed = options.pop("seed", 0)
content = [{"type": "text", "text": text}, {"type": "video_url", "video_url": {"url": data_url}}]
messages = [{"role": "user", "content": content}]


def client(**kw):
    return openai.OpenAI(base_url=base_url, api_key=api_key, **kw)


def error(e):
    return {"error": type(e).__name__, "status": getattr(e, "status_code", None), "message": str(e),
            "body": getattr(e, "body", None)}


def plain():
    r = client().chat.completions.create(model="emollama", messages=messages, max_tokens=max_tokens, seed=seed,
                                         extra_body=options)
    d = r.to_dict()
    return {"content": r.choices[0].message.content, "finish_reason": r.choices[0].finish_reason,
            "usage": d["usage"], "emollama": d["emollama"], "model": r.model, "object": r.object}


def stream():
    started = time.monotonic()
    first_content = None
    pieces, finish, emollama, usage, chunks = [], None, None, None, 0
    s = client().chat.completions.create(model="emollama", messages=messages, max_tokens=max_tokens, seed=seed,
                                         stream=True, stream_options={"include_usage": True}, extra_body=options)
    try:
        for chunk in s:
            chunks += 1
            d = chunk.to_dict()
            if "emollama" in d:
                emollama = d["emollama"]
            if chunk.usage is not None:
                usage = chunk.usage.to_dict()
            for c in chunk.choices:
                if c.delta.content:
                    if first_content is None:
                        first_content = time.monotonic() - started
                    pieces.append(c.delta.content)
                if c.finish_reason:
                    finish = c.finish_reason
    except openai.APIError as e:
        return {**error(e), "pieces": len(pieces)}
    return {"content": "".join(pieces), "finish_reason": finish, "emollama": emollama, "usage": usage,
            "chunks": chunks, "first_content_s": first_content}


def expect_error(call):
    try:
        call()
    except openai.APIError as e:
        return error(e)
    return {"error": None}


def bad_clip():
    bad = [{"type": "text", "text": "[emotion]"},
           {"type": "video_url", "video_url": {"url": "data:video/mp4;base64," + base64.b64encode(b"\x00" * 4096).decode()}}]
    started = time.monotonic()
    out = expect_error(lambda: client(max_retries=2).chat.completions.create(
        model="emollama", messages=[{"role": "user", "content": bad}], max_tokens=4))
    out["seconds"] = time.monotonic() - started
    return out


def bad_clip_streamed():
    bad = [{"type": "text", "text": "[emotion]"},
           {"type": "video_url", "video_url": {"url": "data:video/mp4;base64," + base64.b64encode(b"\x00" * 4096).decode()}}]

    def consume():
        for _ in client().chat.completions.create(model="emollama", messages=[{"role": "user", "content": bad}],
                                                  max_tokens=4, stream=True):
            pass
    return expect_error(consume)


def wrong_token():
    return expect_error(lambda: client().chat.completions.create(model="emollama", messages=messages, max_tokens=2))


def busy():
    started = time.monotonic()
    out = expect_error(lambda: client(max_retries=2).chat.completions.create(
        model="emollama", messages=messages, max_tokens=2))
    out["seconds"] = time.monotonic() - started
    return out


def models():
    return {"models": [m.to_dict() for m in client().models.list().data]}


def langchain():
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=base_url, api_key=api_key, model="emollama", max_tokens=max_tokens, seed=seed,
                     extra_body=options)
    r = llm.invoke([HumanMessage(content=content)])
    return {"content": r.content, "finish_reason": r.response_metadata.get("finish_reason")}


print(json.dumps(globals()[scenario]()))
