"""The vocabulary every layer shares: stream variants, their wire encoding and legacy decoding.

This module is the ground floor: it imports nothing of ours.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

USER = "User"
ASSISTANT = "Assistant"
CODE = "Code"
CODE_OUTPUT = "CodeOutput"
IMAGE = "Image"
TOOL_CALL = "ToolCall"
TOOL_OUTPUT = "ToolOutput"
SERVER_HINT = "ServerHint"
SERVER_ERROR = "ServerError"
CODE_ERROR = "CodeError"
OPENAI_ERROR = "OpenAIError"
STREAM_END = "StreamEnd"
PROMPT = "Prompt"

# Fragments of these variants that follow each other (same id) form one message, on the wire and in the store.
RUN_VARIANTS = frozenset({ASSISTANT, CODE})
# Never stored: control lines.
UNSTORED_VARIANTS = frozenset({SERVER_HINT, STREAM_END, PROMPT})
# Numbered for `userfeedback` (API.md: feedback_index counts Assistant + Code variants).
FEEDBACK_VARIANTS = frozenset({ASSISTANT, CODE})
TOOL_VARIANTS = frozenset({TOOL_CALL, TOOL_OUTPUT})

STOPPED_BY_USER = "Stream is stopped by user."
IMAGE_LINE_CHARS = 16384
CODE_TOOL_NAME = "code_interpreter"

THREAD_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")  # use with fullmatch


@dataclass(slots=True)
class Variant:
    """One unit of a conversation: what a client sees on a stream line and what a thread stores."""

    variant: str
    content: Any
    id: str | None = None
    tool_name: str | None = None
    model: str | None = None
    feedback: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"variant": self.variant, "content": self.content}
        if self.id is not None:
            out["id"] = self.id
        if self.tool_name is not None:
            out["tool_name"] = self.tool_name
        if self.model is not None:
            out["model"] = self.model
        if self.feedback is not None:
            out["feedback"] = self.feedback
        return out

    def wire_dict(self) -> dict[str, Any]:
        """What goes on a stream line: the store-only `model` and `feedback` stay off the wire."""
        out: dict[str, Any] = {"variant": self.variant, "content": self.content}
        if self.id is not None:
            out["id"] = self.id
        if self.tool_name is not None:
            out["tool_name"] = self.tool_name
        return out

    def merges_with(self, other: Variant) -> bool:
        """Whether `other`, arriving right after `self`, continues the same message."""
        return self.variant in RUN_VARIANTS and other.variant == self.variant and other.id == self.id


def hint(**content: str | int | float) -> Variant:
    return Variant(SERVER_HINT, content)


# Strict JSON, non-ASCII escaped: the web frontend decodes every network read on its own. One encoder for all
# lines: json.dumps with non-default arguments builds a new one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))
_ENCODE_STRING = json.encoder.encode_basestring_ascii


def encode_line(obj: dict[str, Any]) -> bytes:
    return _ENCODER.encode(obj).encode() + b"\n"


def _text_line(variant: str, text: str, vid: str | None) -> bytes:
    """The hot path: one streamed text fragment, without building a dict."""
    head = b'{"variant":"' + variant.encode() + b'","content":' + _ENCODE_STRING(text).encode()
    if vid is not None:
        head += b',"id":' + _ENCODE_STRING(vid).encode()
    return head + b"}\n"


def wire_lines(variant: Variant) -> Iterator[bytes]:
    """The NDJSON lines of one variant; a large image is split into lines that share its id."""
    content = variant.content
    if variant.variant == IMAGE and isinstance(content, str) and len(content) > IMAGE_LINE_CHARS:
        for start in range(0, len(content), IMAGE_LINE_CHARS):
            part = Variant(IMAGE, content[start : start + IMAGE_LINE_CHARS], id=variant.id)
            yield encode_line(part.wire_dict())
        return
    if isinstance(content, str) and variant.tool_name is None:
        yield _text_line(variant.variant, content, variant.id)
        return
    yield encode_line(variant.wire_dict())


def from_stored(doc: dict[str, Any]) -> Variant:
    """Decode a stored variant, accepting the legacy shapes of upstream MongoDB documents."""
    name = str(doc.get("variant", ""))
    content = doc.get("content")
    vid = doc.get("id")
    if name in (CODE, CODE_OUTPUT) and isinstance(content, list):
        # Legacy: [text, id]
        if len(content) > 1 and vid is None:
            vid = content[1]
        content = content[0] if content else ""
    elif name == CODE_ERROR and isinstance(content, list):
        content = content[0] if content else ""
    elif name == SERVER_HINT and isinstance(content, str):
        try:
            content = json.loads(content)
        except ValueError:
            content = {"hint": content}
    if name in (CODE, CODE_OUTPUT, CODE_ERROR, ASSISTANT, USER) and content is None:
        content = ""
    return Variant(
        name,
        content,
        id=None if vid is None else str(vid),
        tool_name=doc.get("tool_name"),
        model=doc.get("model"),
        feedback=doc.get("feedback"),
    )


def close_json_fragment(text: str) -> str:
    """The suffix that completes a cut-off JSON object text such as `{"code": "print('a`.

    Escape-aware: an open string (also one ending in a lone backslash) is closed first, then every
    open bracket. Returns "" when the text is already complete JSON.
    """
    if not text.strip():
        return '{"code": ""}'
    closers: list[str] = []
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            closers.append("}" if ch == "{" else "]")
        elif ch in "}]" and closers:
            closers.pop()
    close_string = ("\\" if escaped else "") + '"' if in_string else ""
    tail = "".join(reversed(closers))
    # The cut may fall after a key, a colon or a comma: try the smallest completions in turn.
    for middle in ("", ': ""', '""', "null", '"_": null'):
        suffix = close_string + middle + tail
        try:
            json.loads(text + suffix)
        except ValueError:
            continue
        return suffix
    return close_string + tail


def history_with_interruptions(variants: list[Variant]) -> list[Variant]:
    """A thread left by a crash may end a `Code` without `CodeOutput`: read it as interrupted."""
    out: list[Variant] = []
    pending: Variant | None = None
    for v in variants:
        if pending is not None and not (v.variant == CODE_OUTPUT and v.id == pending.id):
            if not (v.variant == CODE and v.id == pending.id):
                out.extend(_interrupted(pending))
                pending = None
        if v.variant == CODE:
            pending = v
        elif v.variant == CODE_OUTPUT and pending is not None and v.id == pending.id:
            pending = None
        out.append(v)
    if pending is not None:
        out.extend(_interrupted(pending))
    return out


def _interrupted(code: Variant) -> list[Variant]:
    return [Variant(CODE_OUTPUT, "", id=code.id), Variant(CODE_ERROR, "interrupted", id=code.id)]
