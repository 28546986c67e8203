"""A server whose FrevaGPT start-up failed still answers what it can and stops on SIGTERM and Ctrl-C within 5 s.

Real `jupyter server` processes: the failure, the signal handling and the shutdown are jupyter_server's own.
"""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server_process import ServerProcess

pytestmark = pytest.mark.timeout(300)
STOP_WITHIN = 5.0

# A catalogue with a YAML error: the extension runs without models. A tool that cannot be imported: the
# extension fails to load (its routes are missing) after part of it was built.
STATES = {
    "broken-catalogue": ["--FrevaGPT.litellm_config={catalogue}"],
    "failed-start": ["--FrevaGPT.litellm_config={catalogue}", "--FrevaGPT.tools=no_such_module:make_tool"],
}


@pytest.fixture
def terminal() -> Iterator[int]:
    """The child side of a pseudo-terminal: jupyter_server handles Ctrl-C itself only when stdin is a terminal."""
    parent, child = pty.openpty()
    yield child
    os.close(child)
    os.close(parent)


def start(tmp_path: Path, state: str, stdin: int | None) -> ServerProcess:
    catalogue = tmp_path / "models.yaml"
    catalogue.write_text("model_list:\n  - model_name: a\n    litellm_params: {model: openai/x\n")
    args = [arg.format(catalogue=catalogue) for arg in STATES[state]]
    server = ServerProcess(tmp_path / state, args=[*args, f"--FrevaGPT.data_dir={tmp_path / 'data'}"], stdin=stdin)
    server.start()
    deadline = time.monotonic() + server.ready_timeout
    with server.client() as client:
        while True:  # jupyter_server's own API answers in every state
            assert server.proc is not None and server.proc.poll() is None, server.log()
            try:
                if client.get("api/status").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        ping = client.get("api/chatbot/ping")
    if state == "broken-catalogue":
        assert ping.status_code == 200 and ping.json()["status"] == "degraded", ping.text
    else:
        assert "no_such_module" in server.log(100_000)
    return server


def wait_for_log(server: ServerProcess, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.log(100_000):
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)


def assert_stops(server: ServerProcess, started: float) -> None:
    assert server.proc is not None
    try:
        server.proc.wait(max(0.1, started + STOP_WITHIN - time.monotonic()))
    except subprocess.TimeoutExpired:
        server.stop()
        pytest.fail(f"the server did not stop within {STOP_WITHIN} s:\n{server.log()}")
    log = server.log(100_000)
    assert "AttributeError" not in log, log
    assert "FrevaGPT: closing" not in log, log


@pytest.mark.parametrize("state", list(STATES))
def test_sigterm_stops_the_server(tmp_path: Path, state: str) -> None:
    server = start(tmp_path, state, stdin=subprocess.DEVNULL)
    try:
        server.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        assert_stops(server, time.monotonic())
        assert server.proc.returncode == 0, server.log()  # type: ignore[union-attr]
    finally:
        server.stop()


@pytest.mark.parametrize("state", list(STATES))
def test_ctrl_c_twice_stops_the_server(tmp_path: Path, state: str, terminal: int) -> None:
    server = start(tmp_path, state, stdin=terminal)
    try:
        server.proc.send_signal(signal.SIGINT)  # type: ignore[union-attr]
        # The first Ctrl-C asks for confirmation; a second one stops the server.
        wait_for_log(server, "Shut down this Jupyter server")
        server.proc.send_signal(signal.SIGINT)  # type: ignore[union-attr]
        assert_stops(server, time.monotonic())
    finally:
        server.stop()
