"""The MCP server: one tool, `get_context_from_resources(question, resources_to_retrieve_from)` — the upstream
FrevaGPT's name and parameters, so its prompts keep working — answering with the best passages of the
documentation libraries and where each comes from."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from .index import Hit, ResourceIndex

TOOL_NAME = "get_context_from_resources"
ALL = "all"
# The answer's bounds: enough passages to cover a question, few enough to leave the model room for the rest.
MAX_PASSAGES = 6
MAX_ANSWER_CHARS = 8000


def build_server(resources: Sequence[Path], cache_dir: Path) -> MCPServer:
    """A server over the libraries under `resources`, indexed now (cached under `cache_dir`) and re-indexed
    whenever a call finds a file changed. Indexing reads files: call this off the event loop."""
    index = ResourceIndex(resources, cache_dir)
    index.refresh()
    # MCPServer() calls logging.basicConfig on the root logger: not its call to make inside a host process
    # (the extension runs this server in-process). The command line configures logging itself.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    server = MCPServer(
        "freva-gpt-rag",
        instructions="Documentation retrieval for FrevaGPT: passages from the Freva and climate-analysis libraries.",
    )
    root.handlers[:], root.level = handlers, level
    _Retrieval(server, index).register()
    return server


class _Retrieval:
    """The tool and its registration: its description names the libraries, so a call that finds them changed
    registers it again."""

    def __init__(self, server: MCPServer, index: ResourceIndex) -> None:
        self.server = server
        self.index = index
        self.described: list[str] | None = None

    def register(self) -> None:
        if self.described is not None:
            self.server.remove_tool(TOOL_NAME)
        self.described = self.index.libraries
        self.server.add_tool(
            self.get_context_from_resources,
            name=TOOL_NAME,
            description=describe(self.described),
            structured_output=False,
        )

    def get_context_from_resources(
        self,
        question: Annotated[str, Field(description="The user's question, or what you need to look up.")],
        resources_to_retrieve_from: Annotated[
            str, Field(description=f"The library to search, one of the libraries listed above, or '{ALL}'.")
        ],
    ) -> str:
        if self.index.refresh().changed and self.index.libraries != self.described:
            self.register()
        return answer(self.index, question, resources_to_retrieve_from)


def describe(libraries: Sequence[str]) -> str:
    listed = ", ".join(f"'{name}'" for name in libraries) or "none yet"
    return (
        "Search documentation and worked examples for passages that answer a question, e.g. how to find and "
        "load data with Freva or how to compute a climate statistic. Returns the best passages, each with its "
        "source file and section so you can cite it. "
        f"Libraries: {listed}; pass one of them, or '{ALL}' to search every library."
    )


def answer(index: ResourceIndex, question: str, library: str) -> str:
    """The text the tool returns: numbered passages with their sources, within MAX_ANSWER_CHARS, or a plain
    sentence when nothing matches. A question or library the index cannot serve raises ToolError."""
    question = question.strip()
    if not question:
        raise ToolError("The question is empty: say what you want to find in the documentation.")
    chosen = library.strip().lower()
    known = {name.lower(): name for name in index.libraries}
    if chosen != ALL and chosen not in known:
        choices = ", ".join(f"'{name}'" for name in index.libraries) or "none"
        raise ToolError(f"Unknown library '{library}'. Libraries: {choices}; or '{ALL}' for every library.")
    scope = None if chosen == ALL else known[chosen]
    hits = index.search(question, scope, MAX_PASSAGES)
    where = "any library" if scope is None else f"the library '{scope}'"
    echoed = question if len(question) <= 200 else question[:200] + "…"
    if not hits:
        return (
            f"Nothing found in {where} for: {echoed}\n"
            "No passage shares a word with the question. Try other words (a function, facet or variable name), "
            f"or '{ALL}'."
        )
    header = f"Passages from {where} for: {echoed}\nCite the source of what you use.\n"
    blocks: list[str] = []
    room = MAX_ANSWER_CHARS - len(header)
    for hit in hits:
        block = _passage(len(blocks) + 1, hit)
        if len(block) + 2 > room:
            if blocks:
                continue
            block = block[: room - 16].rstrip() + "\n[… truncated]"
        blocks.append(block)
        room -= len(block) + 2
    return header + "\n" + "\n\n".join(blocks)


def _passage(number: int, hit: Hit) -> str:
    chunk = hit.chunk
    if chunk.kind == "example":
        return f"[{number}] Worked example, {chunk.source}\n{chunk.text}"
    section = f" — {' > '.join(chunk.heading)}" if chunk.heading else ""
    return f"[{number}] {chunk.source}{section}\n{chunk.text}"
