"""The Freva web frontend's way of reading a stream, as a test oracle applied to every stream the tests see.

It splits the body on newlines, parses each line on its own, merges adjacent lines of one variant and one id
(every variant but the control lines `ServerHint` and `StreamEnd`) into one message, takes the thread id from the
first line and commits the last message only when `StreamEnd` arrives. `read_stream` also enforces the wire rules
of API.md and feeds the same body to climateclaw-client's parser (tests/climateclaw_oracle.py), so every stream
checked here is checked against both clients.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from tests.climateclaw_oracle import render_in_climateclaw

CONTROL = {"ServerHint", "StreamEnd"}


@dataclass
class Message:
    variant: str
    content: Any
    id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _reject_constant(name: str) -> None:
    raise AssertionError(f"non-strict JSON constant {name} on the wire")


def read_stream(body: bytes) -> tuple[str, list[Message], bool]:
    """(thread id, committed messages, whether StreamEnd came)."""
    assert all(b < 128 for b in body), "non-ASCII bytes on the wire (must be \\u-escaped)"
    text = body.decode("ascii")
    assert "\r" not in text, "CR on the wire"
    assert text.endswith("\n"), "the last line must end with a newline"
    lines = [json.loads(raw, parse_constant=_reject_constant) for raw in text.split("\n")[:-1]]
    assert lines, "empty stream"
    first = lines[0]
    assert first["variant"] == "ServerHint" and "thread_id" in first["content"], first
    messages: list[Message] = []
    open_message: Message | None = None
    ended = False
    for line in lines:
        assert isinstance(line, dict) and set(line) >= {"variant", "content"}, line
        assert not ended, f"a line after StreamEnd: {line}"
        variant = line["variant"]
        if variant == "ServerHint":
            assert isinstance(line["content"], dict), line
            for value in line["content"].values():
                assert isinstance(value, str | int | float) and not isinstance(value, bool), line
                assert not (isinstance(value, float) and math.isnan(value)), line
        if variant == "StreamEnd":
            ended = True
        if open_message is not None and variant == open_message.variant and line.get("id") == open_message.id:
            open_message.content += line["content"]
            continue
        if open_message is not None:
            messages.append(open_message)
            open_message = None
        if variant in CONTROL:
            continue
        extra = {k: v for k, v in line.items() if k not in ("variant", "content", "id")}
        open_message = Message(variant, line["content"], line.get("id"), extra)
    # Only StreamEnd commits the last message.
    if open_message is not None and ended:
        messages.append(open_message)
    assert lines[-1]["variant"] == "StreamEnd", f"the stream closed without StreamEnd: {lines[-1]}"
    render_in_climateclaw(body)
    return first["content"]["thread_id"], messages, ended


def as_stored(messages: list[Message]) -> list[tuple[str, Any, str | None]]:
    return [(m.variant, m.content, m.id) for m in messages]


def stored_tail(thread: list[dict[str, Any]]) -> list[tuple[str, Any, str | None]]:
    """The variants a thread stored after its last user message (this turn's), as comparable tuples."""
    last_user = max(i for i, v in enumerate(thread) if v["variant"] == "User")
    return [(v["variant"], v["content"], v.get("id")) for v in thread[last_user + 1 :]]
