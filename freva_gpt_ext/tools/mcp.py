"""MCP servers as tools: each configured server, and the built-in retrieval server in-process, through one
`mcp.Client`; their tools discovered in the background and offered to the LLM under names that stay put.

mcp 2.x negotiates the protocol by itself (`server/discover`, else the `initialize` handshake of older servers).
The current protocol is sessionless: one client serves every thread and user, and what a call needs goes with
it. A server that answers with the handshake keeps state per session, so over HTTP each thread gets a session of
its own there (closed when the thread is deleted, after `session_idle` unused, or when the extension stops). A
stdio server is one process: stateless, or one process per user with `per_user`.

Nothing here is on a request's path: discovery runs in the background, retries a server that does not answer
(from 1 s, doubling up to `refresh_interval`) and re-lists the tools of one that does every `refresh_interval`. A
turn offers the tools known when it starts; a call to a server that went away meanwhile answers the LLM with
what went wrong.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine, Generator, Mapping, Sequence
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx2
import mcp_types as types
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from ..variants import CODE_ERROR, CODE_OUTPUT, CODE_TOOL_NAME, IMAGE, TOOL_OUTPUT, Variant
from .base import Tool, ToolContext
from .kernel_env import kernel_environment
from .mcp_config import McpServerConfig

BUILTIN_NAME = "freva-gpt-rag"
SESSION_IDLE = 600.0
FIRST_RETRY = 1.0
STARTING, UP, DOWN = "starting", "up", "down"
_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")
_T = TypeVar("_T")

# The Freva bearer token of the call being made, for the HTTP requests of servers marked `forward_token`. The MCP
# transport sends each message in the context of the task that sent it, so the token reaches that call's
# requests and no others.
_FORWARDED_TOKEN: contextvars.ContextVar[str | None] = contextvars.ContextVar("freva_gpt_mcp_token", default=None)


class _ForwardToken(httpx2.Auth):
    def auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response, None]:
        token = _FORWARDED_TOKEN.get()
        if token:
            request.headers["Authorization"] = f"Bearer {token}"
        yield request


class McpCallError(Exception):
    """A call that got no result: the text says what happened, for the LLM."""


def sanitise(name: str) -> str:
    """A name the LLM's function calling accepts (`^[a-zA-Z0-9_-]{1,64}$`)."""
    return _UNSAFE.sub("_", name)[:64] or "tool"


def _reason(err: BaseException) -> str:
    # A transport that fails inside its task group raises a group: the first failure is the reason.
    while isinstance(err, BaseExceptionGroup) and err.exceptions:
        err = err.exceptions[0]
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


