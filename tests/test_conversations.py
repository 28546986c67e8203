"""The turn registry itself (core/, no server): shutdown leaves nothing running."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from freva_gpt_ext.core.conversations import Conversations, TurnSettings
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
