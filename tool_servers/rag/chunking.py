"""Splits one documentation file into retrievable chunks: Markdown on headings then paragraphs, plain text on
paragraphs, JSONL worked examples one line each. Pure functions of the text: no index, no files read here."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# What the index reads; anything else in a library folder is left alone.
SUFFIXES = (".md", ".markdown", ".txt", ".jsonl")
# Saved with the cached chunks: change it when a change here must re-chunk files that did not change.
CHUNKING_VERSION = 1
# A chunk's text stays under this unless one paragraph alone is longer: six of them fit the answer's budget.
MAX_CHUNK_CHARS = 1200

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")


@dataclass(frozen=True)
class Chunk:
    """One passage: where it comes from (`source` is `<root>/<library>/<file>`), the headings above it, its text.

    `kind` is "text" or "example" (a worked example from a JSONL file)."""

    source: str
    heading: tuple[str, ...]
    text: str
    kind: str = "text"

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "heading": list(self.heading), "text": self.text, "kind": self.kind}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Chunk:
        return cls(data["source"], tuple(data["heading"]), data["text"], data["kind"])


def chunk_file(source: str, suffix: str, text: str) -> list[Chunk]:
    """The chunks of one file's text; `suffix` (one of SUFFIXES) decides how it is read."""
    if suffix == ".jsonl":
        return _examples(source, text)
    sections = _sections(text) if suffix in (".md", ".markdown") else [((), text.splitlines())]
    return [Chunk(source, heading, body) for heading, lines in sections for body in _pack(_paragraphs(lines)) if body]


def _sections(text: str) -> list[tuple[tuple[str, ...], list[str]]]:
    """Markdown split at its headings (never inside a fenced code block), each body with its heading trail."""
    sections: list[tuple[tuple[str, ...], list[str]]] = []
    trail: list[tuple[int, str]] = []
    body: list[str] = []
    fence = ""
    for line in text.splitlines():
        was, fence = fence, _track_fence(line, fence)
        heading = None if was or fence else _HEADING.match(line)
        if heading is None:
            body.append(line)
            continue
        sections.append((tuple(title for _, title in trail), body))
        level = len(heading.group(1))
        trail = [(lvl, title) for lvl, title in trail if lvl < level]
        trail.append((level, heading.group(2)))
        body = []
    sections.append((tuple(title for _, title in trail), body))
    return sections


def _track_fence(line: str, fence: str) -> str:
    """The fence open after `line` ("" outside code): three or more backticks or tildes open one, a run of the
    same character at least as long closes it."""
    if not fence:
        opened = _FENCE.match(line)
        return opened.group(1) if opened else ""
    return "" if line.strip().startswith(fence) else fence


def _paragraphs(lines: list[str]) -> list[str]:
    """Blocks separated by blank lines; a fenced code block stays one block, blank lines and all."""
    blocks: list[str] = []
    current: list[str] = []
    fence = ""
    for line in lines:
        fence = _track_fence(line, fence)
        if not line.strip() and not fence:
            if current:
                blocks.append("\n".join(current))
            current = []
        else:
            current.append(line.rstrip())
    if current:
        blocks.append("\n".join(current))
    return blocks


def _pack(blocks: list[str]) -> list[str]:
    """Consecutive blocks joined while they fit MAX_CHUNK_CHARS; a longer block is cut at line ends."""
    chunks: list[str] = []
    current = ""
    for piece in (piece for block in blocks for piece in _cut(block)):
        if current and len(current) + 2 + len(piece) > MAX_CHUNK_CHARS:
            chunks.append(current)
            current = piece
        else:
            current = f"{current}\n\n{piece}" if current else piece
    if current:
        chunks.append(current)
    return chunks


def _cut(block: str) -> list[str]:
    if len(block) <= MAX_CHUNK_CHARS:
        return [block]
    pieces: list[str] = []
    current = ""
    for line in block.splitlines():
        if current and len(current) + 1 + len(line) > MAX_CHUNK_CHARS:
            pieces.append(current)
            current = line
        else:
            current = f"{current}\n{line}" if current else line
    pieces.append(current)
    return pieces


def _examples(source: str, text: str) -> list[Chunk]:
    """One chunk per `{"question", "answer", "code"}` line, shown as a worked example."""
    chunks = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("question"), str):
            log.warning("%s line %d is not a {question, answer, code} object: skipped", source, number)
            continue
        parts = [f"Question: {row['question'].strip()}"]
        if row.get("answer"):
            parts.append(f"Answer: {str(row['answer']).strip()}")
        if row.get("code"):
            parts.append(f"```python\n{str(row['code']).strip()}\n```")
        chunks.append(Chunk(source, ("Worked example", row["question"].strip()), "\n".join(parts), "example"))
    return chunks
