"""Two server processes on one data dir: stop reaches a turn in the other process, the lease is shared, and a
crashed server blocks its thread only until the lease expires, with everything it streamed already stored."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fake_llm import catalogue_yaml
from tests.server_process import FakeLLMProcess, ServerProcess

pytestmark = pytest.mark.timeout(300)
LEASE_TTL = 2.0


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLMProcess]:
    with FakeLLMProcess() as process:
        yield process


@pytest.fixture
def replicas(tmp_path: Path, llm: FakeLLMProcess) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    catalogue = tmp_path / "models.yaml"
    catalogue.write_text(catalogue_yaml(llm.base_url))
    args = [
        f"--FrevaGPT.litellm_config={catalogue}",
        f"--FrevaGPT.data_dir={tmp_path / 'data'}",
        "--FrevaGPT.owner=tester",
        f"--FrevaGPT.lease_ttl={LEASE_TTL}",
        "--FrevaGPT.stop_poll_interval=0.05",
        "--FrevaGPT.heartbeat_interval=0.5",
    ]
    first = ServerProcess(tmp_path / "a", args=args, ready_timeout=90).start()
    second = ServerProcess(tmp_path / "b", args=args, ready_timeout=90).start()
    try:
        first.wait_ready()
        second.wait_ready()
        yield first, second
    finally:
        first.stop()
        second.stop()


class BackgroundStream:
    """A stream read line by line in a thread, so the test can act while it runs."""

    def __init__(self, server: ServerProcess, **params: Any) -> None:
        self.lines: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, args=(server, params), daemon=True)
        self._thread.start()

    def _read(self, server: ServerProcess, params: dict[str, Any]) -> None:
        try:
            with server.client(timeout=60) as client:
                with client.stream("POST", "api/chatbot/streamresponse", json=params) as response:
                    for line in response.iter_lines():
                        if line:
                            self.lines.append(json.loads(line))
        except httpx.HTTPError as err:
            self.error = err

    def wait_for(self, predicate, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.lines):
            assert time.monotonic() < deadline, self.lines
            time.sleep(0.02)

    def join(self, timeout: float = 30) -> list[dict[str, Any]]:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream did not end"
        return self.lines


def assistant_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [x for x in lines if x["variant"] == "Assistant"]


def test_stop_from_another_process(replicas) -> None:
    a, b = replicas
    live = BackgroundStream(a, input="[[fake:tokens=600 delay=0.05]]", chatbot="fake-slow")
    live.wait_for(lambda lines: len(assistant_lines(lines)) >= 3)
    thread_id = live.lines[0]["content"]["thread_id"]
    with b.client() as client:
        busy = client.post("api/chatbot/streamresponse", json={"input": "x", "thread_id": thread_id})
        assert busy.status_code == 409, busy.text
        asked = time.monotonic()
        stopped = client.post("api/chatbot/stop", json={"thread_id": thread_id})
        assert stopped.status_code == 200, stopped.text
        assert stopped.json() == {"detail": "Conversation stopped."}
    lines = live.join()
    assert time.monotonic() - asked < 5
    assert lines[-1] == {"variant": "StreamEnd", "content": "Stream is stopped by user."}
    shown = "".join(x["content"] for x in assistant_lines(lines))
    assert "tok599" not in shown
    with b.client() as client:
        stored = client.get("api/chatbot/getthread", params={"thread_id": thread_id}).json()
        assert stored[-1]["content"] == shown
        # the thread is free again, in either process
        again = client.post("api/chatbot/streamresponse", json={"input": "again", "thread_id": thread_id})
        assert again.status_code == 200, again.text


def test_crashed_server_blocks_its_thread_only_until_the_lease_expires(replicas) -> None:
    a, b = replicas
    live = BackgroundStream(a, input="[[fake:tokens=600 delay=0.05]]", chatbot="fake-slow")
    live.wait_for(lambda lines: len(assistant_lines(lines)) >= 5)
    thread_id = live.lines[0]["content"]["thread_id"]
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(10)
    seen = "".join(x["content"] for x in assistant_lines(live.join()))
    with b.client() as client:
        # Everything the client saw before the crash was stored first.
        stored = client.get("api/chatbot/getthread", params={"thread_id": thread_id}).json()
        assert [v["variant"] for v in stored] == ["User", "Assistant"]
        assert stored[1]["content"].startswith(seen)
        busy = client.post("api/chatbot/streamresponse", json={"input": "x", "thread_id": thread_id})
        assert busy.status_code == 409, busy.text
        time.sleep(LEASE_TTL + 0.5)
        free = client.post("api/chatbot/streamresponse", json={"input": "x", "thread_id": thread_id})
        assert free.status_code == 200, free.text
        assert json.loads(free.text.splitlines()[-1])["variant"] == "StreamEnd"
