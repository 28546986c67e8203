"""The tool seam: what the turn engine needs of anything the LLM may call."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..variants import Variant


@dataclass(slots=True)
class ToolContext:
    """What a tool may know about the turn that calls it.

    A tool reports what it is doing by yielding `hint(status=...)` (e.g. "waiting_for_kernel"): the turn keeps
    the stream alive with that status while the tool works.
    """

    thread_id: str
    owner: str
    # Which store holds the thread ("" the server's store, "memory" for `store_thread=false`): what a tool
    # keeps per thread is keyed by (scope, thread_id), so one id in two stores never shares a kernel.
    scope: str = ""
    vision: bool = False
    # The kernel the user chose for this turn (their notebook's), if any; `kernel_id` wins over the notebook.
    kernel_id: str | None = None
    notebook_path: str | None = None
    # Request headers set by a trusted proxy (empty unless the server trusts proxy headers).
    headers: Mapping[str, str] = field(default_factory=dict)
    # The Freva bearer token of a standalone request (never a Jupyter token), for MCP servers marked
    # `forward_token`; kept out of reprs and logs.
    bearer_token: str | None = field(default=None, repr=False)
    # The thread before this turn (e.g. to replay its code in a fresh kernel).
    history: list[Variant] = field(default_factory=list)
    # Code before this index of `history` came with a fork of another user's thread: never replayed.
    replay_from: int = 0


@runtime_checkable
class Tool(Protocol):
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments object

    def run(self, call_id: str, arguments: dict[str, Any], ctx: ToolContext) -> AsyncIterator[Variant]:
        """Yield the variants of the result (`CodeOutput`/`Image`/`CodeError` or `ToolOutput`).

        Must honour cancellation (a stopped turn cancels the task iterating it).
        """

    async def close_thread(self, thread_id: str, scope: str = "") -> None:
        """Release what the tool holds for a deleted stored thread (e.g. its kernel); `scope` as in ToolContext."""

    async def aclose(self) -> None: ...


def openai_function(tool: Tool) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters},
    }
