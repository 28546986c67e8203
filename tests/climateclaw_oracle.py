"""climateclaw-client's way of reading a stream, as a test oracle applied to every stream the tests see.

jupyter-climateclaw streams through climateclaw-client 0.2.3: `StreamResponse._process_chunks` scans each network
read for balanced `{...}` objects (not lines) and `StreamConversation.process_chunk` turns each object into
Markdown, rendering a `Code` run as a Python block only in the canonical form of API.md. Both are the real
client's code, run in-process on the body the test received; the only stand-in is the `None` that
`StreamConversation` is constructed with, because `process_chunk` never reads its stream.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from itertools import accumulate
from typing import Any

from climateclaw_client._streaming import StreamResponse
from climateclaw_client.models import Conversation, MessageModel, StreamConversation

CODE_OPEN = "\n\n```python\n"
CODE_CLOSE = "\n```\n\n"
FENCE = "```"
# The parser rescans a partial object from its start on every read, so 7-byte reads of a long line (an image)
# cost its length squared; such a line is cut into this many pieces instead.
PIECES_PER_LONG_LINE = 64


def _small_chunks(text: str) -> list[str]:
    """7-character reads (a long line in PIECES_PER_LONG_LINE reads), cutting escapes, keys and line ends."""
    ends = list(accumulate(len(line) for line in text.splitlines(keepends=True)))
    chunks: list[str] = []
    pos = 0
    while pos < len(text):
        k = bisect_right(ends, pos)
        start = ends[k - 1] if k else 0
        step = max(7, (ends[k] - start) // PIECES_PER_LONG_LINE)
        chunks.append(text[pos : pos + step])
        pos += step
    return chunks


def _parse(chunks: list[str], how: str, objects: list[dict[str, Any]]) -> None:
    """The parser, fed `chunks` one read at a time, yields exactly `objects` and holds nothing back."""
    parsed: list[dict[str, Any]] = []
    remaining = ""
    for chunk in chunks:
        try:
            found, remaining = StreamResponse._process_chunks(chunk, remaining)
        except Exception as error:
            raise AssertionError(f"climateclaw-client's parser failed ({how}) on {chunk!r}: {error!r}") from error
        parsed += found
    for i, (got, line) in enumerate(zip(parsed, objects, strict=False)):
        assert got == line, f"climateclaw-client read line {i} ({how}) as {got!r}, not {line!r}"
    assert len(parsed) == len(objects), f"climateclaw-client read {len(parsed)} of {len(objects)} lines ({how})"
    assert remaining == "", f"climateclaw-client holds back ({how}): {remaining[:300]!r}"


def _check_code_run(arguments: str, markdown: str) -> None:
    """One Code run renders as exactly one closed Python block holding its code."""
    where = f"the Code run {arguments[:300]!r} renders as {markdown[:300]!r}"
    assert markdown.startswith(CODE_OPEN) and markdown.endswith(CODE_CLOSE), where
    assert len(markdown) >= len(CODE_OPEN) + len(CODE_CLOSE), where
    inner = markdown[len(CODE_OPEN) : -len(CODE_CLOSE)]
    try:
        code = json.loads(arguments)["code"]
    except (ValueError, KeyError, TypeError) as error:
        raise AssertionError(f"the Code run {arguments[:300]!r} is not {{'code': ...}} JSON: {error!r}") from error
    assert inner.count(FENCE) == code.count(FENCE), where
    # The client unescapes only a few sequences (not `\\uXXXX`), one fragment at a time, so only code without a
    # backslash or a control character other than a line end or tab renders exactly.
    if "\\" not in code and all(c >= " " or c in "\n\r\t" for c in code):
        assert inner == code, where


def _code_runs(objects: list[dict[str, Any]]) -> list[list[int]]:
    """The indices of each run of adjacent Code lines of one id."""
    runs: list[list[int]] = []
    for i, obj in enumerate(objects):
        if obj["variant"] != "Code":
            continue
        previous = objects[i - 1] if i else {}
        if previous.get("variant") == "Code" and previous.get("id") == obj.get("id"):
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def render_in_climateclaw(body: bytes) -> list[tuple[str, str]]:
    """(variant, Markdown) as the client renders `body`; asserts it reads every line and closes every Code block.

    A stream with ToolCall/ToolOutput lines (show_tools=true) is not checked and renders as []: those variants
    are not in the client's list, so it cannot read such a stream at all (API.md streams them only on request).
    """
    text = body.decode("ascii")
    lines = text.split("\n")[:-1]
    objects = [json.loads(line) for line in lines]
    if any(obj["variant"] in ("ToolCall", "ToolOutput") for obj in objects):
        return []
    _parse([text], "the whole body in one read", objects)
    _parse([line + "\n" for line in lines], "one read per line", objects)
    _parse(_small_chunks(text), "7-byte reads", objects)

    stream = StreamConversation(None)
    rendered: list[tuple[str, str]] = []
    markdown_of: list[str] = []  # per line, the Markdown its Code fragment produced
    for i, obj in enumerate(objects):
        try:
            variants, markdown = stream.process_chunk(MessageModel(message=obj))
        except Exception as error:
            raise AssertionError(f"climateclaw-client failed to render line {i} {obj!r}: {error!r}") from error
        # A Code fragment lists its variant even when it produced no Markdown yet, always last.
        pairs = list(zip(variants, markdown, strict=False))
        rendered += pairs
        markdown_of.append("".join(md for variant, md in pairs if variant == "Code"))

    codes: list[str] = []
    for run in _code_runs(objects):
        arguments = "".join(objects[i]["content"] for i in run)
        _check_code_run(arguments, "".join(markdown_of[i] for i in run))
        codes.append(json.loads(arguments)["code"])

    # The non-streamed path: the whole conversation at once, merged by the client.
    try:
        conversation = Conversation(raw_messages=[MessageModel(message=obj) for obj in objects])
        cells = [(m.variant, cell) for m in conversation.messages for cell in m.code_cells]
        all_cells = conversation.code_cells
    except Exception as error:
        raise AssertionError(f"climateclaw-client cannot read the stream as a Conversation: {error!r}") from error
    assert [cell for variant, cell in cells if variant == "Code"] == codes, (cells, codes)
    assert all_cells == [cell for _, cell in cells]
    return rendered
