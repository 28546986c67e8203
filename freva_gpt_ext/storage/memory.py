"""A thread store in process memory, for turns with `store_thread=false`: nothing reaches a disk.

Bounded by thread count and by bytes of content (plots can be megabytes each): the least recently used
threads are dropped beyond `max_threads` or `max_bytes`, so a server that runs for months does not grow
without limit. A single thread may not outgrow `max_bytes` alone: the write that would make it larger fails
with `StoreError` (its turn ends with an error) rather than silently dropping the thread being written.
"""

from __future__ import annotations

import copy
import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

from ..variants import ASSISTANT, FEEDBACK_VARIANTS, USER, Variant
from .base import StoreError, ThreadInfo, clean_text, stored_json

# Bytes counted per variant besides its content: the object and its short fields.
_VARIANT_OVERHEAD = 200


@dataclass(slots=True)
class _Thread:
    user_id: str
    topic: str
    updated: float
    variants: list[Variant] = field(default_factory=list)
    fork_from_index: int | None = None
    size: int = 0  # bytes of its variants, as `_stored` counts them


@dataclass(slots=True)
class _Lease:
    holder: str
    expires: float
    stop: bool = False


def _copy(variant: Variant) -> Variant:
    # Strings are immutable; only dict/list content (hints, legacy shapes) and the object fields need a deep copy.
    return replace(
        variant,
        content=variant.content if isinstance(variant.content, str) else copy.deepcopy(variant.content),
        cell_context=copy.deepcopy(variant.cell_context),
        kernel=copy.deepcopy(variant.kernel),
    )


def _stored(variant: Variant) -> tuple[Variant, int]:
    """A private copy of `variant` with its text cleaned (as SQLite stores it), and its size in bytes."""
    content = variant.content
    if isinstance(content, str):
        content = clean_text(content)
        size = len(content)
    else:
        dumped = stored_json(content)
        content, size = json.loads(dumped), len(dumped)
    feedback = None if variant.feedback is None else clean_text(variant.feedback)
    objects: dict[str, Any] = {}
    for name, value in (("cell_context", variant.cell_context), ("kernel", variant.kernel)):
        if value is not None:
            dumped = stored_json(value)
            objects[name] = json.loads(dumped)
            size += len(dumped)
    return replace(variant, content=content, feedback=feedback, **objects), size + _VARIANT_OVERHEAD


def _matches(thread: _Thread, needle: str) -> bool:
    if needle in thread.topic.casefold():
        return True
    return any(
        v.variant in (USER, ASSISTANT) and isinstance(v.content, str) and needle in v.content.casefold()
        for v in thread.variants
    )


def _info(thread_id: str, thread: _Thread) -> ThreadInfo:
    return ThreadInfo(thread_id, thread.user_id, thread.topic, thread.updated, thread.fork_from_index, thread.size)


