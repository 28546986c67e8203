"""Tools that tests register through `c.FrevaGPT.tools` (a configuration seam, not a monkeypatch)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator
from typing import Any

from freva_gpt_ext.tools.base import ToolContext
from freva_gpt_ext.variants import CODE_ERROR, CODE_OUTPUT, TOOL_OUTPUT, Variant


class _TestTool:
    name = ""
    description = ""
    parameters: dict[str, Any] = {"type": "object", "properties": {}}
    closed_threads: list[str] = []
    cancelled: list[str] = []

    async def close_thread(self, thread_id: str, scope: str = "") -> None:
        self.closed_threads.append(thread_id)

    async def aclose(self) -> None:
        pass


class EchoTool(_TestTool):
    name = "echo"
    description = "Repeat the arguments."
    parameters = {"type": "object", "properties": {"text": {"type": "string"}}}

    async def run(self, call_id: str, arguments: dict[str, Any], ctx: ToolContext) -> AsyncIterator[Variant]:
        yield Variant(TOOL_OUTPUT, f"echo: {json.dumps(arguments, sort_keys=True)}", id=call_id, tool_name=self.name)


class SleepTool(_TestTool):
    """Sleeps `seconds`, beating its heart; records when it was cancelled."""

    name = "sleep"
    description = "Wait."
    parameters = {"type": "object", "properties": {"seconds": {"type": "number"}}}

    async def run(self, call_id: str, arguments: dict[str, Any], ctx: ToolContext) -> AsyncIterator[Variant]:
        try:
            await asyncio.sleep(float(arguments.get("seconds", 1)))
        except asyncio.CancelledError:
            SleepTool.cancelled.append(call_id)
            raise
        yield Variant(TOOL_OUTPUT, "slept", id=call_id, tool_name=self.name)


class BrokenTool(_TestTool):
    name = "broken"
    description = "Fails."

    async def run(self, call_id: str, arguments: dict[str, Any], ctx: ToolContext) -> AsyncIterator[Variant]:
        raise RuntimeError("the disk is on fire")
        yield  # pragma: no cover


class InProcessPython(_TestTool):
    """A stand-in `code_interpreter` (the kernel tool is not under test here): exec in this process."""

    name = "code_interpreter"
    description = "Run Python code."
    parameters = {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}

    async def run(self, call_id: str, arguments: dict[str, Any], ctx: ToolContext) -> AsyncIterator[Variant]:
        out = io.StringIO()
        error = None
        try:
            with contextlib.redirect_stdout(out):
                exec(arguments["code"], {})
        except Exception as err:
            error = f"{type(err).__name__}: {err}"
        yield Variant(CODE_OUTPUT, out.getvalue() + (error or ""), id=call_id)
        if error:
            yield Variant(CODE_ERROR, error, id=call_id)


class SwallowTool(_TestTool):
    """A careless third-party tool: it swallows the first cancellation and goes on (the second one ends it)."""

    name = "swallow"
    description = "Wait, whatever happens."
    started: list[str] = []

    async def run(self, call_id: str, arguments: dict[str, Any], ctx: ToolContext) -> AsyncIterator[Variant]:
        SwallowTool.started.append(call_id)
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            SwallowTool.cancelled.append(call_id)
        await asyncio.sleep(60)
        yield Variant(TOOL_OUTPUT, "waited", id=call_id, tool_name=self.name)
