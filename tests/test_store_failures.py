"""A locked, failing or fed-bad-text thread database takes down neither the server, nor the store, nor a stream.

Real SQLite files under a real Jupyter server; the lock is taken by a second connection as another process
(a second server, a backup) would.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import body_json, check_against_store, parse_lines

ALICE = {"Authorization": "token alice"}


@contextlib.asynccontextmanager
async def write_lock(db: Path) -> AsyncIterator[None]:
    """Hold the database's write lock from another connection (on its own thread) for the block's duration."""
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with contextlib.closing(sqlite3.connect(db, isolation_level=None, timeout=30)) as conn:
            conn.execute("BEGIN IMMEDIATE")
            taken.set()
            release.wait(120)
            conn.execute("ROLLBACK")

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert await asyncio.to_thread(taken.wait, 30)
    try:
        yield
    finally:
        release.set()
        await asyncio.to_thread(holder.join)


class Stream:
    """A `streamresponse` read as it arrives."""

    def __init__(self, jp_fetch: Callable[..., Any], user_input: str) -> None:
        self.params = {"input": user_input}
        self.body = b""
        self.arrivals: list[float] = []
        self._arrived = asyncio.Event()
        self.task = asyncio.ensure_future(
            jp_fetch(
                "api",
                "chatbot",
                "streamresponse",
                params=self.params,
                headers=ALICE,
                streaming_callback=self._chunk,
                request_timeout=120,
            )
        )

    def _chunk(self, data: bytes) -> None:
        self.body += data
        self.arrivals.append(time.monotonic())
        self._arrived.set()

    async def started(self) -> None:
        async with asyncio.timeout(30):
            while not self.body:
                self._arrived.clear()
                await self._arrived.wait()

    async def finished(self) -> list[dict[str, Any]]:
        response = await asyncio.wait_for(self.task, 120)
        assert response.code == 200
        return parse_lines(self.body)


async def _timed(call: Any) -> float:
    start = time.monotonic()
    response = await call
    assert response.code == 200
    return time.monotonic() - start


async def test_a_lone_surrogate_from_the_llm_is_stored_as_a_replacement_and_breaks_nothing(api) -> None:
    response = await api("streamresponse", input="[[fake: surrogate=1]] how warm was 1990 in Hamburg")
    lines = parse_lines(response.body)
    thread_id = lines[0]["content"]["thread_id"]
    assert lines[-1] == {"variant": "StreamEnd", "content": "Stream ended."}
    stored = body_json(await api("getthread", thread_id=thread_id))
    answer = "".join(v["content"] for v in stored if v["variant"] == "Assistant")
    assert "\ufffd" in answer and "\ud800" not in answer
    # The title comes from the LLM too, with its surrogate: stored cleaned, after the answer.
    async with asyncio.timeout(30):
        while True:
            [threads, _] = body_json(await api("getuserthreads"))
            topic = next(t["topic"] for t in threads if t["thread_id"] == thread_id)
            if "fake LLM" in topic:
                break
            await asyncio.sleep(0.05)
    assert "\ud800" not in topic
    # Everyone else, and alice herself, carry on.
    for user in ("bob", "alice"):
        await api("streamresponse", user=user, input="and in 1991?")
        assert (await api("getuserthreads", user=user)).code == 200
        assert (await api("searchthreads", user=user, query="1991")).code == 200
    assert (await api("getthread", thread_id=thread_id)).code == 200
    assert (await api("ping", user="")).code == 200


async def test_a_lock_shorter_than_the_busy_timeout_delays_the_turn_and_nobody_else(
    api, jp_fetch, tmp_path: Path
) -> None:
    await api("streamresponse", user="bob", input="bob was here first")
    stream = Stream(jp_fetch, "[[fake:text tokens=30 delay=0.1]] tell me a long story")
    await stream.started()
    slowest = 0.0
    async with write_lock(tmp_path / "data" / "threads.sqlite3"):
        locked_at = time.monotonic()
        held_until = locked_at + 6
        while time.monotonic() < held_until:
            slowest = max(
                slowest,
                await _timed(api("ping", user="")),
                await _timed(api("getuserthreads", user="bob")),
                await _timed(api("availablechatbots", user="bob")),
            )
            await asyncio.sleep(0.1)
        # The turn cannot have ended: its answer is not stored yet.
        assert not stream.task.done()
        # Its stream stays alive meanwhile (keep-alive lines, heartbeat_interval 0.2 s).
        arrivals = [locked_at, *(t for t in stream.arrivals if t > locked_at), time.monotonic()]
    assert slowest < 1.0
    assert max(b - a for a, b in itertools.pairwise(arrivals)) < 1.0
    lines = await stream.finished()
    assert lines[-1] == {"variant": "StreamEnd", "content": "Stream ended."}
    assert all(line["variant"] != "ServerError" for line in lines)
    assert "tok29" in "".join(str(line["content"]) for line in lines)
    await check_against_store(api, stream.body, user="alice", params=stream.params)


@pytest.mark.parametrize("freva_config", [{"store_busy_timeout": 2.0}])
# The lock outlasts the timeout while the LLM still streams, or after the answer has ended (but before it is stored).
@pytest.mark.parametrize("answer", ["tokens=60 delay=0.1", "tokens=3 delay=0.05"])
async def test_a_lock_beyond_the_busy_timeout_ends_the_stream_with_an_error(
    api, jp_fetch, tmp_path: Path, answer: str
) -> None:
    stream = Stream(jp_fetch, f"[[fake:text {answer}]] tell me a long story")
    await stream.started()
    async with write_lock(tmp_path / "data" / "threads.sqlite3"):
        lines = await stream.finished()
    errors = [line["content"] for line in lines if line["variant"] == "ServerError"]
    assert errors and "locked" in errors[0]
    assert lines[-1] == {"variant": "StreamEnd", "content": "Stream ended with an error."}
    assert [line["variant"] for line in lines].count("StreamEnd") == 1
    # The lock is gone: the thread and the server work again.
    thread_id = lines[0]["content"]["thread_id"]
    assert (await api("getthread", thread_id=thread_id)).code == 200
    response = await api("streamresponse", thread_id=thread_id, input="once more please")
    assert parse_lines(response.body)[-1] == {"variant": "StreamEnd", "content": "Stream ended."}


async def test_a_database_failing_mid_stream_ends_the_stream_with_an_error(api, jp_fetch, tmp_path: Path) -> None:
    stream = Stream(jp_fetch, "[[fake:text tokens=30 delay=0.1]] tell me a long story")
    await stream.started()
    # Another tool damages the schema under the running server: every later write of a variant fails.
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "threads.sqlite3", timeout=30)) as conn:
        conn.execute("DROP TABLE variants")
        conn.commit()
    lines = await stream.finished()
    errors = [line["content"] for line in lines if line["variant"] == "ServerError"]
    assert errors and "variants" in errors[0]
    assert lines[-1]["variant"] == "StreamEnd"
    assert (await api("getuserthreads", user="bob")).code == 200
    # A 503 says what failed, never where the server keeps its files (the log does).
    broken = await api("getthread", thread_id=lines[0]["content"]["thread_id"], raise_error=False)
    assert broken.code == 503
    detail = body_json(broken)["detail"]
    assert detail.startswith("The thread store failed: the database failed") and "variants" in detail, detail
    for text in (detail, *errors):
        assert str(tmp_path) not in text and "sqlite3" not in text, text
    # The failed turn let go of its thread: another turn on it is refused for the broken store, not as busy (409).
    again = await api("streamresponse", thread_id=lines[0]["content"]["thread_id"], input="again", raise_error=False)
    assert again.code == 503, again.body
