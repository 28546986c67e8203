"""The `mcp_servers` setting: one entry per MCP server, checked before anything connects."""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..redact import safe_url

NAME_RE = re.compile(r"[a-zA-Z0-9_-]{1,64}")  # what OpenAI-style function names allow; use with fullmatch
DEFAULT_TIMEOUT = 30.0
_KEYS = {"name", "url", "command", "args", "env", "headers", "forward_token", "timeout", "per_user"}


class McpConfigError(ValueError):
    """An `mcp_servers` entry that cannot be used, with what is wrong with it."""


@dataclass(frozen=True, slots=True)
class McpServerConfig:
    """One MCP server: streamable HTTP at `url`, or a stdio process `command args` (with `env` besides the
    allow-listed environment)."""

    name: str
    url: str = field(default="", repr=False)  # may hold credentials: `where` shows it without them
    command: str = ""
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    # The Freva bearer token of a standalone request goes with each call (HTTP servers only).
    forward_token: bool = False
    timeout: float = DEFAULT_TIMEOUT
    # stdio: one process per user instead of one for everybody.
    per_user: bool = False

    @property
    def where(self) -> str:
        """The server as the log and the doctor show it: its URL without credentials, or its command."""
        return safe_url(self.url) if self.url else shlex.join([self.command, *self.args])


def parse_mcp_servers(entries: Any) -> list[McpServerConfig]:
    """The servers of an `mcp_servers` value (a JSON list of objects), in order; McpConfigError names the first
    entry that is wrong and why."""
    if not isinstance(entries, list):
        raise McpConfigError("mcp_servers must be a list of objects.")
    servers: list[McpServerConfig] = []
    for position, entry in enumerate(entries):
        server = _entry(entry, position)
        if any(s.name == server.name for s in servers):
            raise McpConfigError(f"mcp_servers: two servers are named {server.name!r}.")
        servers.append(server)
    return servers


def _entry(entry: Any, position: int) -> McpServerConfig:
    label = f"mcp_servers[{position}]"
    if not isinstance(entry, dict):
        raise McpConfigError(f"{label} must be an object with a name and a url or a command.")
    name = entry.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise McpConfigError(f"{label}: 'name' must be 1 to 64 letters, digits, '_' or '-', not {name!r}.")
    label = f"mcp_servers[{position}] ({name})"
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise McpConfigError(f"{label}: unknown keys {', '.join(unknown)}; known: {', '.join(sorted(_KEYS))}.")
    url, command = entry.get("url"), entry.get("command")
    if bool(url) == bool(command):
        raise McpConfigError(f"{label}: give either 'url' (streamable HTTP) or 'command' (stdio), not both or neither.")
    if url is not None and not (isinstance(url, str) and _http_url(url)):
        raise McpConfigError(f"{label}: 'url' must be an http:// or https:// URL.")
    if command is not None and not isinstance(command, str):
        raise McpConfigError(f"{label}: 'command' must be a string (its arguments go into 'args').")
    args = entry.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise McpConfigError(f"{label}: 'args' must be a list of strings.")
    env = _strings(entry, "env", label)
    headers = _strings(entry, "headers", label)
    flags = {key: entry.get(key, False) for key in ("forward_token", "per_user")}
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise McpConfigError(f"{label}: '{key}' must be true or false.")
    timeout = entry.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not (0 < timeout < math.inf):
        raise McpConfigError(f"{label}: 'timeout' must be a number of seconds above 0.")
    if url:
        if env or args:
            raise McpConfigError(f"{label}: 'args' and 'env' belong to stdio servers ('command').")
        if flags["per_user"]:
            raise McpConfigError(f"{label}: 'per_user' applies to stdio servers ('command') only.")
    elif headers or flags["forward_token"]:
        # A process has no request headers: a token would have to go into its environment, for every user.
        raise McpConfigError(f"{label}: 'headers' and 'forward_token' apply to HTTP servers ('url') only.")
    return McpServerConfig(
        name=name,
        url=url or "",
        command=command or "",
        args=tuple(args),
        env=env,
        headers=headers,
        forward_token=flags["forward_token"],
        timeout=float(timeout),
        per_user=flags["per_user"],
    )


def _http_url(url: str) -> bool:
    """An http(s) URL with a host, and a port that is a number if it has one."""
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0
    except ValueError:  # the port, or an IPv6 address
        return False


def _strings(entry: dict[str, Any], key: str, label: str) -> dict[str, str]:
    value = entry.get(key, {})
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise McpConfigError(f"{label}: '{key}' must be an object of strings.")
    return dict(value)
