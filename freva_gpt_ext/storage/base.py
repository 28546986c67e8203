"""The thread store seam: every backend (embedded SQLite, in-memory, MongoDB) keeps this contract."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from ..variants import Variant

_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """`text` with every surrogate code point replaced by U+FFFD.

    A lone surrogate (from a JSON escape such as `"\\ud800"`, or bytes decoded with `surrogateescape`) has no
    UTF-8 form: a database cannot store it and a client cannot decode it. Stores apply this to all text.
    """
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


def stored_json(value: Any) -> str:
    """`value` as the JSON text a store keeps, its text cleaned (`clean_text`); `StoreError` when JSON cannot
    hold it (NaN, objects of other types)."""
    try:
        return clean_text(json.dumps(value, ensure_ascii=False, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"Variant content cannot be stored: {exc}") from exc


@dataclass(slots=True)
class ThreadInfo:
    """A thread as listings show it: no content."""

    thread_id: str
    user_id: str
    topic: str
    updated: float  # POSIX seconds of the last activity
    # For a fork: the index of the first variant the new owner added; those before came from another
    # user's thread. None for a thread that is not a fork.
    fork_from_index: int | None = None
    # Approximate bytes of the stored content; None where the store does not track it.
    size: int | None = None

    def listing(self) -> dict[str, str]:
        date = datetime.fromtimestamp(self.updated, tz=UTC).isoformat().replace("+00:00", "Z")
        return {"user_id": self.user_id, "thread_id": self.thread_id, "date": date, "topic": self.topic}


class StoreError(Exception):
    """The store (database) failed; handlers answer 503 and streams end with its message, so that message
    says what failed but never where the server keeps its files (stores log those)."""


@runtime_checkable
class ThreadStore(Protocol):
    """Async thread persistence.

    Writes (`create`, `append`, `extend_last`) may be buffered by the store so that many stream fragments
    cost one transaction; `sync()` makes everything written so far durable and must be awaited before a
    client is shown what was written. Reads always see every earlier write. Text is stored with lone
    surrogates replaced (`clean_text`).
    """

    # The most bytes of content (`ThreadInfo.size`) a thread may hold before new turns on it are refused;
    # None: no limit.
    max_thread_bytes: int | None

    async def create(self, thread_id: str, user_id: str, topic: str = "") -> None:
        """Create an empty thread; a no-op when it exists."""

    async def info(self, thread_id: str) -> ThreadInfo | None:
        """The thread's owner, topic and last activity, or None when unknown."""

    async def append(self, thread_id: str, variant: Variant) -> None:
        """Add a variant at the end of the thread and touch its activity time."""

    async def extend_last(self, thread_id: str, text: str) -> None:
        """Concatenate `text` to the string content of the thread's last variant (a streamed run)."""

    async def sync(self, thread_id: str | None = None) -> None:
        """Make every write so far (to `thread_id`, or to any thread) durable.

        Raises `StoreError` when a buffered write (of that thread) failed since the last `sync` that
        reported it; the failed write is dropped, later ones proceed.
        """

    async def read(self, thread_id: str) -> list[Variant]:
        """All variants of the thread in order (empty when unknown)."""

    async def list_threads(self, user_id: str, limit: int, offset: int) -> tuple[list[ThreadInfo], int]:
        """A page of the user's threads, newest activity first, and their total count."""

    async def search(self, user_id: str, query: str, limit: int, offset: int) -> tuple[list[ThreadInfo], int]:
        """Like `list_threads`, only threads whose topic or message text contains `query` (any case)."""

    async def set_topic(self, thread_id: str, topic: str) -> None: ...

    async def delete(self, thread_id: str) -> None:
        """Remove the thread with its feedback and lease."""

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
        """Create `new_id` for `user_id` holding `variants` (taken from `source_id`), in one step.

        `fork_from_index` (returned by `info()`) records where the new owner's own part of the thread begins.
        """

    async def set_feedback(self, thread_id: str, index: int, feedback: str | None) -> bool:
        """Set (or with None remove) feedback on the `index`-th Assistant/Code variant.

        Returns False when there is no such variant, or when removing feedback that is absent.
        """

    async def acquire_lease(self, thread_id: str, holder: str, ttl: float) -> bool:
        """Take the thread's streaming lease unless another holder has a live one; clears the stop flag."""

    async def renew_lease(self, thread_id: str, holder: str, ttl: float) -> bool:
        """Extend the lease; False when it was lost (expired and taken)."""

    async def release_lease(self, thread_id: str, holder: str) -> None: ...

    async def lease_holder(self, thread_id: str) -> str | None:
        """The holder of the live lease, if any."""

    async def request_stop(self, thread_id: str) -> bool:
        """Raise the stop flag of a thread whose lease is live; False when nothing streams."""

    async def stop_requested(self, thread_id: str) -> bool: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class PortableThreadStore(ThreadStore, Protocol):
    """A store threads can be moved out of and into (`jupyter freva-gpt threads export|import`): the persistent
    stores (SQLite, MongoDB)."""

    async def owners(self) -> list[str]:
        """Every user who owns a thread, sorted."""

    async def restore(self, info: ThreadInfo, variants: list[Variant]) -> bool:
        """Create thread `info.thread_id` as `info` describes it (owner, topic, last activity `updated`,
        `fork_from_index`) holding `variants` with their feedback; the thread appears whole or not at all.

        False, and nothing written, when the store holds that id already (whoever owns it).
        """
