"""The turn registry itself (core/, no server): shutdown leaves nothing running; a turn writes only into its owner's
thread."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest

from freva_gpt_ext.core.conversations import Conversations, ThreadBusy, TurnSettings
from freva_gpt_ext.storage import MemoryThreadStore
from freva_gpt_ext.variants import ASSISTANT, Variant


class StuckStore(MemoryThreadStore):
    """A store whose `sync` hangs while `stuck` is set, as one behind a locked database can."""

    def __init__(self) -> None:
        super().__init__()
        self.stuck = False
        self.unstuck = asyncio.Event()

    async def sync(self, thread_id: str | None = None) -> None:
        if self.stuck:
            await self.unstuck.wait()
        await super().sync(thread_id)


async def test_aclose_cancels_turns_that_do_not_end(jp_asyncio_loop):
    store = StuckStore()
    settings = TurnSettings(heartbeat_interval=5.0, lease_ttl=30.0, stop_poll_interval=0.05, tool_stop_grace=0.2)
    conversations = Conversations(settings, logging.getLogger("test"))

    async def answer() -> AsyncIterator[Variant]:
        yield Variant(ASSISTANT, "thinking long")
        await asyncio.Event().wait()

    turn = await conversations.start(
        store=store,
        thread_id="t1",
        owner="alice",
        model_name="m",
        user_input="hi",
        show_tools=False,
        produce=lambda history: answer(),
    )
    lines: list[bytes] = []
    while not any(b'"Assistant"' in line for line in lines):
        lines, _, _ = await turn.next_lines(len(lines))
    store.stuck = True
    began = time.monotonic()
    await conversations.aclose()
    assert time.monotonic() - began < 5
    assert turn.task is not None and turn.task.done()
    assert turn.finished and not conversations.active
    store.unstuck.set()  # what else waits on the store may end now


async def test_a_turn_never_writes_into_another_users_thread(jp_asyncio_loop):
    """A turn's thread is chosen before its lease is taken: should another user's turn have created that id in
    between, the turn is refused rather than written into their thread."""
    store = MemoryThreadStore()
    await store.create("t1", "alice", "alice's")
    settings = TurnSettings(heartbeat_interval=5.0, lease_ttl=30.0, stop_poll_interval=0.05, tool_stop_grace=0.2)
    conversations = Conversations(settings, logging.getLogger("test"))

    def produce(history: list[Variant]) -> AsyncIterator[Variant]:
        raise AssertionError(f"bob's turn started on alice's history {history}")

    with pytest.raises(ThreadBusy):
        await conversations.start(
            store=store,
            thread_id="t1",
            owner="bob",
            model_name="m",
            user_input="bob's",
            show_tools=False,
            produce=produce,
        )
    assert await store.read("t1") == []
    assert await store.lease_holder("t1") is None and not conversations.active
