"""Turn set-up rules, free of HTTP: thread ids, which thread a turn streams into (API.md's fork rule) and which
part of a thread is its owner's own (only that part's code is replayed unasked)."""

from __future__ import annotations

import secrets
import string

from ..storage.base import ThreadInfo, ThreadStore
from ..variants import history_with_interruptions

_ALPHABET = string.ascii_letters + string.digits


def new_thread_id() -> str:
    """32 characters of [A-Za-z0-9]: about 190 bits, unguessable (ids double as share links)."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(32))


def fork_index(source: ThreadInfo, owner: str, copied: int) -> int | None:
    """Where `owner`'s own part of a fork of `source` begins, `copied` variants being taken over: after all of
    them when the source is another user's; in a fork of one's own thread, where the source's own part began."""
    if source.user_id != owner:
        return copied
    return None if source.fork_from_index is None else min(source.fork_from_index, copied)


async def thread_for(
    store: ThreadStore,
    thread_id: str | None,
    owner: str,
    *,
    persistent: ThreadStore,
    memory: ThreadStore,
    sharing: bool,
) -> tuple[str, int | None]:
    """The thread a turn of `owner` streams into, in `store` (`persistent` or `memory`), and where the owner's
    own part of it begins.

    No id: a new thread. The caller's own thread, or an id no store knows: that thread. An id that either store
    holds for another user: a fork of that thread into a new id, or — with sharing off, or for a memory-only
    thread, which nobody else may read — a new empty thread. Both stores count, so that one id never names
    threads of two users.
    """
    if thread_id is None:
        return new_thread_id(), None
    info = await store.info(thread_id)
    source = store
    if info is None:
        source = memory if store is persistent else persistent
        info = await source.info(thread_id)
        if info is None or info.user_id == owner:
            return thread_id, None
    elif info.user_id == owner:
        return thread_id, info.fork_from_index
    new_id = new_thread_id()
    if not sharing or source is not persistent:
        return new_id, None
    variants = history_with_interruptions(await source.read(thread_id))
    start = fork_index(info, owner, len(variants))
    await store.fork(thread_id, new_id, owner, variants, info.topic, fork_from_index=start)
    return new_id, start
