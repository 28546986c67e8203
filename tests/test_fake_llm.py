"""Quick tests of the fake LLM itself (tests/fake_llm.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.fake_llm import BEHAVIOURS, FakeLLM, catalogue_yaml


def _req(model: str, *messages: dict[str, Any], stream: bool = True) -> dict[str, Any]:
    return {"model": model, "messages": list(messages), "stream": stream}


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


async def _stream(server: FakeLLM, body: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """POST a streaming request; return the parsed chunks and every raw `data:` payload."""
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("POST", f"{server.base_url}/chat/completions", json=body) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = [line[6:] async for line in resp.aiter_lines() if line.startswith("data: ")]
    assert raw[-1] == "[DONE]"
    return [json.loads(r) for r in raw[:-1]], raw


def _text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def _calls(chunks: list[dict[str, Any]]) -> dict[int, dict[str, str]]:
    calls: dict[int, dict[str, str]] = {}
    for c in chunks:
        for tc in c["choices"][0]["delta"].get("tool_calls") or []:
            call = calls.setdefault(tc["index"], {"id": "", "name": "", "arguments": ""})
            call["id"] = call["id"] or tc.get("id", "")
            call["name"] = call["name"] or tc.get("function", {}).get("name", "")
            call["arguments"] += tc["function"].get("arguments", "")
    return calls


async def test_text_stream_reassembles() -> None:
    async with FakeLLM() as server:
        chunks, _ = await _stream(server, _req("openai/fake-text", _user("hi there")))
    assert _text(chunks) == "Hello from the fake LLM. You said: hi there"
    assert len(chunks) > 5
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["finish_reason"] is None for ch in chunks[:-1] for c in ch["choices"])
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and chunks[0]["id"].startswith("chatcmpl-")
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["model"] == "openai/fake-text"


async def test_directive_overrides_model() -> None:
    async with FakeLLM() as server:
        chunks, _ = await _stream(server, _req("fake-code", _user("go [[fake:text tokens=5 chunk=3]]")))
        assert _text(chunks) == "tok0 tok1 tok2 tok3 tok4"
        assert [c["choices"][0]["delta"].get("content") for c in chunks[:2]] == ["tok", "0 t"]
        chunks, _ = await _stream(server, _req("fake-text", _user('[[fake:text text="a b ]] c"]]')))
        assert _text(chunks) == "a b ]] c"
        chunks, _ = await _stream(server, _req("hosted_vllm/unknown", _user("[[fake:code code='x = [1]']]")))
        assert json.loads(_calls(chunks)[0]["arguments"]) == {"code": "x = [1]"}


async def test_tool_call_fragments_then_text() -> None:
    async with FakeLLM() as server:
        chunks, _ = await _stream(server, _req("fake-code", _user("compute")))
        calls = _calls(chunks)
        assert list(calls) == [0]
        assert calls[0]["id"] == "call_1" and calls[0]["name"] == "code_interpreter"
        assert json.loads(calls[0]["arguments"]) == {"code": "print(6*7)"}
        frags = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks[:-1]]
        assert len(frags) > 2 and all(set(f) == {"index", "function"} for f in frags[1:])
        assert all(set(f["function"]) == {"arguments"} for f in frags[1:])
        assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

        call = {"id": "call_1", "type": "function", "function": {"name": "code_interpreter", "arguments": "{}"}}
        history = [_user("compute"), {"role": "assistant", "content": None, "tool_calls": [call]}]
        history.append({"role": "tool", "tool_call_id": "call_1", "content": "42"})
        chunks, _ = await _stream(server, _req("fake-code", *history))
        assert _text(chunks) == "The result was: 42"
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_other_tool_behaviours() -> None:
    async with FakeLLM() as server:
        chunks, _ = await _stream(server, _req("fake-repeat-ids", _user("x")))
        frags = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks[:-1]]
        assert all(f["id"] == "call_1" and f["function"]["name"] == "code_interpreter" for f in frags)
        assert json.loads("".join(f["function"]["arguments"] for f in frags)) == {"code": "print(6*7)"}

        chunks, _ = await _stream(server, _req("fake-two-tools", _user("x")))
        calls = _calls(chunks)
        assert [(calls[i]["id"], json.loads(calls[i]["arguments"])) for i in (0, 1)] == [
            ("call_1", {"code": "print(1)"}),
            ("call_2", {"code": "print(2)"}),
        ]

        chunks, _ = await _stream(server, _req("fake-tool", _user("""[[fake:tool tool=search args='{"q": 1}']]""")))
        assert _calls(chunks)[0]["name"] == "search" and json.loads(_calls(chunks)[0]["arguments"]) == {"q": 1}


async def test_rounds_limit() -> None:
    async with FakeLLM() as server:
        history = [_user("[[fake:code rounds=2]]")]
        for expected in ("call_1", "call_2"):
            chunks, _ = await _stream(server, _req("fake-text", *history))
            assert _calls(chunks)[0]["id"] == expected
            history.append({"role": "tool", "tool_call_id": expected, "content": "ok"})
        chunks, _ = await _stream(server, _req("fake-text", *history))
        assert _text(chunks) == "The result was: ok"


async def test_errors() -> None:
    async with FakeLLM() as server, httpx.AsyncClient() as client:
        url = f"{server.base_url}/chat/completions"
        resp = await client.post(url, json=_req("fake-error", _user("x")))
        assert resp.status_code == 500 and set(resp.json()["error"]) == {"message", "type", "code"}
        resp = await client.post(url, json=_req("fake-text", _user("[[fake:error status=400]]")))
        assert resp.status_code == 400
        resp = await client.post(url, json=_req("fake-429", _user("x")))
        assert resp.status_code == 429 and resp.headers["retry-after"] == "1"
        assert resp.json()["error"]["code"] == "rate_limit_exceeded"


async def test_non_streaming_and_models() -> None:
    async with FakeLLM() as server, httpx.AsyncClient() as client:
        resp = await client.post(
            f"{server.base_url}/chat/completions", json=_req("fake-text", _user("a")) | {"stream": False}
        )
        assert resp.json()["object"] == "chat.completion"
        assert resp.json()["choices"][0]["message"]["content"] == "Hello from the fake LLM. You said: a"
        resp = await client.post(
            f"{server.base_url}/chat/completions", json=_req("fake-code", _user("a"), stream=False)
        )
        assert resp.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "code_interpreter"
        models = (await client.get(f"{server.base_url}/models")).json()
        assert [m["id"] for m in models["data"]] == list(BEHAVIOURS)


async def test_recording() -> None:
    async with FakeLLM() as server:
        await _stream(server, _req("fake-text", {"role": "system", "content": "sys"}, _user("one")))
        async with httpx.AsyncClient(headers={"Authorization": "Bearer fake-key"}) as client:
            await client.post(f"http://127.0.0.1:{server.port}/chat/completions", json=_req("x", _user("two")))
        assert [r.path for r in server.requests] == ["/v1/chat/completions", "/chat/completions"]
        assert server.requests[0].body["messages"][0] == {"role": "system", "content": "sys"}
        assert server.requests[1]["headers"]["authorization"] == "Bearer fake-key"
        server.clear()
        assert server.requests == []


async def test_malformed_line() -> None:
    async with FakeLLM() as server:
        body = _req("fake-malformed", _user("x"))
        async with (
            httpx.AsyncClient() as client,
            client.stream("POST", f"{server.base_url}/chat/completions", json=body) as resp,
        ):
            raw = [line async for line in resp.aiter_lines() if line.startswith("data: ")]
    assert "data: {not json" in raw and raw[-1] == "data: [DONE]"
    assert raw.index("data: {not json") == 2


async def test_reset_yields_transport_error() -> None:
    async with FakeLLM() as server:
        received: list[str] = []
        body = _req("fake-reset", _user("x"))
        with pytest.raises(httpx.TransportError):
            async with (
                httpx.AsyncClient() as client,
                client.stream("POST", f"{server.base_url}/chat/completions", json=body) as resp,
            ):
                async for line in resp.aiter_lines():
                    received.append(line)
        assert len([x for x in received if x.startswith("data: {")]) == 3
        assert "data: [DONE]" not in received


async def test_stall_then_disconnect(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    server = await FakeLLM().start()
    body = _req("fake-stall", _user("x"))
    start = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(5, read=0.5)) as client,
            client.stream("POST", f"{server.base_url}/chat/completions", json=body) as resp,
        ):
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    assert "Thinking" in line
    await asyncio.sleep(0.1)
    await asyncio.wait_for(server.stop(), 2)
    assert time.monotonic() - start < 5
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_stall_resumes() -> None:
    async with FakeLLM() as server:
        start = time.monotonic()
        chunks, _ = await _stream(server, _req("fake-stall", _user("[[fake:stall stall=0.3]] y")))
    assert time.monotonic() - start >= 0.3
    assert _text(chunks) == "Thinking... Hello from the fake LLM. You said: y"


def test_catalogue_yaml() -> None:
    models = yaml.safe_load(catalogue_yaml("http://127.0.0.1:9/v1"))["model_list"]
    names = [m["model_name"] for m in models]
    assert set(BEHAVIOURS) | {"fake-text-litellm", "fake-embedding"} <= set(names)
    by_name = {m["model_name"]: m for m in models}
    assert by_name["fake-text-litellm"]["litellm_params"]["model"] == "openai/fake-text"
    assert by_name["fake-text-litellm"]["model_info"]["stream_via"] == "litellm"
    assert by_name["fake-embedding"]["model_info"]["mode"] == "embedding"
    assert all(m["litellm_params"]["api_base"] == "http://127.0.0.1:9/v1" for m in models)


def test_command_mode() -> None:
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "tests.fake_llm", "--port", "0"]
    with subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            assert line.startswith("fake-llm listening on http://127.0.0.1:")
            base_url = line.rsplit(" ", 1)[1]
            body = _req("fake-text", _user("cli"), stream=False)
            resp = httpx.post(f"{base_url}/chat/completions", json=body)
            assert resp.json()["choices"][0]["message"]["content"].endswith("You said: cli")
        finally:
            proc.terminate()
