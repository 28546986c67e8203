"""What one kernel execution printed and showed, as the text of a `CodeOutput` plus its PNG images.

Every IOPub message of the execution goes through `OutputCollector.add`, in arrival order: the text keeps
the order in which a notebook would show it (stdout, results, stderr and errors interleaved). Rich outputs
become text (HTML tables, JSON, Markdown, ...); nothing a kernel sends may raise here.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from typing import Any

# CSI sequences (colours, cursor moves), OSC sequences (titles, links) and two-character escapes.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]")
# Text forms of rich outputs, best first; text/plain wins because libraries write it for the console.
_TEXT_MIMES = ("text/plain", "text/markdown", "text/html", "application/json", "text/latex")
INTERRUPTED = "KeyboardInterrupt"
# Python's default repr, which libraries leave as the text/plain of objects they render richly.
_DEFAULT_REPR = re.compile(r"^<[\w.]+ object(?: at 0x[0-9a-fA-F]+)?>$")
# The text/plain a figure's bundle carries beside its PNG (`<Figure size 640x480 with 1 Axes>`): the PNG is
# the output; the stored text stays empty, and the LLM reads a note for each figure instead.
_PLACEHOLDER_REPR = re.compile(r"<[^<>\n]*>")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def collapse_carriage_returns(text: str) -> str:
    """Keep what a terminal would show of lines rewritten with `\\r` (progress bars)."""
    if "\r" not in text:
        return text
    lines = []
    for line in text.split("\n"):
        line = line.rstrip("\r")
        lines.append(line.rsplit("\r", 1)[-1])
    return "\n".join(lines)


class _HTMLText(HTMLParser):
    """HTML as plain text: block elements on their own lines, table cells separated by ` | `."""

    _BLOCKS = frozenset(
        {"p", "div", "br", "tr", "li", "ul", "ol", "table", "thead", "tbody", "pre", "section", "hr"}
        | {f"h{i}" for i in range(1, 7)}
    )
    _HIDDEN = frozenset({"script", "style", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0
        self._cells = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self._hidden += 1
        elif tag == "tr":
            self._cells = 0
            self.parts.append("\n")
        elif tag in ("td", "th"):
            if self._cells:
                self.parts.append(" | ")
            self._cells += 1
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    parser = _HTMLText()
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # malformed markup: fall back to dropping the tags
        return re.sub(r"<[^>]*>", "", html).strip()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).split("\n"))
    return "\n".join(line for line in lines if line)


def _joined(value: Any) -> str:
    # nbformat allows multi-line strings as lists of lines
    if isinstance(value, list):
        return "".join(str(v) for v in value)
    return "" if value is None else str(value)


def rich_to_text(data: dict[str, Any]) -> str:
    """The text of a `display_data`/`execute_result` bundle (empty when it has only a PNG)."""
    plain = _joined(data.get("text/plain"))
    if "image/png" in data and _PLACEHOLDER_REPR.fullmatch(plain.strip()):
        data = {k: v for k, v in data.items() if k != "text/plain"}
    elif _DEFAULT_REPR.match(plain) and any(m in data for m in _TEXT_MIMES[1:]):
        # `<IPython.core.display.HTML object>` says nothing: the rich form does.
        data = {k: v for k, v in data.items() if k != "text/plain"}
    for mime in _TEXT_MIMES:
        if mime not in data:
            continue
        value = data[mime]
        if mime == "text/html":
            return html_to_text(_joined(value))
        if mime == "application/json":
            try:
                return json.dumps(value, ensure_ascii=False, default=str)
            except (TypeError, ValueError):
                return str(value)
        return _joined(value)
    others = [m for m in data if m != "image/png"]
    return f"[{others[0]} output]" if others else ""


class BoundedText:
    """Text that keeps its first and last characters within `limit` (the end holds the errors)."""

    def __init__(self, limit: int) -> None:
        self.limit = max(200, limit)
        self._head: list[str] = []
        self._head_len = 0
        self._tail: list[str] = []
        self._tail_len = 0
        self.dropped = 0
        self.last = ""

    def add(self, text: str) -> None:
        if not text:
            return
        self.last = text[-1]
        head_room = self.limit * 2 // 5 - self._head_len
        if head_room > 0 and not self._tail:
            self._head.append(text[:head_room])
            self._head_len += min(len(text), head_room)
            text = text[head_room:]
        if not text:
            return
        self._tail.append(text)
        self._tail_len += len(text)
        keep = self.limit - self.limit * 2 // 5
        if self._tail_len > 2 * keep:  # trim now and then, not on every write
            self._trim(keep)

    def _trim(self, keep: int) -> None:
        joined = "".join(self._tail)
        self.dropped += len(joined) - keep
        self._tail = [joined[-keep:]]
        self._tail_len = keep

    def text(self) -> str:
        keep = self.limit - self.limit * 2 // 5
        if self._tail_len > keep:
            self._trim(keep)
        head, tail = "".join(self._head), "".join(self._tail)
        if not self.dropped:
            return head + tail
        return f"{head}\n[... {self.dropped} characters of output left out ...]\n{tail}"


class OutputCollector:
    """The output of one execution: text in notebook order, PNG images (bare base64), and error names."""

    def __init__(self, limit: int, max_images: int = 20) -> None:
        self.limit = limit
        self.max_images = max_images
        self._text = BoundedText(limit)
        self._block_open = False  # the last part was a result/error without its own line end
        self.images: list[str] = []
        self.images_left_out = 0
        self.errors: list[str] = []  # exception names, in order (replay compares them)
        self.ignore_interrupt = False  # set when we interrupted: our KeyboardInterrupt is no output

    def _stream(self, text: str) -> None:
        if self._block_open and text:
            self._text.add("\n")
        self._block_open = False
        self._text.add(text)

    def _block(self, text: str) -> None:
        if not text:
            return
        if self._text.last not in ("", "\n"):
            self._text.add("\n")
        self._text.add(text)
        self._block_open = not text.endswith("\n")

    def _image(self, png: str) -> None:
        if len(self.images) < self.max_images:
            self.images.append("".join(png.split()))
        else:
            self.images_left_out += 1

    def add(self, msg: dict[str, Any]) -> None:
        """One IOPub message whose parent is this execution."""
        kind = msg.get("msg_type") or (msg.get("header") or {}).get("msg_type")
        content = msg.get("content") or {}
        if kind == "stream":
            self._stream(_joined(content.get("text")))
        elif kind in ("execute_result", "display_data", "update_display_data"):
            data = content.get("data") or {}
            if not isinstance(data, dict):
                return
            png = data.get("image/png")
            if isinstance(png, str) and png:
                self._image(png)
            self._block(rich_to_text(data))
        elif kind == "error":
            name = str(content.get("ename") or "Error")
            if name == INTERRUPTED and self.ignore_interrupt:
                return
            self.errors.append(name)
            traceback = content.get("traceback") or []
            text = "\n".join(strip_ansi(str(line)) for line in traceback if line is not None)
            self._block(text or f"{name}: {content.get('evalue', '')}")
        elif kind == "clear_output":
            # A notebook would clear the cell's output here (progress displays): keep what it would show.
            self._text = BoundedText(self.limit)
            self._block_open = False
            self.images.clear()
            self.images_left_out = 0

    def add_reply(self, reply: dict[str, Any] | None) -> None:
        """Pager output (`obj?`) comes in the execute reply's payload, not on IOPub."""
        if not reply:
            return
        for item in (reply.get("content") or {}).get("payload") or []:
            if isinstance(item, dict) and item.get("source") == "page":
                self._block(rich_to_text(item.get("data") or {}))

    def text(self) -> str:
        text = collapse_carriage_returns(strip_ansi(self._text.text()))
        if self.images_left_out:
            text += f"\n[{self.images_left_out} more images were left out]"
        return text
