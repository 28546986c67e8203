"""The vocabulary every layer shares: stream variants, their wire encoding and legacy decoding.

This module is the ground floor: it imports nothing of ours.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
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
CODE_TOOL_NAME = "code_interpreter"
# What the LLM reads in a tool result for each figure the code showed (the stored CodeOutput has no placeholder).
FIGURE_NOTE = "[figure]"

# A `Code` variant holds its call's arguments in one canonical form, `{"code":"<escaped code>"}` (API.md): what
# climateclaw-client's parser renders, streamed as the prefix, the escaped code in fragments, the suffix.
CODE_PREFIX = '{"code":"'
CODE_SUFFIX = '"}'

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
    # Only on `User` variants, stored but never on the wire: the notebook cell the question was asked about
    # (`{"source", "outputs", "notebook_path"}`), and the kernel the turn ran in (`{"kind": "notebook" |
    # "thread", "spec", "variables": [names of the kernel's variables the LLM was told about]}`).
    cell_context: dict[str, Any] | None = None
    kernel: dict[str, Any] | None = None

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
        if self.cell_context is not None:
            out["cell_context"] = self.cell_context
        if self.kernel is not None:
            out["kernel"] = self.kernel
        return out

    def wire_dict(self) -> dict[str, Any]:
        """What goes on a stream line: the store-only `model`, `feedback`, `cell_context` and `kernel` stay off
        the wire."""
        out: dict[str, Any] = {"variant": self.variant, "content": self.content}
        if self.id is not None:
            out["id"] = self.id
        if self.tool_name is not None:
            out["tool_name"] = self.tool_name
        return out

    def merges_with(self, other: Variant) -> bool:
        """Whether `other`, arriving right after `self`, continues the same message."""
        return self.variant in RUN_VARIANTS and other.variant == self.variant and other.id == self.id

    @property
    def tools_only(self) -> bool:
        """Streamed and returned only with `show_tools`: a non-code tool's call and output, and the images of its
        result (which carry its `tool_name`)."""
        return self.variant in TOOL_VARIANTS or (self.variant == IMAGE and self.tool_name is not None)


def hint(**content: str | int | float) -> Variant:
    return Variant(SERVER_HINT, {k: _hint_text(v) if isinstance(v, str) else v for k, v in content.items()})


def _hint_text(text: str) -> str:
    """climateclaw-client rebuilds a `ServerHint` from the Python repr of its content with `'` replaced by `"`:
    a quote, an apostrophe or an unprintable character in a value would make that invalid JSON."""
    text = text.replace("'", "\u2019").replace('"', "\u201d")
    return text if text.isprintable() else "".join(c if c.isprintable() else " " for c in text)


def escape_code(code: str) -> str:
    """`code` as the body of a JSON string, escaped as `json.dumps(code, ensure_ascii=False)` escapes it."""
    return _ESCAPE(code)[1:-1]


def canonical_code(code: str) -> str:
    return CODE_PREFIX + escape_code(code) + CODE_SUFFIX


_ESCAPE = json.encoder.encode_basestring  # type: ignore[attr-defined]


def with_figures(text: str, figures: int) -> str:
    """A tool result as the LLM reads it: its text, then a note for each figure shown."""
    return "\n".join([text, *[FIGURE_NOTE] * figures] if text else [FIGURE_NOTE] * figures)


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
        if name == CODE and isinstance(content, dict):
            # The upstream's reader also took these arguments as an object: the canonical JSON text of it.
            content = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
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
        # The upstream writes "" where a variant has none.
        model=doc.get("model") or None,
        feedback=doc.get("feedback") or None,
        cell_context=_object(doc.get("cell_context")),
        kernel=_object(doc.get("kernel")),
    )


def _object(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def from_stored_thread(docs: Iterable[Any]) -> list[Variant]:
    """Decode a stored thread's variants in order. The upstream backends stored a `Prompt` first, a `ServerHint`
    before and a `StreamEnd` after each turn: control variants that a thread of ours never holds
    (`UNSTORED_VARIANTS`), dropped. (The upstream's `getthread` keeps a last `StreamEnd`; dropped here too, it
    would move the index of every later variant once the thread is continued.)"""
    return [from_stored(d) for d in docs if isinstance(d, dict) and d.get("variant") not in UNSTORED_VARIANTS]


def stored_time(value: Any) -> float:
    """POSIX seconds of a stored thread's `date`: a datetime (a naive one is UTC, as BSON's are) or the RFC-3339
    string the Rust backend wrote; 0.0 (the oldest) when it is absent or unreadable."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            return 0.0
    if not isinstance(value, datetime):
        return 0.0
    return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).timestamp()


def history_with_interruptions(variants: list[Variant]) -> list[Variant]:
    """A stored thread as clients and the LLM read it (getthread, editthread, forks, chat history).

    A thread left by a crash may end a `Code` without `CodeOutput`: read it as interrupted. The upstream's
    threads hold control lines (dropped), a `Code` without id (given `legacy_<position>`, and the id-less output
    after it that id), a `CodeError` without id after its call's output (given the call's id, so that the LLM
    reads the failure in the call's result), and JSON display data as a second output `<call id>:json` (merged
    into the call's output: exactly one `CodeOutput` per `Code`, and no tool result that answers no call).
    """
    out: list[Variant] = []
    pending: Variant | None = None
    last_code: str | None = None
    for n, v in enumerate(variants):
        if v.variant in UNSTORED_VARIANTS:
            continue
        if v.variant == CODE and v.id is None:
            v = replace(v, id=f"legacy_{n}")
        elif v.variant in (CODE_OUTPUT, CODE_ERROR) and v.id is None and last_code is not None:
            v = replace(v, id=last_code)
        if v.variant == CODE_OUTPUT and last_code is not None and v.id == f"{last_code}:json":
            earlier = next((i for i in range(len(out) - 1, -1, -1) if out[i].variant == CODE_OUTPUT), None)
            if earlier is not None and out[earlier].id == last_code:
                out[earlier] = replace(out[earlier], content="\n".join(filter(None, [out[earlier].content, v.content])))
                continue
        if pending is not None and not (v.variant == CODE_OUTPUT and v.id == pending.id):
            if not (v.variant == CODE and v.id == pending.id):
                out.extend(_interrupted(pending))
                pending = None
        if v.variant == CODE:
            pending = v
            last_code = v.id
        elif v.variant == CODE_OUTPUT and pending is not None and v.id == pending.id:
            pending = None
        out.append(v)
    if pending is not None:
        out.extend(_interrupted(pending))
    return out


def _interrupted(code: Variant) -> list[Variant]:
    return [Variant(CODE_OUTPUT, "", id=code.id), Variant(CODE_ERROR, "interrupted", id=code.id)]
