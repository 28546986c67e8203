"""A fake OpenAI-compatible LLM server for tests, the browser test and benchmarks.

In-process (inside a running asyncio loop)::

    server = FakeLLM()
    await server.start()          # server.port, server.base_url == "http://127.0.0.1:PORT/v1"
    ...                           # server.requests: every POST (path, headers, body), in order
    await server.stop()

As a command: ``python -m tests.fake_llm --port 0`` prints ``fake-llm listening on http://127.0.0.1:N/v1``.

The behaviour comes from the request's model name (provider prefix stripped, unknown names behave as
``fake-text``) or from a directive in the last user message, e.g.
``[[fake:code code="print(1)" rounds=2]]``, ``[[fake:text tokens=100 delay=0.01]]`` or ``[[fake: chunk=3]]``
(``surrogate=1`` puts a lone surrogate in the middle of the answer). ``fake-notools`` answers like Ollama does for a
model without tool support (HTTP 400 "... does not support tools") when the request has ``tools``, else as
``fake-text``; it is not listed by default.

``GET /v1/models`` lists ``FakeLLM(models=[...])`` (``--models a,b`` as a command; default: the behaviours) and is
recorded in ``server.listings``.

The arguments of tool calls come in deltas of 8 characters of ``json.dumps(arguments)``; directive params shape
them like real providers do: ``args_split=N`` (N characters per delta, 1: every character on its own),
``args_split=all`` (all arguments in one delta), ``args_raw='<text>'`` (this exact arguments text for every call
instead of the JSON dump, e.g. with spaces, ``\\u00e9`` escapes, no ``code`` key, extra keys or cut off) and
``args_pause=SECONDS`` (silence before argument delta ``args_pause_at=K``, counted from 0 over all calls;
default 1: a pause in the middle of code generation); ``args_text='<text>'`` sends a text delta right after the
first call's first argument delta (a provider that mixes text into a tool call).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import re
import shlex
import signal
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import tornado.web
import yaml
from tornado.iostream import StreamClosedError

from tests.local_server import LocalServer

TOOL_BEHAVIOURS = ("fake-code", "fake-tool", "fake-two-tools", "fake-repeat-ids")
BEHAVIOURS = ("fake-text", "fake-slow", "fake-stall", "fake-error", "fake-429", "fake-reset", "fake-malformed")
BEHAVIOURS += TOOL_BEHAVIOURS
# Understood, but neither listed by default nor in catalogue_yaml (existing tests see the same models).
EXTRA_BEHAVIOURS = ("fake-notools",)
DIRECTIVE = re.compile(r"""\[\[fake:((?:"(?:\\.|[^"\\])*"|'[^']*'|[^\]"'])*)\]\]""")
_ids = itertools.count(1)


@dataclass
class Recorded:
    """One request the fake received; ``headers`` have lower-case names. ``rec["body"]`` works too."""

    path: str
    headers: dict[str, str]
    body: Any

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


@dataclass
class Reply:
    """What to answer: an error, or text / tool calls plus how to stream them."""

    text: str = ""
    calls: list[tuple[str, str, str]] = field(default_factory=list)  # (id, name, JSON arguments)
    status: int = 200
    error: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    chunk: int = 0  # characters per text delta; 0: one word per delta
    delay: float = 0.0
    stall_after: int = -1  # delta index before which the stream goes silent
    stall: float = 0.0
    malformed_after: int = -1
    reset_after: int = -1
    rst: bool = True  # reset with a TCP RST (else a plain close without the chunked terminator)
    repeat_ids: bool = False
    args_split: int = 8  # characters per tool-call arguments delta; 0: all in one delta
    args_text: str = ""  # a text delta in the middle of the first call's arguments


def _text_of(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def parse_request(body: dict[str, Any]) -> tuple[str, dict[str, str], str]:
    """(behaviour, directive params, last user message without the directive)."""
    model = str(body.get("model") or "").rsplit("/", 1)[-1]
    msgs = body.get("messages") or []
    user = next((_text_of(m.get("content")) for m in reversed(msgs) if m.get("role") == "user"), "")
    params: dict[str, str] = {}
    if match := DIRECTIVE.search(user):
        try:
            words = shlex.split(match.group(1))
        except ValueError:
            words = match.group(1).split()
        if words and "=" not in words[0]:
            model = words.pop(0)
            model = model if model.startswith("fake-") else f"fake-{model}"
        params = dict(w.split("=", 1) for w in words if "=" in w)
        user = (user[: match.start()] + user[match.end() :]).strip()
    known = BEHAVIOURS + EXTRA_BEHAVIOURS
    behaviour = max((b for b in known if model.startswith(b)), key=len, default="fake-text")
    return behaviour, params, user


def plan(body: dict[str, Any]) -> Reply:
    """Decide the reply to a chat-completions request."""
    behaviour, p, user = parse_request(body)

    def num(key: str, default: float) -> float:
        return float(p.get(key, default))

    if behaviour == "fake-notools" and body.get("tools"):
        model = str(body.get("model") or "").rsplit("/", 1)[-1]
        message = f"registry.ollama.ai/library/{model} does not support tools"
        return Reply(status=400, error={"message": message, "type": "api_error", "param": None, "code": None})
    if behaviour in ("fake-error", "fake-429"):
        status = int(num("status", 429 if behaviour == "fake-429" else 500))
        kind = {429: "rate_limit_exceeded"}.get(status, "server_error" if status >= 500 else "invalid_request_error")
        msg = p.get("message", f"fake {kind} (HTTP {status})")
        headers = {"Retry-After": p.get("retry_after", "1")} if status == 429 else {}
        return Reply(status=status, error={"message": msg, "type": kind, "code": kind}, headers=headers)
    text = p.get("text", f"Hello from the fake LLM. You said: {user}")
    if "tokens" in p:
        text = " ".join(f"tok{i}" for i in range(int(p["tokens"])))
    if "surrogate" in p:  # a lone surrogate mid-answer: valid JSON ("\ud800"), no UTF-8 form
        text = text[: len(text) // 2] + "\ud800" + text[len(text) // 2 :]
    reply = Reply(text=text, chunk=int(num("chunk", 0)), delay=num("delay", 0.05 if behaviour == "fake-slow" else 0))
    if behaviour == "fake-stall":
        reply.text, reply.stall_after, reply.stall = f"Thinking... {text}", 1, num("stall", 60)
    elif behaviour == "fake-malformed":
        reply.malformed_after = int(num("after", 2))
    elif behaviour == "fake-reset":
        reply.reset_after, reply.rst = int(num("after", 3)), p.get("rst", "1") not in ("0", "false")
    elif behaviour in TOOL_BEHAVIOURS:
        msgs = body.get("messages") or []
        last_user = max((i for i, m in enumerate(msgs) if m.get("role") == "user"), default=-1)
        results = [_text_of(m.get("content")) for m in msgs[last_user + 1 :] if m.get("role") == "tool"]
        if behaviour == "fake-two-tools":
            name = p.get("tool", "code_interpreter")
            calls = [
                (name, {"code": p.get("code", "print(1)")}),
                (name, {"code": p.get("code2", "print(2)")}),
            ]
        elif behaviour == "fake-tool":
            calls = [(p.get("tool", "echo"), json.loads(p.get("args", '{"text": "hello"}')))]
        else:
            calls = [("code_interpreter", {"code": p.get("code", "print(6*7)")})]
        done = -(-len(results) // len(calls))  # tool rounds already answered in this turn
        if msgs and msgs[-1].get("role") == "tool" and done >= num("rounds", 1):
            reply.text = p.get("text", "The result was: " + "\n".join(results[-len(calls) :]))
        else:
            first = done * len(calls) + 1
            raw = p.get("args_raw")
            reply.calls = [
                (f"call_{first + i}", n, json.dumps(a) if raw is None else raw) for i, (n, a) in enumerate(calls)
            ]
            reply.repeat_ids = behaviour == "fake-repeat-ids"
            split = p.get("args_split", "8")
            reply.args_split = 0 if split == "all" else int(split)
            reply.args_text = p.get("args_text", "")
            if "args_pause" in p:
                reply.stall_after = _argument_deltas(reply)[int(num("args_pause_at", 1))]
                reply.stall = num("args_pause", 0)
    return reply


def deltas(reply: Reply) -> list[dict[str, Any]]:
    """The stream's deltas (without the role, which the handler adds to the first)."""
    if reply.calls:
        out: list[dict[str, Any]] = []
        for i, (cid, name, args) in enumerate(reply.calls):
            head = {"index": i, "id": cid, "type": "function", "function": {"name": name, "arguments": ""}}
            out.append({"content": None, "tool_calls": [head]} if i == 0 else {"tool_calls": [head]})
            step = reply.args_split or len(args) or 1
            for frag in (args[j : j + step] for j in range(0, len(args), step)):
                call = {**head, "function": {"name": name, "arguments": frag}} if reply.repeat_ids else None
                out.append({"tool_calls": [call or {"index": i, "function": {"arguments": frag}}]})
                if reply.args_text and len(out) == 2:
                    out.append({"content": reply.args_text})
        return out
    n, text = reply.chunk, reply.text
    parts = [text[j : j + n] for j in range(0, len(text), n)] if n > 0 else re.findall(r"\s*\S+\s*$|\s*\S+", text)
    return [{"content": part} for part in parts or [""]]


def _argument_deltas(reply: Reply) -> list[int]:
    """The indices in deltas(reply) of the deltas that carry tool-call arguments."""
    return [i for i, d in enumerate(deltas(reply)) if d.get("tool_calls", [{}])[0].get("function", {}).get("arguments")]


class _Handler(tornado.web.RequestHandler):
    fake: FakeLLM

    def initialize(self, fake: FakeLLM) -> None:
        self.fake = fake
        self.closed = asyncio.Event()

    def on_connection_close(self) -> None:
        self.closed.set()

    async def wait(self, seconds: float) -> None:
        """Sleep; raise StreamClosedError at once when the client goes."""
        if seconds > 0 and not self.closed.is_set():
            try:
                await asyncio.wait_for(self.closed.wait(), seconds)
            except TimeoutError:
                pass
        if self.closed.is_set():
            raise StreamClosedError()

    def get(self) -> None:
        headers = {k.lower(): v for k, v in self.request.headers.get_all()}
        self.fake.listings.append(Recorded(self.request.path, headers, None))
        data = [{"id": m, "object": "model", "owned_by": "fake"} for m in self.fake.models]
        self.finish({"object": "list", "data": data})

    async def post(self) -> None:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            body = None
        headers = {k.lower(): v for k, v in self.request.headers.get_all()}
        self.fake.requests.append(Recorded(self.request.path, headers, body))
        if not isinstance(body, dict):
            self.set_status(400)
            self.finish({"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
            return
        if self.request.path.endswith("/embeddings"):
            self.finish(_embeddings(body))
            return
        reply = plan(body)
        if reply.error:
            self.set_status(reply.status)
            for k, v in reply.headers.items():
                self.set_header(k, v)
            self.finish({"error": reply.error})
            return
        base = {
            "id": f"chatcmpl-fake{next(_ids)}",
            "created": int(time.time()),
            "model": body.get("model", ""),
        }
        try:
            if body.get("stream"):
                await self.stream(reply, base, bool((body.get("stream_options") or {}).get("include_usage")))
            else:
                await self.answer(reply, base)
        except StreamClosedError:
            pass  # the client went away (or we reset the connection)

    async def answer(self, reply: Reply, base: dict[str, Any]) -> None:
        await self.wait(reply.stall if reply.stall_after >= 0 else 0)
        if reply.reset_after >= 0:
            self.reset(reply.rst)
        elif reply.malformed_after >= 0:
            self.finish(b"{not json")
        else:
            self.finish({**base, "object": "chat.completion", "choices": [_choice(reply)], "usage": _usage(reply)})

    async def stream(self, reply: Reply, base: dict[str, Any], include_usage: bool) -> None:
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        chunk = {**base, "object": "chat.completion.chunk"}

        async def send(data: bytes) -> None:
            self.write(b"data: " + data + b"\n\n")
            await self.flush()

        def enc(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return json.dumps({**chunk, "choices": [choice]}).encode()

        for i, delta in enumerate(deltas(reply)):
            if i == reply.reset_after:
                await asyncio.sleep(0.05)  # let the client read what came before
                self.reset(reply.rst)
                return
            if i == reply.malformed_after:
                await send(b"{not json")
            await self.wait(reply.stall if i == reply.stall_after else (reply.delay if i else 0))
            await send(enc({"role": "assistant", **delta} if i == 0 else delta))
        await send(enc({}, "tool_calls" if reply.calls else "stop"))
        if include_usage:
            await send(json.dumps({**chunk, "choices": [], "usage": _usage(reply)}).encode())
        await send(b"[DONE]")
        self.finish()

    def reset(self, rst: bool) -> None:
        """Drop the connection mid-response: no chunked terminator, with a TCP RST unless rst is False."""
        stream = self.request.connection.stream  # type: ignore[attr-defined]
        if rst and stream.socket is not None:
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.close()


def _choice(reply: Reply) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": None if reply.calls else reply.text}
    if reply.calls:
        fn = [{"id": i, "type": "function", "function": {"name": n, "arguments": a}} for i, n, a in reply.calls]
        msg["tool_calls"] = fn
    return {"index": 0, "message": msg, "finish_reason": "tool_calls" if reply.calls else "stop"}


def _usage(reply: Reply) -> dict[str, int]:
    n = len(reply.text.split()) + sum(len(c[2]) // 4 for c in reply.calls)
    return {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n}


def _embeddings(body: dict[str, Any]) -> dict[str, Any]:
    """Deterministic 16-dimensional unit vectors from a hash of each input."""
    texts = body.get("input") or []
    data = []
    for i, text in enumerate([texts] if isinstance(texts, str) else texts):
        raw = [b - 127.5 for b in hashlib.sha256(str(text).encode()).digest()[:16]]
        norm = sum(x * x for x in raw) ** 0.5 or 1.0
        data.append({"object": "embedding", "index": i, "embedding": [x / norm for x in raw]})
    return {
        "object": "list",
        "data": data,
        "model": body.get("model", ""),
        "usage": {"prompt_tokens": 1, "total_tokens": 1},
    }


class FakeLLM(LocalServer):
    """The fake server; start it inside a running event loop."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, models: list[str] | None = None) -> None:
        super().__init__(host, port)
        self.requests: list[Recorded] = []
        # What GET /models lists, and every such GET (kept apart: `requests` are the POSTs tests count).
        self.models = list(BEHAVIOURS if models is None else models)
        self.listings: list[Recorded] = []

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def bodies(self) -> list[Any]:
        return [r.body for r in self.requests]

    def clear(self) -> None:
        self.requests.clear()

    def routes(self) -> list[tuple[Any, ...]]:
        kw = {"fake": self}
        return [(rf"(?:/v1)?/{path}", _Handler, kw) for path in ("chat/completions", "models", "embeddings")]


def catalogue_yaml(base_url: str) -> str:
    """A LiteLLM-style catalogue: one entry per behaviour, two streamed through litellm, one embedding."""

    def entry(name: str, model: str, info: dict[str, Any]) -> dict[str, Any]:
        params = {"model": f"openai/{model}", "api_base": base_url, "api_key": "fake-key"}
        return {"model_name": name, "litellm_params": params, "model_info": info}

    chat = {"supports_function_calling": True, "supports_vision": False}
    models = [entry(b, b, dict(chat)) for b in BEHAVIOURS]
    models += [entry(f"{b}-litellm", b, {**chat, "stream_via": "litellm"}) for b in ("fake-text", "fake-code")]
    models.append(entry("fake-embedding", "fake-embedding", {"mode": "embedding"}))
    return yaml.safe_dump({"model_list": models}, sort_keys=False)


async def _main(host: str, port: int, models: list[str] | None) -> None:
    server = await FakeLLM(host, port, models).start()
    done = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, done.set)
    print(f"fake-llm listening on {server.base_url}", flush=True)
    await done.wait()
    await server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible LLM server")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--models", default=None, help="comma-separated ids GET /models lists (default: behaviours)")
    args = parser.parse_args()
    listed = [m for m in args.models.split(",") if m] if args.models is not None else None
    try:
        asyncio.run(_main(args.host, args.port, listed))
    except KeyboardInterrupt:
        pass
