"""Active turns: each runs as a server-owned task that stores every variant before a client may see it.

A turn holds its thread's streaming lease (renewed while it runs), polls the store's stop flag (so `stop` can
come from another server process), keeps the stream alive with heartbeats, and always ends with `StreamEnd`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any

from ..storage.base import ThreadStore, clean_text
from ..variants import (
    CODE,
    CODE_ERROR,
    CODE_OUTPUT,
    CODE_SUFFIX,
    SERVER_ERROR,
    SERVER_HINT,
    STOPPED_BY_USER,
    STREAM_END,
    TOOL_CALL,
    TOOL_OUTPUT,
    UNSTORED_VARIANTS,
    USER,
    Variant,
    hint,
)
from .llm import LLMError
from .topics import is_meaningful, provisional_topic
from .wire import StreamEncoder, keep_alive_after, lines_of

STREAM_DONE = "Stream ended."
STREAM_FAILED = "Stream ended with an error."


class ThreadBusy(Exception):
    """The thread is streaming already (its lease is held)."""


@dataclass(frozen=True, slots=True)
class TurnSettings:
    heartbeat_interval: float
    lease_ttl: float
    stop_poll_interval: float
    tool_stop_grace: float


class Turn:
    """One running turn: its wire lines, its recorder and its lifecycle."""

    def __init__(
        self,
        *,
        thread_id: str,
        store: ThreadStore,
        settings: TurnSettings,
        show_tools: bool,
        holder: str,
        log: logging.Logger,
    ) -> None:
        self.thread_id = thread_id
        self.store = store
        self.settings = settings
        self.show_tools = show_tools
        self.holder = holder
        self.log = log
        self.lines: list[bytes] = []
        self.finished = False
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._failure: str | None = None  # why the turn was ended from the reading side
        # The reader's sync in progress: (its task, the lines it covers, whether the turn had finished).
        self._syncing: tuple[asyncio.Future[None], int, bool] | None = None
        self._last_stored: Variant | None = None
        self._last_wire: Variant | None = None
        self._last_line_at = time.monotonic()
        self._status = "thinking"
        self._encoder = StreamEncoder()
        self._open_call: Variant | None = None  # the tool call that awaits its output (variant, id, tool name)
        self._abandoned = False  # the producer did not stop in time: whatever it still yields is dropped
        self.task: asyncio.Task[None] | None = None

    # -- reading side -------------------------------------------------------------------------------------
    async def next_lines(self, index: int) -> tuple[list[bytes], int, bool]:
        """Lines from `index` on, once durable; waits while there are none. Returns (lines, next index, done)."""
        while index >= len(self.lines) and not self.finished:
            self._wake.clear()
            await self._wake.wait()
        if self._syncing is None:
            # Covers the lines queued so far; those queued later wait for the next sync.
            self._syncing = (asyncio.ensure_future(self.store.sync(self.thread_id)), len(self.lines), self.finished)
        syncing, upto, finished = self._syncing
        # No keep-alive before the first line, which must name the thread.
        done, _ = await asyncio.wait({syncing}, timeout=self.settings.heartbeat_interval if index else None)
        if not done:
            # The store is slow (another process holds its lock): the stream stays alive meanwhile.
            keep_alive = keep_alive_after(self.lines[index - 1], self._status)
            if keep_alive is not None:
                return [keep_alive], index, False
            await asyncio.wait({syncing})
        self._syncing = None
        try:
            syncing.result()
        except Exception as err:
            # The store lost part of the answer: the turn ends, and the reader gets everything up to its
            # ServerError and StreamEnd (queued whether or not the store still takes them).
            self.log.error("Storing thread %s failed; ending its turn: %s", self.thread_id, err)
            reason = f"The thread store failed: {err}"
            self._fail(reason)
            while not self.finished and not (self._last_wire is not None and self._last_wire.variant == STREAM_END):
                self._wake.clear()
                await self._wake.wait()
            lines, end = self.lines[index:], self._last_wire
            if end is None or end.variant != STREAM_END or end.content != STREAM_FAILED:
                # The answer had ended before the failure came to light: its end must not read as a success.
                if end is not None and end.variant == STREAM_END:
                    lines = lines[:-1]
                lines += [*lines_of(Variant(SERVER_ERROR, reason)), *lines_of(Variant(STREAM_END, STREAM_FAILED))]
            return lines, len(self.lines), True
        return self.lines[index:upto], upto, finished

    def stop(self) -> None:
        self._stop.set()

    def _fail(self, reason: str) -> None:
        if self._failure is None:
            self._failure = reason
        self._stop.set()

    # -- writing side -------------------------------------------------------------------------------------
    async def emit(self, v: Variant) -> None:
        """Record `v` (buffered in the store, durable before any reader gets its line) and queue its lines."""
        if isinstance(v.content, str) and not v.content.isascii():
            # The client sees what the store keeps: lone surrogates (an LLM may send "\ud800") as U+FFFD.
            v = replace(v, content=clean_text(v.content))
        await self._record(v)
        self._track_call(v)
        if v.variant == SERVER_HINT and isinstance(v.content, dict) and "status" in v.content:
            self._status = str(v.content["status"])
        # The web frontend shows the user's message itself; hidden tools are for getthread(show_tools) only.
        if v.variant == USER or (v.tools_only and not self.show_tools):
            return
        self._queue(v)

    def _queue(self, v: Variant) -> None:
        self._add_lines(self._encoder.encode(v))
        self._last_wire = v

    def _add_lines(self, lines: list[bytes]) -> None:
        self.lines.extend(lines)
        self._last_line_at = time.monotonic()
        self._wake.set()

    async def _record(self, v: Variant) -> None:
        if v.variant in UNSTORED_VARIANTS:
            self._last_stored = None
            return
        last = self._last_stored
        if last is not None and last.merges_with(v):
            if v.content:
                await self.store.extend_last(self.thread_id, v.content)
            return
        self._last_stored = Variant(v.variant, v.content, id=v.id)
        await self.store.append(self.thread_id, v)

    def _track_call(self, v: Variant) -> None:
        if v.variant in (CODE, TOOL_CALL):
            self._open_call = Variant(v.variant, "", id=v.id, tool_name=v.tool_name)
        elif v.variant in (CODE_OUTPUT, TOOL_OUTPUT) and self._open_call is not None and v.id == self._open_call.id:
            self._open_call = None

    async def _close_open_call(self, reason: str) -> None:
        """A call cut off by a stop or a failure still gets its (empty) output, so the thread stays valid."""
        call = self._open_call
        if call is None:
            return
        if call.variant == TOOL_CALL:
            await self.emit(Variant(TOOL_OUTPUT, reason, id=call.id, tool_name=call.tool_name))
            return
        if self._encoder.code_open(call.id):
            await self.emit(Variant(CODE, CODE_SUFFIX, id=call.id))
        await self.emit(Variant(CODE_OUTPUT, "", id=call.id))
        await self.emit(Variant(CODE_ERROR, reason, id=call.id))

    # -- lifecycle ----------------------------------------------------------------------------------------
    async def run(self, producer: AsyncIterator[Variant], on_done: Callable[[], None]) -> None:
        worker = asyncio.create_task(self._consume(producer))
        watcher = asyncio.create_task(self._watch())
        heart = asyncio.create_task(self._heartbeat())
        try:
            done, _ = await asyncio.wait({worker, watcher}, return_when=asyncio.FIRST_COMPLETED)
            late = None
            if worker in done:
                error = worker.result()
            else:
                error = watcher.result()
                late = await self._cancel(worker)
            heart.cancel()
            stopped = worker not in done and error is None
            try:
                await self._close_open_call("Stopped by user." if stopped else (error or "No result."))
                for text in (error, late):
                    if text:
                        await self.emit(Variant(SERVER_ERROR, text))
                reason = STOPPED_BY_USER if stopped else STREAM_FAILED if error else STREAM_DONE
                await self.emit(Variant(STREAM_END, reason))
            except Exception as err:
                # The store failed: the client still learns why and gets its StreamEnd.
                self.log.exception("Could not store the end of thread %s", self.thread_id)
                self._queue(Variant(SERVER_ERROR, f"The thread store failed: {err}"))
                self._queue(Variant(STREAM_END, STREAM_FAILED))
        finally:
            for task in (worker, watcher, heart):
                task.cancel()
            try:
                try:
                    await self.store.sync(self.thread_id)
                except Exception:
                    self.log.exception("Could not finish storing thread %s", self.thread_id)
                # Even after a store failure: a lease left behind would refuse the thread (409) until it expires.
                try:
                    await self.store.release_lease(self.thread_id, self.holder)
                except Exception:
                    self.log.exception("Could not release the lease of thread %s; it expires by itself", self.thread_id)
            finally:
                # Even when this task is cancelled (shutdown), readers and the registry learn it ended.
                self.finished = True
                self._wake.set()
                on_done()

    async def _cancel(self, worker: asyncio.Task[str | None]) -> str | None:
        """Cancel the producer and wait for it a grace period; a tool that swallows the cancellation would
        otherwise hold the turn forever. Returns what to report when it is left behind."""
        worker.cancel()
        await asyncio.wait({worker}, timeout=self.settings.tool_stop_grace)
        if worker.done():
            return None
        self._abandoned = True
        self.log.error(
            "The turn on thread %s did not stop within %g s (a tool ignores cancellation); it is left behind.",
            self.thread_id,
            self.settings.tool_stop_grace,
        )
        return f"A tool did not stop within {self.settings.tool_stop_grace:g} s; the answer ends without it."

    async def _consume(self, producer: AsyncIterator[Variant]) -> str | None:
        try:
            async for v in producer:
                if self._abandoned:
                    return None
                await self.emit(v)
        except LLMError as err:
            return str(err)
        except Exception as err:
            self.log.exception("Turn on thread %s failed", self.thread_id)
            return f"The assistant failed: {type(err).__name__}: {err}"
        return None

    async def _watch(self) -> str | None:
        """Returns when a stop is requested, here or (through the store) in another process: None; or an
        error text when the thread's lease was lost (another process took the thread over) or the store failed."""
        lease_due = time.monotonic() + self.settings.lease_ttl / 3
        while True:
            try:
                await asyncio.wait_for(self._stop.wait(), self.settings.stop_poll_interval)
                return self._failure
            except TimeoutError:
                pass
            try:
                if await self.store.stop_requested(self.thread_id):
                    return None
                if time.monotonic() >= lease_due:
                    if not await self.store.renew_lease(self.thread_id, self.holder, self.settings.lease_ttl):
                        return "This answer was interrupted: the thread was taken over by another server."
                    lease_due = time.monotonic() + self.settings.lease_ttl / 3
            except Exception as err:  # a flaky store must not end the turn; the next poll tries again
                self.log.warning("Stop/lease check of thread %s failed: %s", self.thread_id, err)

    async def _heartbeat(self) -> None:
        interval = self.settings.heartbeat_interval
        while True:
            await asyncio.sleep(max(0.0, self._last_line_at + interval - time.monotonic()))
            if time.monotonic() - self._last_line_at < interval * 0.999:
                continue
            lines = self._encoder.keep_alive(self._status)
            if not self._encoder.run_open:
                # A line of another variant now separates what follows from the message before it, in the
                # store as on the wire.
                self._last_stored = None
            if lines:
                self._add_lines(lines)
            else:
                # Inside an open Code run with nothing held back: the next chance is one interval later.
                self._last_line_at = time.monotonic()


