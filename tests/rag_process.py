"""`freva-gpt-rag-server` as a child process over streamable HTTP, for tests and bench/bench_rag.py.

with RagServerProcess([resources], cache_dir, log_path) as server:   # waits until the endpoint answers
    async with mcp.Client(server.url) as client: ...
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.server_process import REPO, _stop, free_port


class RagServerProcess:
    def __init__(self, resources: list[Path], cache_dir: Path, log_path: Path, ready_timeout: float = 30.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.args = [sys.executable, "-m", "freva_gpt_ext.rag_server", "--port", str(self.port)]
        self.args += ["--cache-dir", str(cache_dir), "--log-level", "WARNING"]
        # A test's own corpus alone; none: the shipped documentation.
        for folder in resources:
            self.args += ["--no-shipped", "--resources", str(folder)]
        self.log_path = log_path
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None

    def start(self) -> RagServerProcess:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                # Any HTTP answer means it listens; a GET without the MCP headers is refused, which is fine.
                httpx.get(self.url, timeout=1.0)
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"freva-gpt-rag-server did not start: {self.log_path.read_text()[-2000:]!r}")

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, 10)

    def __enter__(self) -> RagServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