class _Held:
    """An entered `mcp.Client` held open by a task of its own: anyio's scopes must be left by the task that entered
    them, and calls come from the turns' tasks. The task ends when the client is closed or its transport fails."""

    def __init__(self, open_client: Callable[[AsyncExitStack], Awaitable[Client]]) -> None:
        self._closing = asyncio.Event()
        self._ready: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
        # Nobody may be waiting when opening fails; the failure is read here, not reported as never retrieved.
        self._ready.add_done_callback(lambda f: f.exception())
        self.used = time.monotonic()
        self.task = asyncio.ensure_future(self._hold(open_client))

    async def _hold(self, open_client: Callable[[AsyncExitStack], Awaitable[Client]]) -> None:
        try:
            async with AsyncExitStack() as stack:
                client = await open_client(stack)
                self._ready.set_result(client)
                await self._closing.wait()
        except Exception as err:
            if not self._ready.done():
                self._ready.set_exception(err)
        finally:
            if not self._ready.done():
                # Closed while opening: a waiting caller is told so, never cancelled itself.
                self._ready.set_exception(ConnectionError("the client was closed"))

    @property
    def alive(self) -> bool:
        return not self.task.done()

    async def client(self, timeout: float) -> Client:
        self.used = time.monotonic()
        # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancellation that meets a result.
        async with asyncio.timeout(timeout):
            return await asyncio.shield(self._ready)

    async def run(self, work: Coroutine[Any, Any, _T], timeout: float) -> _T:
        """`work` against this client, within `timeout` (TimeoutError); ConnectionError when the client's
        transport fails first (its requests would never be answered)."""
        call = asyncio.ensure_future(work)
        # A call given up on may still end in an error of its own: read here, never reported as unretrieved.
        call.add_done_callback(lambda t: t.cancelled() or t.exception())
        try:
            await asyncio.wait({call, self.task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Also when the turn is stopped: the SDK then abandons the request (the server is told to cancel it).
            call.cancel()
        if call.done() and not call.cancelled():
            return call.result()
        if not self.alive:
            raise ConnectionError("the connection to the server was lost")
        raise TimeoutError

    async def close(self) -> None:
        self._closing.set()
        if not self._ready.done():
            self.task.cancel()
        await asyncio.wait({self.task})


@dataclass(eq=False)
class McpTool:
    """One tool of an MCP server, as the LLM sees it: `name` may differ from the `declared` one (see McpTools)."""

    name: str
    description: str
    parameters: dict[str, Any]
    server: McpConnection
    declared: str

    async def run(self, call_id: str, arguments: dict[str, Any], ctx: ToolContext) -> AsyncIterator[Variant]:
        try:
            result = await self.server.call(self.declared, arguments, ctx)
        except McpCallError as err:
            text, images, failure = "", [], str(err)
        else:
            text, images = result_content(result)
            failure = f"The tool {self.name!r} reported an error." if result.is_error else None
        if self.name == CODE_TOOL_NAME:
            # The Code/CodeOutput contract of API.md, whoever runs the code.
            yield Variant(CODE_OUTPUT, text, id=call_id)
            if failure:
                yield Variant(CODE_ERROR, failure, id=call_id)
            for n, png in enumerate(images):
                yield Variant(IMAGE, png, id=f"{call_id}_{n}")
            return
        if failure:
            text = f"{failure}\n{text}".rstrip()
        yield Variant(TOOL_OUTPUT, text or "(The tool returned nothing.)", id=call_id, tool_name=self.name)
        for n, png in enumerate(images):
            yield Variant(IMAGE, png, id=f"{call_id}_{n}", tool_name=self.name)

    async def close_thread(self, thread_id: str, scope: str = "") -> None:
        await self.server.close_thread(thread_id, scope)

    async def aclose(self) -> None:
        """Its server is closed by McpTools."""


def result_content(result: types.CallToolResult) -> tuple[str, list[str]]:
    """The text of a tool result (structured content as JSON text when there is no text) and its PNG images."""
    texts: list[str] = []
    images: list[str] = []
    for item in result.content:
        if isinstance(item, types.TextContent):
            texts.append(item.text)
        elif isinstance(item, types.ImageContent) and item.mime_type == "image/png":
            images.append(item.data)
        elif isinstance(item, types.EmbeddedResource) and isinstance(item.resource, types.TextResourceContents):
            texts.append(item.resource.text)
        elif isinstance(item, types.ResourceLink):
            texts.append(f"[resource {item.uri}]")
        else:
            kind = getattr(item, "mime_type", None) or item.type
            texts.append(f"[{kind} content, not shown]")
    if not texts and result.structured_content is not None:
        texts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(texts), images


class McpConnection:
    """One MCP server: its client (one per thread or user where it needs that), its tools as last discovered and
    whether it answers now."""

    def __init__(
        self,
        config: McpServerConfig,
        *,
        on_change: Callable[[], None],
        refresh_interval: float,
        session_idle: float,
        log: logging.Logger | logging.LoggerAdapter[Any],
        in_process: Callable[[], MCPServer] | None = None,
    ) -> None:
        self.config = config
        self.state = STARTING
        self.problem = ""
        # As last discovered: kept while the server is down, so that the names of other servers' tools stay put.
        self.tools: list[types.Tool] = []
        # The names the LLM sees for `tools`, (offered, declared), decided by McpTools.
        self.names: list[tuple[str, str]] = []
        self.protocol = ""
        self.discovered = asyncio.Event()  # set once the first discovery has ended, either way
        self._on_change = on_change
        self._refresh = refresh_interval
        self._session_idle = session_idle
        self._log = log
        self._in_process = in_process
        self._server: MCPServer | None = None
        self._shared: _Held | None = None
        self._sessions: dict[tuple[str, ...], _Held] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def builtin(self) -> bool:
        return self._in_process is not None

    @property
    def where(self) -> str:
        return "in-process (built in)" if self.builtin else self.config.where

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._supervise())

    # -- discovery ----------------------------------------------------------------------------------------
    async def _supervise(self) -> None:
        delay = FIRST_RETRY
        timeout = self.config.timeout
        while True:
            held = self._shared = _Held(self._open)
            held.task.add_done_callback(lambda _: self._wake.set())
            try:
                client = await held.client(timeout)
                while True:
                    tools = await held.run(self._list_tools(client), timeout)
                    self._up(tools, client.protocol_version)
                    delay = FIRST_RETRY
                    self._wake.clear()
                    with suppress(TimeoutError):
                        async with asyncio.timeout(self._refresh):
                            await self._wake.wait()
                    await self._close_idle()
            except Exception as err:
                self._down(f"no answer within {timeout:g} s" if isinstance(err, TimeoutError) else _reason(err))
            self._shared = None
            await held.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._refresh)

    async def _open(self, stack: AsyncExitStack) -> Client:
        config = self.config
        target: MCPServer | StdioServerParameters | Any
        if self._in_process is not None:
            if self._server is None:
                # Indexing reads files: off the event loop.
                self._server = await asyncio.to_thread(self._in_process)
            target = self._server
        elif config.url:
            http = httpx2.AsyncClient(
                headers=dict(config.headers),
                # No read timeout: each call has its own, and a read timeout would fail the whole transport.
                timeout=httpx2.Timeout(config.timeout, read=None),
                auth=_ForwardToken() if config.forward_token else None,
            )
            await stack.enter_async_context(http)
            target = streamable_http_client(config.url, http_client=http)
        else:
            # Never the server's own environment (keys, FREVAGPT_*): the kernels' allow-list, then its own `env`.
            env = {**kernel_environment(os.environ), **config.env}
            target = StdioServerParameters(command=config.command, args=list(config.args), env=env)
        return await stack.enter_async_context(Client(target))

    @staticmethod
    async def _list_tools(client: Client) -> list[types.Tool]:
        tools: list[types.Tool] = []
        cursor: str | None = None
        for _ in range(100):  # a server whose pages never end cannot hold discovery
            page = await client.list_tools(cursor=cursor, cache_mode="refresh")
            tools += page.tools
            cursor = page.next_cursor
            if cursor is None:
                break
        return tools

    def _up(self, tools: list[types.Tool], protocol: str) -> None:
        changed = self.state != UP or tools != self.tools
        if self.state != UP:
            names = ", ".join(t.name for t in tools) or "none"
            self._log.info("MCP server %r (%s) answers; its tools: %s", self.config.name, self.where, names)
        self.state, self.problem, self.tools, self.protocol = UP, "", tools, protocol
        self.discovered.set()
        if changed:
            self._on_change()

    def _down(self, problem: str) -> None:
        if self.state != DOWN:
            # Once per outage; the retries are quiet until it answers again.
            self._log.warning(
                "MCP server %r (%s) does not answer (%s): its tools are left out until it does; trying again in "
                "the background.",
                self.config.name,
                self.where,
                problem,
            )
        was_up = self.state == UP
        self.state, self.problem = DOWN, problem
        self.discovered.set()
        if was_up:
            self._on_change()

    # -- calls --------------------------------------------------------------------------------------------
    def _session_key(self, ctx: ToolContext) -> tuple[str, ...] | None:
        if self.config.per_user:
            return ("user", ctx.owner)
        if self.config.url and self.protocol in HANDSHAKE_PROTOCOL_VERSIONS:
            return ("thread", ctx.scope, ctx.thread_id)
        return None

    def _held_for(self, ctx: ToolContext) -> _Held | None:
        if self.state != UP or self._shared is None:
            return None
        key = self._session_key(ctx)
        if key is None:
            return self._shared
        held = self._sessions.get(key)
        if held is None or not held.alive:
            held = self._sessions[key] = _Held(self._open)
        return held

    async def call(self, tool: str, arguments: dict[str, Any], ctx: ToolContext) -> types.CallToolResult:
        """The result of `tool`; McpCallError, with the text for the LLM, when there is none."""
        name, timeout = self.config.name, self.config.timeout
        unreachable = f"The MCP server {name!r} cannot be reached ({{}}); its tool {tool!r} did not run."
        # Before the token is set: a session's own requests (its handshake) never carry a user's token.
        held = self._held_for(ctx)
        if held is None:
            raise McpCallError(unreachable.format(self.problem or "it is not connected"))
        try:
            client = await held.client(timeout)
        except Exception as err:
            raise McpCallError(unreachable.format(_reason(err))) from err
        forwarded = _FORWARDED_TOKEN.set(ctx.bearer_token if self.config.forward_token else None)
        try:
            return await held.run(client.call_tool(tool, arguments), timeout)
        except TimeoutError as err:
            raise McpCallError(
                f"The tool {tool!r} of the MCP server {name!r} gave no result within {timeout:g} s; the call was "
                "cancelled."
            ) from err
        except MCPError as err:
            if err.code == types.CONNECTION_CLOSED:
                self._wake.set()
                raise McpCallError(unreachable.format(_reason(err))) from err
            raise McpCallError(f"The MCP server {name!r} refused the call of {tool!r}: {err}") from err
        except Exception as err:
            # Whether the server is still there is for discovery to find out, now.
            self._wake.set()
            raise McpCallError(unreachable.format(_reason(err))) from err
        finally:
            _FORWARDED_TOKEN.reset(forwarded)

    # -- sessions -----------------------------------------------------------------------------------------
    async def close_thread(self, thread_id: str, scope: str = "") -> None:
        await self._close_sessions([k for k in self._sessions if k == ("thread", scope, thread_id)])

    async def _close_idle(self) -> None:
        limit = time.monotonic() - self._session_idle
        await self._close_sessions([k for k, h in self._sessions.items() if h.used < limit or not h.alive])

    async def _close_sessions(self, keys: Sequence[tuple[str, ...]]) -> None:
        for key in keys:
            held = self._sessions.pop(key, None)
            if held is not None:
                await held.close()

    @property
    def sessions(self) -> int:
        """How many sessions of its own threads or users hold (besides the shared client)."""
        return sum(held.alive for held in self._sessions.values())

    async def aclose(self) -> None:
        task = self._task
        while task is not None and not task.done():
            # Again if need be: SDK code on its way may swallow a cancellation that meets a result.
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
        await self._close_sessions(list(self._sessions))
        if self._shared is not None:
            await self._shared.close()
            self._shared = None


