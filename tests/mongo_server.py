"""A real MongoDB wire-protocol server for tests: secantusdb (`secantusd-py`, in memory) as a child process.

    with MongoServer() as mongo:        # mongo.uri == "mongodb://127.0.0.1:N/"
        ...                             # each test uses a database of its own (`unique_database()`)

There is no `mongod` for this machine (TESTING.md); secantusdb speaks the protocol pymongo speaks. `stop()` and
`start()` again on the same port let tests take the database away and bring it back (contents are lost).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.server_process import free_port


def _executable() -> str:
    found = shutil.which("secantusd-py") or str(Path(sys.executable).with_name("secantusd-py"))
    if not Path(found).exists():
        raise RuntimeError("secantusd-py is not installed: pip install -e '.[test]' (the test extra has secantusdb)")
    return found


class MongoServer:
    def __init__(self, port: int | None = None, timeout: float = 30.0) -> None:
        self.port = port or free_port()
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def start(self) -> MongoServer:
        self.proc = subprocess.Popen(
            [_executable(), "--host", "127.0.0.1", "--port", str(self.port), "--storage-path", ":memory:"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                error = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"secantusd-py exited with {self.proc.returncode}: {error[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"secantusd-py did not listen on port {self.port} within {self.timeout} s")

    def answers(self, timeout: float = 3.0) -> bool:
        """Whether the server answers a `ping` within `timeout` seconds."""
        from pymongo import MongoClient

        client: MongoClient = MongoClient(self.uri, serverSelectionTimeoutMS=int(timeout * 1000))
        try:
            client.admin.command("ping")
            return True
        except Exception:
            return False
        finally:
            client.close()

    def ensure_answering(self) -> MongoServer:
        """Start it afresh (on a new port) when it died or hangs: one beta server serves a long session."""
        if self.proc is None or self.proc.poll() is not None or not self.answers():
            self.stop()
            self.port = free_port()
            self.start()
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def __enter__(self) -> MongoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def unique_database() -> str:
    """A database name no other test uses (one server serves the whole session)."""
    return f"test_{uuid.uuid4().hex[:12]}"