class Conversations:
    """The turns running in this server process, by (store, thread id): a memory-only thread and a stored one
    may share an id, never a turn."""

    def __init__(self, settings: TurnSettings, log: logging.Logger) -> None:
        self.settings = settings
        self.log = log
        self.active: dict[tuple[ThreadStore, str], Turn] = {}
        self._background: set[asyncio.Task[None]] = set()

    async def start(
        self,
        *,
        store: ThreadStore,
        thread_id: str,
        owner: str,
        model_name: str,
        user_input: str,
        show_tools: bool,
        produce: Callable[[list[Variant]], AsyncIterator[Variant]],
        name_thread: Callable[[str], Awaitable[str]] | None = None,
        cell_context: dict[str, Any] | None = None,
        kernel: dict[str, Any] | None = None,
    ) -> Turn:
        """Take the lease, store the user's message (with the cell it is about and the kernel the turn runs in:
        see `Variant`) and start the turn; `ThreadBusy` when it streams, or when another user's turn has taken the
        id since the thread was chosen."""
        holder = uuid.uuid4().hex
        if not await store.acquire_lease(thread_id, holder, self.settings.lease_ttl):
            raise ThreadBusy(thread_id)
        try:
            info = await store.info(thread_id)
            if info is not None and info.user_id != owner:
                # The id was free when chosen (a new thread), but another user's turn created it before this
                # one held the lease: never write into their thread, nor read its history.
                raise ThreadBusy(thread_id)
            await store.create(thread_id, owner, provisional_topic(user_input))
            history = await store.read(thread_id)
            turn = Turn(
                thread_id=thread_id,
                store=store,
                settings=self.settings,
                show_tools=show_tools,
                holder=holder,
                log=self.log,
            )
            await turn.emit(hint(thread_id=thread_id, model=model_name))
            await turn.emit(Variant(USER, user_input, cell_context=cell_context, kernel=kernel))
            producer = produce(history)
        except BaseException:
            await store.release_lease(thread_id, holder)
            raise
        self.active[(store, thread_id)] = turn

        def done() -> None:
            self._forget(turn)
            # Titled after the answer, so that the title's LLM call never delays the answer's first words.
            if name_thread is not None:
                self._spawn(self._maybe_retitle(store, thread_id, history, user_input, name_thread))

        turn.task = asyncio.create_task(turn.run(producer, done))
        return turn

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _maybe_retitle(
        self,
        store: ThreadStore,
        thread_id: str,
        history: list[Variant],
        user_input: str,
        name_thread: Callable[[str], Awaitable[str]],
    ) -> None:
        """Title the thread from its first meaningful message, once, unless the user has renamed it."""
        first = next((str(v.content) for v in history if v.variant == USER), user_input)
        provisional = provisional_topic(first)
        if not is_meaningful(user_input):
            return
        try:
            info = await store.info(thread_id)
            if info is None or info.topic != provisional:
                return
            title = await name_thread(user_input)
            info = await store.info(thread_id)
            if title and info is not None and info.topic == provisional:
                await store.set_topic(thread_id, title)
        except Exception as err:  # the provisional topic stays: a title is a nicety
            self.log.warning("Could not title thread %s: %s", thread_id, err)

    def _forget(self, turn: Turn) -> None:
        if self.active.get((turn.store, turn.thread_id)) is turn:
            del self.active[(turn.store, turn.thread_id)]

    async def stop(self, thread_id: str, store: ThreadStore) -> bool:
        turn = self.active.get((store, thread_id))
        if turn is not None and not turn.finished:
            turn.stop()
            return True
        return await store.request_stop(thread_id)

    async def aclose(self) -> None:
        """Stop every turn (server shutdown); each still stores its end, unless it takes longer than its tool's
        grace period twice over (a stuck store): then it is cancelled, nothing runs on after this."""
        turns = list(self.active.values())
        for turn in turns:
            turn.stop()
        tasks = [t.task for t in turns if t.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=2 * self.settings.tool_stop_grace + 1)
            for task in pending:
                task.cancel()
            if pending:
                self.log.warning("Cancelled %d turns that did not end at shutdown.", len(pending))
                await asyncio.wait(pending, timeout=1)
        for task in list(self._background):
            task.cancel()
