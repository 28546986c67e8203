"""Two `jupyter freva-gpt` processes sharing one store, as replicas behind a load balancer: stop reaches a turn in
the other process, the lease is shared, and a crashed server blocks its thread only until the lease expires, with
everything it streamed already stored. Each scenario runs on one SQLite data dir and on one MongoDB (where each
replica has a data dir of its own, so nothing they share can go through SQLite)."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.fake_llm import catalogue_yaml
from tests.mongo_server import unique_database
from tests.server_process import FakeLLMProcess, ServerProcess

pytestmark = pytest.mark.timeout(300)
LEASE_TTL = 2.0
STOP_POLL_INTERVAL = 0.05
# From the stop's answer to the stream's end: one poll, then the turn stores its end and releases the lease.
# The margin is for a loaded test machine and secantusdb (a Python server); the default poll is 0.25 s.
STOP_LATENCY_LIMIT = 1.5
SLOW_TURN = {"input": "[[fake:tokens=600 delay=0.05]]", "chatbot": "fake-slow"}
USED_MODELS = {"fake-text", "fake-slow"}


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLMProcess]:
    with FakeLLMProcess() as process:
        yield process


@pytest.fixture(params=["sqlite", "mongodb"])
def replicas(
    request: pytest.FixtureRequest, tmp_path: Path, llm: FakeLLMProcess
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    catalogue = tmp_path / "models.yaml"
    # No model that streams through litellm: its import would hold up each replica's stop by seconds.
    models = yaml.safe_load(catalogue_yaml(llm.base_url))["model_list"]
    catalogue.write_text(yaml.safe_dump({"model_list": [m for m in models if m["model_name"] in USED_MODELS]}))
    args = [
        f"--FrevaGPT.litellm_config={catalogue}",
        # Requests without a token act as the development user: both replicas see the same owner.
        "--FrevaGPT.dev=True",
        f"--FrevaGPT.lease_ttl={LEASE_TTL}",
        f"--FrevaGPT.stop_poll_interval={STOP_POLL_INTERVAL}",
        "--FrevaGPT.heartbeat_interval=0.5",
    ]
    if request.param == "mongodb":
        mongo = request.getfixturevalue("mongo_server")
        args += [f"--FrevaGPT.mongodb_uri={mongo.uri}", f"--FrevaGPT.mongodb_database_name={unique_database()}"]
        data = {"a": tmp_path / "a" / "data", "b": tmp_path / "b" / "data"}
    else:
        data = dict.fromkeys("ab", tmp_path / "data")
    first, second = (
        ServerProcess(tmp_path / name, args=[*args, f"--FrevaGPT.data_dir={data[name]}"], standalone=True).start()
        for name in "ab"
    )
    try:
        first.wait_ready()
        second.wait_ready()
        yield first, second
    finally:
        first.stop()
        second.stop()


def client(server: ServerProcess, **kwargs: Any) -> httpx.Client:
    return server.client(token=False, **kwargs)


class BackgroundStream:
    """A stream read line by line in a thread, so the test can act while it runs."""

    def __init__(self, server: ServerProcess, **params: Any) -> None:
        self.lines: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self.ended = 0.0  # time.monotonic() when the response ended
        self._thread = threading.Thread(target=self._read, args=(server, params), daemon=True)
        self._thread.start()

    def _read(self, server: ServerProcess, params: dict[str, Any]) -> None:
        try:
            with client(server, timeout=60) as http:
                with http.stream("POST", "api/chatbot/streamresponse", json=params) as response:
                    for line in response.iter_lines():
                        if line:
                            self.lines.append(json.loads(line))
        except httpx.HTTPError as err:
            self.error = err
        self.ended = time.monotonic()

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 30) -> None:
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


def test_stop_from_another_process(replicas: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = replicas
    live = BackgroundStream(a, **SLOW_TURN)
    live.wait_for(lambda lines: len(assistant_lines(lines)) >= 3)
    thread_id = live.lines[0]["content"]["thread_id"]
    with client(b) as http:
        busy = http.post("api/chatbot/streamresponse", json={"input": "x", "thread_id": thread_id})
        assert busy.status_code == 409, busy.text
        stopped = http.post("api/chatbot/stop", json={"thread_id": thread_id})
        answered = time.monotonic()
        assert stopped.status_code == 200, stopped.text
        assert stopped.json() == {"detail": "Conversation stopped."}
    lines = live.join()
    assert live.error is None, live.error
    assert live.ended - answered < STOP_LATENCY_LIMIT
    assert lines[-1] == {"variant": "StreamEnd", "content": "Stream is stopped by user."}
    shown = "".join(x["content"] for x in assistant_lines(lines))
    assert "tok599" not in shown
    with client(b) as http:
        stored = http.get("api/chatbot/getthread", params={"thread_id": thread_id}).json()
        assert stored[-1]["content"] == shown
        # the thread is free again, in either process
        again = http.post("api/chatbot/streamresponse", json={"input": "again", "thread_id": thread_id})
        assert again.status_code == 200, again.text
    with client(a) as http:
        stored = http.get("api/chatbot/getthread", params={"thread_id": thread_id}).json()
        assert [v["variant"] for v in stored] == ["User", "Assistant", "User", "Assistant"]
        assert stored[1]["content"] == shown


def test_crashed_server_blocks_its_thread_only_until_the_lease_expires(
    replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = replicas
    live = BackgroundStream(a, **SLOW_TURN)
    live.wait_for(lambda lines: len(assistant_lines(lines)) >= 5)
    thread_id = live.lines[0]["content"]["thread_id"]
    assert a.proc is not None
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(10)
    seen = [x for x in live.join() if x["variant"] in ("User", "Assistant")]
    assert seen, live.lines
    with client(b) as http:
        # Every variant the client saw before the crash was stored first (the last one may have grown since).
        stored = http.get("api/chatbot/getthread", params={"thread_id": thread_id}).json()
        assert [v["variant"] for v in stored] == ["User", "Assistant"]
        assert stored[0]["content"] == SLOW_TURN["input"]
        assert stored[1]["content"].startswith("".join(x["content"] for x in assistant_lines(seen)))
        busy = http.post("api/chatbot/streamresponse", json={"input": "x", "thread_id": thread_id})
        assert busy.status_code == 409, busy.text
        time.sleep(LEASE_TTL + 0.5)
        free = http.post("api/chatbot/streamresponse", json={"input": "x", "thread_id": thread_id})
        assert free.status_code == 200, free.text
        assert json.loads(free.text.splitlines()[-1])["variant"] == "StreamEnd"
