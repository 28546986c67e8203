"""The tool registry: tools named by import strings in the configuration."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping

from .base import Tool


class ToolConfigError(Exception):
    """A configured tool cannot be loaded."""


def load_tools(specs: list[str]) -> dict[str, Tool]:
    """Instantiate `package.module:factory` (a Tool class or a function returning one) for each spec."""
    tools: dict[str, Tool] = {}
    for spec in specs:
        module_name, _, attribute = spec.partition(":")
        if not module_name or not attribute:
            raise ToolConfigError(f"A tool must be given as 'package.module:factory', not {spec!r}.")
        try:
            factory = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as err:
            raise ToolConfigError(f"Cannot load the tool {spec!r}: {err}") from err
        tool = factory()
        if not isinstance(tool, Tool):
            raise ToolConfigError(f"{spec!r} did not make a tool (name, description, parameters, run, ...).")
        if tool.name in tools:
            raise ToolConfigError(f"Two tools are named {tool.name!r}.")
        tools[tool.name] = tool
    return tools


class ToolRegistry(Mapping[str, Tool]):
    """The built-in and configured tools, then those that `more` gives now (the MCP servers that answer).

    Read it once per turn (`dict(registry)`): what `more` gives changes while the server runs.
    """

    def __init__(self, tools: Mapping[str, Tool], more: Callable[[], Mapping[str, Tool]]) -> None:
        self._tools = dict(tools)
        self._more = more

    def __getitem__(self, name: str) -> Tool:
        tool = self._tools.get(name)
        return tool if tool is not None else self._more()[name]

    def __iter__(self) -> Iterator[str]:
        yield from self._tools
        yield from (name for name in self._more() if name not in self._tools)

    def __len__(self) -> int:
        return len(self._tools) + sum(name not in self._tools for name in self._more())
