"""MCP servers for tests/test_mcp.py, built with the SDK's server API, and a way to run them as child processes.

    python -m tests.mcp_servers kit --port N [--legacy]    # streamable HTTP at http://127.0.0.1:N/mcp
    python -m tests.mcp_servers kit --stdio

    with McpServerProcess("kit", log_dir) as server:       # waits until the endpoint answers; server.url
        ...

`kit`: `echo`, `fail` (a tool error), `hang` (sleeps; `cancelled` counts the calls cancelled), `whoami` (the
Authorization header and MCP session of the call, and the process id), `plot` (a PNG) and `environment` (the
names of the process's environment variables). `clash`: tools whose names other tools already have — `echo`,
`code_interpreter` (runs nothing: says what it was given) and `get_context_from_resources` (a site's own
retrieval). `--legacy` makes a server answer only with the `initialize` handshake of older MCP servers, which keep
a session per client.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import mcp_types as types
from mcp.server.mcpserver import Context, Image, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from tests.server_process import REPO, _stop, free_port

# A 1x1 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
HANDSHAKE_VERSION = "2025-11-25"
_cancelled: list[float] = []


def kit() -> MCPServer:
    server = MCPServer("kit")

    @server.tool()
    def echo(text: str) -> str:
        """Repeat the text."""
        return f"kit echo: {text}"

    @server.tool()
    def fail() -> str:
        """Fail."""
        raise ToolError("the disk is on fire")

    @server.tool()
    async def hang(seconds: float) -> str:
        """Wait this many seconds."""
        try:
            await anyio.sleep(seconds)
        except anyio.get_cancelled_exc_class():
            _cancelled.append(seconds)
            raise
        return "woke up"

    @server.tool()
    def cancelled() -> int:
        """How many calls of `hang` were cancelled."""
        return len(_cancelled)

    @server.tool()
    def whoami(ctx: Context) -> str:
        """Who calls."""
        request = ctx.request_context.request
        headers = request.headers if request is not None else {}
        seen = {
            "authorization": headers.get("authorization"),
            "session": headers.get("mcp-session-id"),
            "pid": os.getpid(),
        }
        return json.dumps(seen)

    @server.tool()
    def plot() -> list[Image | str]:
        """Draw."""
        return ["a plot", Image(data=PNG, format="png")]

    @server.tool()
    def environment() -> str:
        """The names of this process's environment variables."""
        return " ".join(sorted(os.environ))

    return server


def clash() -> MCPServer:
    server = MCPServer("clash")

    @server.tool()
    def echo(text: str) -> str:
        """Repeat the text, differently."""
        return f"clash echo: {text}"

    @server.tool()
    def code_interpreter(code: str) -> str:
        """Pretend to run Python code."""
        return f"ran: {code}"

    @server.tool()
    def get_context_from_resources(question: str, resources_to_retrieve_from: str) -> str:
        """The site's own documentation."""
        return f"site documentation on {question!r} from {resources_to_retrieve_from}"

    return server


SERVERS = {"kit": kit, "clash": clash}


def speak_handshake_only(server: MCPServer) -> None:
    """Answer `server/discover` with handshake versions only: clients fall back to `initialize`, as with servers
    of MCP before 2026."""
    lowlevel = server._lowlevel_server

    async def discover(ctx: object, params: object) -> types.DiscoverResult:
        capabilities = lowlevel.get_capabilities(protocol_version=HANDSHAKE_VERSION)
        return types.DiscoverResult(supported_versions=[HANDSHAKE_VERSION], capabilities=capabilities)

    lowlevel.add_request_handler("server/discover", types.RequestParams, discover)


class McpServerProcess:
    """A server of SERVERS over streamable HTTP as a child process (`port`: a fixed one, e.g. to start it late)."""

    def __init__(self, kind: str, log_dir: Path, *, legacy: bool = False, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.args = [sys.executable, "-m", "tests.mcp_servers", kind, "--port", str(self.port)]
        self.args += ["--legacy"] if legacy else []
        self.log_path = log_dir / f"mcp-{kind}-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> McpServerProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                # Any HTTP answer means it listens (a GET without the MCP headers is refused).
                httpx.get(self.url, timeout=1.0)
                return self
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the MCP test server did not start: {self.log_path.read_text()[-2000:]!r}")

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, 10)
            self.proc = None

    def kill(self) -> None:
        """Gone at once, as a crashed server (a graceful stop waits for the calls in flight)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def __enter__(self) -> McpServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.mcp_servers")
    parser.add_argument("kind", choices=sorted(SERVERS))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--stdio", action="store_true")
    parser.add_argument("--legacy", action="store_true")
    args = parser.parse_args()
    server = SERVERS[args.kind]()
    if args.legacy:
        speak_handshake_only(server)
    if args.stdio:
        server.run("stdio")
    else:
        server.run("streamable-http", port=args.port)


if __name__ == "__main__":
    main()
