"""The NDJSON lines of one stream: the single encoder every variant of a turn goes through (API.md, "The stream").

Besides encoding lines it keeps the rules two kinds of client need:
- the Freva web frontend merges adjacent lines of one variant: two images are separated by a `ServerHint`, and
  a keep-alive inside an open run of fragments is an empty fragment of that run;
- climateclaw-client's parser scans for balanced `{…}` objects and reads any string content that begins with
  `{` and ends with `}` as a JSON object: such content goes out as two lines of the same variant and id. It
  renders a `Code` run only in the canonical form — the prefix `{"code":"` alone, the escaped code in fragments
  of which none but the last ends with `"}`, the suffix `"}` alone — and an empty `Code` fragment crashes it, so
  an open `Code` run is kept alive with characters held back from it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from ..variants import (
    ASSISTANT,
    CODE,
    CODE_PREFIX,
    CODE_SUFFIX,
    IMAGE,
    RUN_VARIANTS,
    SERVER_HINT,
    Variant,
    hint,
)

IMAGE_LINE_CHARS = 16384
# Escaped code characters an open `Code` run keeps back from each fragment: released one by one as the
# keep-alive while the LLM pauses in the middle of its code.
CODE_HOLD_CHARS = 8

# Strict JSON, non-ASCII escaped: the web frontend decodes every network read on its own. One encoder for all
# lines: json.dumps with non-default arguments builds a new one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))
_ENCODE_STRING = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]
# The units of escaped string text: an escape (complete), or a run of plain characters.
_UNITS = re.compile(r'\\u[0-9a-fA-F]{4}|\\[^u]|[^\\"]+')


def encode_line(obj: dict[str, Any]) -> bytes:
    return _ENCODER.encode(obj).encode() + b"\n"


def _text_line(variant: str, text: str, vid: str | None) -> bytes:
    """The hot path: one streamed text fragment, without building a dict."""
    head = b'{"variant":"' + variant.encode() + b'","content":' + _ENCODE_STRING(text).encode()
    if vid is not None:
        head += b',"id":' + _ENCODE_STRING(vid).encode()
    return head + b"}\n"


def _line(v: Variant, content: Any) -> bytes:
    if isinstance(content, str) and v.tool_name is None:
        return _text_line(v.variant, content, v.id)
    return encode_line(Variant(v.variant, content, id=v.id, tool_name=v.tool_name).wire_dict())


def _parts(text: str) -> list[str]:
    """Content that would read as a JSON object to climateclaw-client, cut after its leading `{`s."""
    if len(text) > 1 and text[0] == "{" and text[-1] == "}":
        lead = len(text) - len(text.lstrip("{"))
        return [text[:lead], text[lead:]]
    return [text]


def lines_of(v: Variant) -> list[bytes]:
    """The lines of one whole variant, outside any run (an image: its parts of at most IMAGE_LINE_CHARS)."""
    content = v.content
    if not isinstance(content, str):
        return [_line(v, content)]
    if v.variant == IMAGE and len(content) > IMAGE_LINE_CHARS:
        return [_line(v, content[i : i + IMAGE_LINE_CHARS]) for i in range(0, len(content), IMAGE_LINE_CHARS)]
    return [_line(v, part) for part in _parts(content)]


def _cuts(pending: str) -> Iterator[tuple[int, int]]:
    """The ranges (low, high) of positions where escaped code may be cut for a middle fragment: at an escape
    boundary, after a character other than `}` (so no fragment ends with `"}` or both begins with `{` and ends
    with `}`) and other than the second `\\` of an escaped backslash (climateclaw-client holds such a fragment
    back and shows it undecoded when the suffix follows)."""
    pos = 0
    for match in _UNITS.finditer(pending):
        start, end = match.span()
        if start != pos:  # an escape still incomplete at the end
            return
        pos = end
        unit = match.group()
        if unit[0] != "\\":
            low = start + len(unit) - len(unit.lstrip("}")) + 1
            high = start + len(unit.rstrip("}"))
            if low <= high:
                yield low, high
        elif unit != "\\\\":
            yield end, end


def _largest_cut(pending: str, limit: int) -> int:
    best = 0
    for low, high in _cuts(pending):
        if low > limit:
            break
        best = min(high, limit)
        # Within a run, a `}` before the limit moves the cut back to the last other character.
        while pending[best - 1] == "}":
            best -= 1
    return best


def _last_parts(pending: str) -> list[str]:
    """The code's last escaped characters, before the suffix: a fragment may end with `}`, but never with `"}`
    and never both begin with `{` and end with `}`."""
    if not pending:
        return []
    if pending[-1] == "}" and (pending.endswith('"}') or pending[0] == "{"):
        head = pending.rstrip("}")
        if head:
            return [head, pending[len(head) :]]
    return [pending]


class _CodeRun:
    """One call's canonical `Code` text on its way to the wire (see the module's doc)."""

    def __init__(self, vid: str | None) -> None:
        self.id = vid
        self.head = ""  # the prefix, until complete
        self.pending = ""  # escaped code not sent yet
        self.closed = False
        self._escape = 0  # characters still belonging to an escape begun in an earlier fragment; -1: kind unknown

    def feed(self, text: str) -> list[str]:
        out: list[str] = []
        if len(self.head) < len(CODE_PREFIX):
            need = len(CODE_PREFIX) - len(self.head)
            self.head, text = self.head + text[:need], text[need:]
            if len(self.head) == len(CODE_PREFIX):
                out.append(self.head)
        if not text:
            return out
        if self.closed:
            return [*out, text]
        end = self._closing_quote(text)
        if end < 0:
            self.pending += text
            cut = _largest_cut(self.pending, len(self.pending) - CODE_HOLD_CHARS)
            if cut:
                out.append(self.pending[:cut])
                self.pending = self.pending[cut:]
            return out
        self.closed = True
        out += _last_parts(self.pending + text[:end])
        self.pending = ""
        return [*out, text[end:]]

    def release(self) -> str:
        """The smallest fragment of held-back code that may go out on its own ("" when there is none)."""
        cut = next(_cuts(self.pending), (0, 0))[0]
        fragment, self.pending = self.pending[:cut], self.pending[cut:]
        return fragment

    def _closing_quote(self, text: str) -> int:
        """The index of the quote that ends the code string, or -1; follows escapes across fragments."""
        i = 0
        while i < len(text):
            if self._escape:
                if self._escape == -1:
                    self._escape = 5 if text[i] == "u" else 1
                self._escape -= 1
                i += 1
            elif text[i] == "\\":
                self._escape = -1
                i += 1
            elif text[i] == '"':
                return i
            else:
                match = _UNITS.match(text, i)
                i = match.end() if match else i + 1
        return -1


class StreamEncoder:
    """Turns a turn's variants, in order, into its stream's lines; `keep_alive` fills pauses."""

    def __init__(self) -> None:
        self._run: Variant | None = None  # the open run of fragments (its variant and id), if any
        self._code: _CodeRun | None = None
        self._last: str | None = None  # the variant of the last line
        self._images = 0

    @property
    def run_open(self) -> bool:
        """Whether the next fragment of the last line's variant continues its message."""
        return self._run is not None

    def code_open(self, vid: str | None) -> bool:
        """Whether the `Code` run of this call still awaits its suffix."""
        return self._code is not None and self._code.id == vid and not self._code.closed

    def encode(self, v: Variant) -> list[bytes]:
        lines: list[bytes] = []
        if self._run is not None and self._run.merges_with(v):
            fragments = self._code.feed(v.content) if self._code is not None else _parts(v.content)
            lines = [_text_line(v.variant, f, v.id) for f in fragments if f or v.variant == ASSISTANT]
            self._last = v.variant
            return lines
        lines = self._end_run()
        if v.variant == IMAGE and self._last == IMAGE:
            # The web client merges adjacent lines of one variant: separate two images.
            self._images += 1
            lines += lines_of(hint(image=self._images))
        if v.variant == CODE and isinstance(v.content, str):
            self._run, self._code = v, _CodeRun(v.id)
            lines += [_text_line(CODE, f, v.id) for f in self._code.feed(v.content)]
        else:
            self._run = v if v.variant in RUN_VARIANTS else None
            lines += lines_of(v)
        self._last = v.variant
        return lines

    def keep_alive(self, status: str) -> list[bytes]:
        """A line that changes nothing the client shows; none inside an open `Code` run with nothing held back
        (the gap then grows up to the LLM's read timeout: API.md)."""
        run = self._run
        if run is None or (self._code is not None and self._code.closed):
            self._end_run()
            self._last = SERVER_HINT
            return lines_of(hint(status=status))
        if self._code is None:
            return [_text_line(run.variant, "", run.id)]
        fragment = self._code.release()
        return [_text_line(CODE, fragment, run.id)] if fragment else []

    def _end_run(self) -> list[bytes]:
        """Whatever an unfinished `Code` run still holds goes out before another variant's line."""
        code, self._run, self._code = self._code, None, None
        if code is None or not code.pending:
            return []
        fragments, code.pending = _last_parts(code.pending), ""
        return [_text_line(CODE, f, code.id) for f in fragments]


def keep_alive_after(line: bytes, status: str) -> bytes | None:
    """A keep-alive for a reader whose last line was `line` (None: inside an open `Code` run, none can be sent)."""
    last = json.loads(line)
    variant = last.get("variant")
    if variant == CODE and last.get("content") != CODE_SUFFIX:
        return None
    if variant == ASSISTANT:
        return _text_line(ASSISTANT, "", last.get("id"))
    return lines_of(hint(status=status))[0]