@dataclass(frozen=True)
class ServerStatus:
    """What `jupyter freva-gpt doctor` shows of one server."""

    name: str
    where: str
    state: str
    problem: str
    tools: list[tuple[str, str]] = field(default_factory=list)  # (offered name, declared name)


class McpTools:
    """The MCP servers of `mcp_servers` in their order, then the built-in retrieval server; the tools they offer now.

    Names: a tool keeps its declared name (made safe for function calling) unless a tool of `reserved` (the
    built-in and configured tools) or of an earlier server has it; then it is `<server>__<tool>`. A server's
    tools, once discovered, keep their names while it is down, so that names never depend on which server
    answered first. The built-in server's tools step aside for a configured server that provides a tool of the
    same name, and stand in for it while that server is down.
    """

    def __init__(
        self,
        servers: Sequence[McpServerConfig],
        *,
        reserved: Collection[str],
        builtin: Callable[[], MCPServer] | None,
        refresh_interval: float,
        log: logging.Logger | logging.LoggerAdapter[Any],
        session_idle: float = SESSION_IDLE,
    ) -> None:
        self._reserved = frozenset(reserved)
        self._log = log
        self._offered: dict[str, Tool] = {}
        self._unnamed: set[tuple[str, str]] = set()

        def connection(config: McpServerConfig, in_process: Callable[[], MCPServer] | None = None) -> McpConnection:
            return McpConnection(
                config,
                on_change=self._rebuild,
                refresh_interval=refresh_interval,
                session_idle=session_idle,
                log=log,
                in_process=in_process,
            )

        self.connections = [connection(config) for config in servers]
        if builtin is not None:
            self.connections.append(connection(McpServerConfig(name=BUILTIN_NAME), builtin))

    @property
    def offered(self) -> Mapping[str, Tool]:
        """The tools of the servers that answer, by the names the LLM sees (replaced, never changed in place)."""
        return self._offered

    def start(self) -> None:
        for connection in self.connections:
            connection.start()

    async def discovered(self, timeout: float) -> None:
        """Wait until every server has answered or failed once (the doctor; the server never waits)."""
        waits = [asyncio.ensure_future(c.discovered.wait()) for c in self.connections]
        try:
            await asyncio.wait(waits, timeout=timeout)
        finally:
            for wait in waits:
                wait.cancel()

    def status(self) -> list[ServerStatus]:
        return [ServerStatus(c.config.name, c.where, c.state, c.problem, list(c.names)) for c in self.connections]

    def _rebuild(self) -> None:
        taken = set(self._reserved)
        configured: set[str] = set()  # names configured servers' tools have as declared
        offered: dict[str, Tool] = {}
        for connection in self.connections:
            connection.names = []
            for tool in connection.tools:
                name = sanitise(tool.name)
                if connection.builtin and name in configured:
                    if name not in offered and connection.state == UP:
                        offered[name] = self._tool(name, tool, connection)
                        connection.names.append((name, tool.name))
                    continue
                if name in taken:
                    name = sanitise(f"{connection.config.name}__{tool.name}")
                if name in taken:
                    if (connection.config.name, tool.name) not in self._unnamed:
                        self._unnamed.add((connection.config.name, tool.name))
                        self._log.warning(
                            "MCP server %r: its tool %r is left out: the name %r is taken.",
                            connection.config.name,
                            tool.name,
                            name,
                        )
                    continue
                taken.add(name)
                connection.names.append((name, tool.name))
                if not connection.builtin and name == sanitise(tool.name):
                    configured.add(name)
                if connection.state == UP:
                    offered[name] = self._tool(name, tool, connection)
        self._offered = offered

    @staticmethod
    def _tool(name: str, tool: types.Tool, connection: McpConnection) -> McpTool:
        description = tool.description or tool.title or f"{tool.name} (MCP server {connection.config.name})"
        return McpTool(name, description, dict(tool.input_schema), connection, tool.name)

    async def close_thread(self, thread_id: str, scope: str = "") -> None:
        for connection in self.connections:
            await connection.close_thread(thread_id, scope)

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self.connections))
