"""The tool registry: tools named by import strings in the configuration."""

from __future__ import annotations

import importlib

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
