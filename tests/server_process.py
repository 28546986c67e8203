"""Real server processes for tests: `jupyter server` / `jupyter freva-gpt` and the fake LLM as child processes.

    with FakeLLMProcess() as llm:                       # llm.base_url == "http://127.0.0.1:N/v1"
        server = ServerProcess(tmp_path, args=[...])    # a free port, a random token, isolated Jupyter dirs
        with server:                                    # started; waits until `api/chatbot/ping` answers
            server.client().get("api/chatbot/availablechatbots")
        # stopped with SIGTERM (killed if it does not go), even when the test failed

`ServerProcess.start()` / `.wait_ready()` are separate, so independent servers can boot side by side.
"""

from __future__ import annotations

import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
# Variables of the parent that would configure the child behind the test's back.
_LEAKY_PREFIXES = ("FREVAGPT_", "JUPYTERHUB_", "JUPYTER_")
_LEAKY_NAMES = {"LITELLM_CONFIG"}


def free_port() -> int:
    """A port that was free a moment ago (bound to 0 and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(jupyter_dir: Path, **extra: str | None) -> dict[str, str]:
    """The parent's environment without Jupyter/FrevaGPT settings, with private Jupyter dirs, plus `extra` (a
    None there removes the variable)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LEAKY_PREFIXES) and k not in _LEAKY_NAMES}
    for name in ("config", "data", "runtime"):
        path = jupyter_dir / name
        path.mkdir(parents=True, exist_ok=True)
        env[f"JUPYTER_{name.upper()}_DIR"] = str(path)
    env["PYTHONUNBUFFERED"] = "1"
    # No probe kernel beside each test's server (as in tests/conftest.py); `extra` may turn it on.
    env["FREVAGPT_KERNEL_PROBE"] = "false"
    # Nor model discovery, whose default asks whatever listens on this machine's 11434, 8080 and 8000.
    env["FREVAGPT_MODEL_DISCOVERY"] = "[]"
    for name, value in extra.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def _stop(proc: subprocess.Popen, timeout: float) -> int:
    """SIGTERM, wait; SIGKILL if it does not go. The exit status (negative: killed by that signal)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


class FakeLLMProcess:
    """`python -m tests.fake_llm --port 0` as a child; `base_url` is read from what it prints. `port`, `models`
    (what GET /models lists) and a command `prefix` (e.g. setpriv, to run it as another user) are optional."""

    def __init__(
        self,
        timeout: float = 30.0,
        *,
        port: int = 0,
        models: list[str] | None = None,
        prefix: list[str] | tuple[str, ...] = (),
    ) -> None:
        self.timeout = timeout
        self.port = port
        self.models = models
        self.prefix = list(prefix)
        self.proc: subprocess.Popen | None = None
        self.base_url = ""

    def command(self) -> list[str]:
        listed = ["--models", ",".join(self.models)] if self.models is not None else []
        return [*self.prefix, sys.executable, "-m", "tests.fake_llm", "--port", str(self.port), *listed]

    def start(self) -> FakeLLMProcess:
        self.proc = subprocess.Popen(
            self.command(),
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + self.timeout
            seen = []
            while time.monotonic() < deadline:
                ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
                if ready:
                    line = self.proc.stdout.readline()  # type: ignore[union-attr]
                    if not line:
                        break  # it exited
                    seen.append(line)
                    if "listening on " in line:
                        self.base_url = line.rsplit("listening on ", 1)[1].strip()
                        return self
            raise RuntimeError(f"the fake LLM did not start: {''.join(seen)[-2000:]!r}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, 10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()

    def __enter__(self) -> FakeLLMProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServerProcess:
    """One `python -m jupyter server` (or, `standalone`, `jupyter freva-gpt`) child process."""

    def __init__(
        self,
        workdir: Path,
        *,
        args: list[str] | tuple[str, ...] = (),
        env: dict[str, str | None] | None = None,
        standalone: bool = False,
        base_url: str = "/",
        ready_timeout: float = 90.0,
        stop_timeout: float = 20.0,
        stdin: Any = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.root_dir = self.workdir / "root"
        self.root_dir.mkdir(exist_ok=True)
        self.args = list(args)
        self.extra_env = dict(env or {})
        self.standalone = standalone
        self.base_url = "/" + base_url.strip("/") + "/" if base_url.strip("/") else "/"
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.stdin = stdin  # e.g. a terminal, for jupyter_server's Ctrl-C handling
        self.token = secrets.token_hex(16)
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "server.log"
        self.returncode: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.base_url}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "jupyter",
            "freva-gpt" if self.standalone else "server",
            "--allow-root",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.base_url={self.base_url}",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root_dir}",
            # `jupyter freva-gpt` sets open_browser itself (test_server_process checks it may be given again).
            *([] if self.standalone else ["--ServerApp.open_browser=False"]),
            *self.args,
        ]

    def start(self) -> ServerProcess:
        """Launch the child (does not wait; see `wait_ready`)."""
        self.port = free_port()
        env = clean_env(self.workdir / "jupyter", **self.extra_env)
        with self.log_path.open("ab") as log:
            log.write(f"$ {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(), cwd=self.root_dir, env=env, stdin=self.stdin, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def log(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def wait_ready(self) -> ServerProcess:
        """Wait until `api/chatbot/ping` answers 200; relaunch once on another port if the port was taken."""
        assert self.proc is not None, "start() first"
        deadline = time.monotonic() + self.ready_timeout
        relaunched = False
        with httpx.Client(trust_env=False, timeout=5) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    if not relaunched and "already in use" in self.log():
                        relaunched = True
                        self.start()
                        continue
                    raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    if client.get(self.url + "api/chatbot/ping").status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the server did not answer within {self.ready_timeout} s:\n{self.log()}")

    def stop(self) -> int | None:
        """SIGTERM and wait (SIGKILL after `stop_timeout`); the exit status."""
        if self.proc is not None and self.returncode is None:
            self.returncode = _stop(self.proc, self.stop_timeout)
        return self.returncode

    def client(self, *, token: bool = True, headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Client:
        """An httpx client on the base URL; with `token`, it sends the server's Jupyter token."""
        sent = {"Authorization": f"token {self.token}"} if token else {}
        sent.update(headers or {})
        kwargs.setdefault("timeout", 30)
        return httpx.Client(base_url=self.url, headers=sent, trust_env=False, **kwargs)

    def __enter__(self) -> ServerProcess:
        if self.proc is None:
            self.start()
        try:
            return self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
