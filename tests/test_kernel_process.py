"""Per-thread kernels across server processes: gone when the server stops, state replayed after a restart."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fake_llm import catalogue_yaml
from tests.server_process import FakeLLMProcess, ServerProcess
from tests.test_kernel import directive, hints, outputs, thread_of

pytestmark = pytest.mark.timeout(300)


def stream(server: ServerProcess, **params: Any) -> list[dict[str, Any]]:
    with server.client(timeout=120) as client:
        response = client.post("api/chatbot/streamresponse", json=params)
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


def running(pid: int) -> bool:
    """Whether the process exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_kernels_end_with_the_server_and_come_back_with_their_state(tmp_path: Path) -> None:
    with FakeLLMProcess() as llm:
        catalogue = tmp_path / "models.yaml"
        catalogue.write_text(catalogue_yaml(llm.base_url))
        args = [
            f"--FrevaGPT.litellm_config={catalogue}",
            f"--FrevaGPT.data_dir={tmp_path / 'data'}",
            "--FrevaGPT.owner=tester",
            "--FrevaGPT.heartbeat_interval=0.5",
            "--FrevaGPT.execution_timeout=60",
        ]
        workdir = tmp_path / "server"  # the same root dir (and so kernel folders) for both servers
        with ServerProcess(workdir, args=args) as server:
            lines = stream(server, input=directive("import os\nx = 41\nprint(os.getpid())"))
            tid = thread_of(lines)
            pid = int(outputs(lines)[0])
            assert running(pid)
            with server.client() as client:
                assert len(client.get("api/kernels").json()) == 1
        # stopped with SIGTERM: the thread's kernel went with it
        deadline = time.monotonic() + 15
        while running(pid):
            assert time.monotonic() < deadline, "the kernel outlived its server"
            time.sleep(0.1)
        with ServerProcess(workdir, args=args) as server:
            lines = stream(server, input=directive(f"import os\nprint(x + 1, os.getpid() != {pid})"), thread_id=tid)
            # a new kernel, which ran the thread's earlier code before the turn's
            assert outputs(lines) == ["42 True\n"]
            assert hints(lines, "replayed") == [1]
            # the second turn's code is in the thread's history now, nothing is replayed twice
            lines = stream(server, input=directive("print(x)"), thread_id=tid)
            assert outputs(lines) == ["41\n"] and hints(lines, "replayed") == []
