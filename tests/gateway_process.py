"""Jupyter Kernel Gateway (`jupyter-kernel-gateway` from PyPI) as a child process with a token, for the gateway tests
and bench/bench_gateway.py.

    with KernelGatewayProcess(tmp_path / "gateway") as gateway:   # a free port, a random token
        gateway.url, gateway.token, gateway.pid, gateway.kernels()

Its kernels run in `workdir` (the gateway's working directory) and get what `KG_ENV_WHITELIST` lets through of a
start request's environment (besides every KERNEL_* variable), plus the gateway's own HOME and PATH.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.server_process import _stop, clean_env, free_port

ALLOWED = ("THREAD_ID", "EVALUATION_SYSTEM_CONFIG_FILE")


class KernelGatewayProcess:
    """`python -m kernel_gateway` as a child, listing its kernels (the server's gateway client needs that)."""

    def __init__(self, workdir: Path, *, allowed: tuple[str, ...] = ALLOWED, ready_timeout: float = 60.0) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.allowed = allowed
        self.ready_timeout = ready_timeout
        self.token = secrets.token_hex(16)
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "gateway.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def server_args(self) -> list[str]:
        """What a Jupyter server needs to run its kernels here."""
        return [
            f"--GatewayClient.url={self.url}",
            f"--GatewayClient.auth_token={self.token}",
            f"--GatewayClient.allowed_envs={','.join(self.allowed)}",
        ]

    def start(self) -> KernelGatewayProcess:
        self.port = free_port()
        env = clean_env(
            self.workdir / "jupyter",
            # Only as environment variables: the command-line form of the list does not reach the gateway.
            KG_ENV_WHITELIST=",".join(self.allowed),
            KG_ENV_PROCESS_WHITELIST="HOME,LANG",
            KG_LIST_KERNELS="True",
        )
        command = [
            sys.executable,
            "-m",
            "kernel_gateway",
            "--KernelGatewayApp.ip=127.0.0.1",
            f"--KernelGatewayApp.port={self.port}",
            "--KernelGatewayApp.port_retries=0",
            f"--KernelGatewayApp.auth_token={self.token}",
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(command, cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self) -> KernelGatewayProcess:
        assert self.proc is not None, "start() first"
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the gateway exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.client().get("/api/kernelspecs").status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the gateway did not answer within {self.ready_timeout} s:\n{self.log()}")

    def client(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", 30)
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"token {self.token}"}, trust_env=False, **kwargs
        )

    def kernels(self) -> list[dict[str, Any]]:
        """The gateway's own list of its kernels."""
        with self.client() as http:
            response = http.get("/api/kernels")
        response.raise_for_status()
        return response.json()

    def log(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, 20)

    def __enter__(self) -> KernelGatewayProcess:
        if self.proc is None:
            self.start()
        try:
            return self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