class MemoryThreadStore:
    """`ThreadStore` held in this process only; every write is immediately visible, `sync()` is a no-op."""

    # Its own bound (max_bytes) fails a write instead.
    max_thread_bytes: int | None = None

    def __init__(self, max_threads: int = 1000, max_bytes: int = 256 * 1024 * 1024) -> None:
        if max_threads < 1 or max_bytes < 1:
            raise ValueError("max_threads and max_bytes must be at least 1")
        self._max_threads = max_threads
        self._max_bytes = max_bytes
        self._bytes = 0
        self._threads: OrderedDict[str, _Thread] = OrderedDict()
        self._leases: dict[str, _Lease] = {}
        self._last_time = 0.0

    def _now(self) -> float:
        # Strictly increasing, so activity order is exact even within one clock tick.
        now = max(time.time(), self._last_time + 1e-6)
        self._last_time = now
        return now

    def _get(self, thread_id: str) -> _Thread | None:
        thread = self._threads.get(thread_id)
        if thread is not None:
            self._threads.move_to_end(thread_id)
        return thread

    def _require(self, thread_id: str) -> _Thread:
        thread = self._get(thread_id)
        if thread is None:
            raise StoreError(f"Thread {thread_id!r} does not exist; create it first.")
        return thread

    def _add(self, thread_id: str, thread: _Thread) -> None:
        self._check_size(thread_id, thread.size)
        self._threads[thread_id] = thread
        self._threads.move_to_end(thread_id)
        self._bytes += thread.size
        self._evict()

    def _check_size(self, thread_id: str, size: int) -> None:
        if size > self._max_bytes:
            raise StoreError(
                f"Thread {thread_id!r} would hold more than {self._max_bytes} bytes, the bound of threads kept "
                "in memory (store_thread=false; FREVAGPT_MEMORY_BYTES)."
            )

    def _grow(self, thread_id: str, thread: _Thread, size: int) -> None:
        self._check_size(thread_id, thread.size + size)
        thread.size += size
        self._bytes += size
        self._evict()

    def _evict(self) -> None:
        # The thread just written is the most recently used one and fits alone: it is never the one dropped.
        while len(self._threads) > self._max_threads or self._bytes > self._max_bytes:
            _, dropped = self._threads.popitem(last=False)
            self._bytes -= dropped.size

    def _page(self, threads: list[tuple[str, _Thread]], limit: int, offset: int) -> tuple[list[ThreadInfo], int]:
        threads.sort(key=lambda item: (-item[1].updated, item[0]))
        start = max(0, offset)
        page = threads[start : start + max(0, limit)]
        return [_info(tid, t) for tid, t in page], len(threads)

    async def create(self, thread_id: str, user_id: str, topic: str = "") -> None:
        if self._get(thread_id) is None:
            self._add(thread_id, _Thread(clean_text(user_id), clean_text(topic), self._now()))

    async def info(self, thread_id: str) -> ThreadInfo | None:
        thread = self._get(thread_id)
        if thread is None:
            return None
        return _info(thread_id, thread)

    async def append(self, thread_id: str, variant: Variant) -> None:
        thread = self._require(thread_id)
        stored, size = _stored(variant)
        self._grow(thread_id, thread, size)
        thread.variants.append(stored)
        thread.updated = self._now()

    async def extend_last(self, thread_id: str, text: str) -> None:
        thread = self._require(thread_id)
        if thread.variants and isinstance(thread.variants[-1].content, str):
            text = clean_text(text)
            self._grow(thread_id, thread, len(text))
            thread.variants[-1].content += text

    async def sync(self, thread_id: str | None = None) -> None:
        return None

    async def read(self, thread_id: str) -> list[Variant]:
        thread = self._get(thread_id)
        return [] if thread is None else [_copy(v) for v in thread.variants]

    async def list_threads(self, user_id: str, limit: int, offset: int) -> tuple[list[ThreadInfo], int]:
        mine = [(tid, t) for tid, t in self._threads.items() if t.user_id == user_id]
        return self._page(mine, limit, offset)

    async def search(self, user_id: str, query: str, limit: int, offset: int) -> tuple[list[ThreadInfo], int]:
        needle = clean_text(query).casefold()
        found = [(tid, t) for tid, t in self._threads.items() if t.user_id == user_id and _matches(t, needle)]
        return self._page(found, limit, offset)

    async def set_topic(self, thread_id: str, topic: str) -> None:
        thread = self._get(thread_id)
        if thread is not None:
            thread.topic = clean_text(topic)

    async def delete(self, thread_id: str) -> None:
        thread = self._threads.pop(thread_id, None)
        if thread is not None:
            self._bytes -= thread.size
        self._leases.pop(thread_id, None)

    async def fork(
        self,
        source_id: str,
        new_id: str,
        user_id: str,
        variants: list[Variant],
        topic: str,
        *,
        fork_from_index: int | None = None,
    ) -> None:
        if new_id in self._threads:
            raise StoreError(f"Cannot fork {source_id!r}: thread {new_id!r} already exists.")
        stored = [_stored(v) for v in variants]
        thread = _Thread(
            clean_text(user_id),
            clean_text(topic),
            self._now(),
            [v for v, _ in stored],
            fork_from_index,
            sum(size for _, size in stored),
        )
        self._add(new_id, thread)

    async def set_feedback(self, thread_id: str, index: int, feedback: str | None) -> bool:
        thread = self._get(thread_id)
        if thread is None or index < 0:
            return False
        numbered = [v for v in thread.variants if v.variant in FEEDBACK_VARIANTS]
        if index >= len(numbered):
            return False
        target = numbered[index]
        if feedback is None and target.feedback is None:
            return False
        target.feedback = None if feedback is None else clean_text(feedback)
        return True

    def _live_lease(self, thread_id: str) -> _Lease | None:
        lease = self._leases.get(thread_id)
        if lease is None or lease.expires <= time.time():
            return None
        return lease

    async def acquire_lease(self, thread_id: str, holder: str, ttl: float) -> bool:
        live = self._live_lease(thread_id)
        if live is not None and live.holder != holder:
            return False
        if len(self._leases) >= self._max_threads:
            # Leases of turns that ended without releasing (a bug elsewhere) must not pile up.
            now = time.time()
            for tid in [tid for tid, lease in self._leases.items() if lease.expires <= now]:
                del self._leases[tid]
        self._leases[thread_id] = _Lease(holder, time.time() + ttl)
        return True

    async def renew_lease(self, thread_id: str, holder: str, ttl: float) -> bool:
        lease = self._leases.get(thread_id)
        if lease is None or lease.holder != holder:
            return False
        lease.expires = time.time() + ttl
        return True

    async def release_lease(self, thread_id: str, holder: str) -> None:
        lease = self._leases.get(thread_id)
        if lease is not None and lease.holder == holder:
            del self._leases[thread_id]

    async def lease_holder(self, thread_id: str) -> str | None:
        lease = self._live_lease(thread_id)
        return None if lease is None else lease.holder

    async def request_stop(self, thread_id: str) -> bool:
        lease = self._live_lease(thread_id)
        if lease is None:
            return False
        lease.stop = True
        return True

    async def stop_requested(self, thread_id: str) -> bool:
        lease = self._leases.get(thread_id)
        return lease is not None and lease.stop

    async def aclose(self) -> None:
        self._threads.clear()
        self._leases.clear()
        self._bytes = 0
