"""The thread store contract, run against every backend: memory, SQLite and MongoDB (a real wire-protocol
server, secantusdb; a database of its own per test)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bson
import pytest
from bson import ObjectId
from pymongo import AsyncMongoClient, monitoring

from freva_gpt_ext.storage import (
    MemoryThreadStore,
    MongoThreadStore,
    SQLiteThreadStore,
    StoreError,
    ThreadInfo,
    ThreadStore,
)
from freva_gpt_ext.storage.sqlite import SCHEMA_VERSION
from freva_gpt_ext.variants import Variant
from tests.mongo_server import MongoServer, unique_database
from tests.server_process import free_port

ALICE = "alice"
BOB = "bob"


def _mongo_store(request: pytest.FixtureRequest, loop: asyncio.AbstractEventLoop, database: str) -> MongoThreadStore:
    server: MongoServer = request.getfixturevalue("mongo_server")
    made = MongoThreadStore(server.uri, database)
    loop.run_until_complete(made.ensure_indexes())
    return made


@pytest.fixture(params=["sqlite", "memory", "mongo"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, jp_asyncio_loop: asyncio.AbstractEventLoop
) -> Iterator[ThreadStore]:
    made: ThreadStore
    if request.param == "sqlite":
        made = SQLiteThreadStore(tmp_path / "db" / "threads.sqlite")
    elif request.param == "memory":
        made = MemoryThreadStore()
    else:
        made = _mongo_store(request, jp_asyncio_loop, unique_database())
    yield made
    jp_asyncio_loop.run_until_complete(made.aclose())


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "threads.sqlite"


@pytest.fixture(params=["sqlite", "mongo"])
def pair(
    request: pytest.FixtureRequest, db_path: Path, jp_asyncio_loop: asyncio.AbstractEventLoop
) -> Iterator[tuple[ThreadStore, ThreadStore]]:
    """Two stores on one database: two servers sharing a data dir, or two replicas sharing a MongoDB."""
    stores: list[ThreadStore]
    if request.param == "sqlite":
        stores = [SQLiteThreadStore(db_path), SQLiteThreadStore(db_path)]
    else:
        database = unique_database()
        stores = [_mongo_store(request, jp_asyncio_loop, database) for _ in range(2)]
    yield stores[0], stores[1]
    for made in stores:
        jp_asyncio_loop.run_until_complete(made.aclose())


async def _thread(store: ThreadStore, thread_id: str, user: str = ALICE, topic: str = "", *texts: str) -> None:
    await store.create(thread_id, user, topic)
    for text in texts:
        await store.append(thread_id, Variant("User", text))


def _ids(infos: list[ThreadInfo]) -> list[str]:
    return [i.thread_id for i in infos]


# -- round trip -------------------------------------------------------------------------------------


async def test_protocol_is_implemented(store: ThreadStore) -> None:
    assert isinstance(store, ThreadStore)


async def test_round_trip_with_extend_before_and_after_sync(store: ThreadStore) -> None:
    await store.create("t1", ALICE, "ERA5")
    await store.append("t1", Variant("User", "plot ERA5"))
    await store.append("t1", Variant("Assistant", "Hel", model="gpt-x"))
    # Extended right after the append, before anything was flushed.
    await store.extend_last("t1", "lo")
    await store.extend_last("t1", " world")
    await store.append("t1", Variant("Code", '{"code": "pri', id="call_1"))
    await store.extend_last("t1", 'nt(1)"}')
    await store.append("t1", Variant("CodeOutput", "1\n", id="call_1"))
    await store.append("t1", Variant("ToolOutput", {"thread_id": "t1", "n": 3}, id="call_0", tool_name="rag"))
    # Content of any JSON shape comes back as it was (a `Code` list would be read as the upstream's `[text, id]`).
    await store.append("t1", Variant("ToolOutput", ["x = 1", {"n": [1, 2.5, None]}], id="call_3", tool_name="rag"))
    await store.append("t1", Variant("ToolCall", '{"q": "cdo"}', id="call_2", tool_name="get_context"))
    expected = [
        Variant("User", "plot ERA5"),
        Variant("Assistant", "Hello world", model="gpt-x"),
        Variant("Code", '{"code": "print(1)"}', id="call_1"),
        Variant("CodeOutput", "1\n", id="call_1"),
        Variant("ToolOutput", {"thread_id": "t1", "n": 3}, id="call_0", tool_name="rag"),
        Variant("ToolOutput", ["x = 1", {"n": [1, 2.5, None]}], id="call_3", tool_name="rag"),
        Variant("ToolCall", '{"q": "cdo"}', id="call_2", tool_name="get_context"),
    ]
    assert await store.read("t1") == expected
    await store.sync()
    assert await store.read("t1") == expected

    # Extending after a flush goes to the stored last variant, several times in a row.
    await store.append("t1", Variant("Assistant", "Done"))
    await store.sync()
    await store.extend_last("t1", ".")
    await store.extend_last("t1", "..")
    assert (await store.read("t1"))[-1] == Variant("Assistant", "Done...")


async def test_extend_leaves_non_text_content_alone(store: ThreadStore) -> None:
    await store.create("t1", ALICE)
    await store.extend_last("t1", "nothing to extend")
    await store.append("t1", Variant("ToolOutput", {"a": 1}))
    await store.extend_last("t1", "x")
    await store.sync()
    await store.extend_last("t1", "y")
    assert await store.read("t1") == [Variant("ToolOutput", {"a": 1})]


async def test_writes_to_unknown_thread_fail(store: ThreadStore) -> None:
    with pytest.raises(StoreError, match="nope"):
        await store.append("nope", Variant("User", "hi"))
    with pytest.raises(StoreError, match="nope"):
        await store.extend_last("nope", "hi")
    assert await store.read("nope") == []


async def test_stored_state_cannot_be_mutated_by_callers(store: ThreadStore) -> None:
    await store.create("t1", ALICE)
    output = Variant("ToolOutput", {"model": "a"})
    await store.append("t1", output)
    output.content["model"] = "changed by caller"
    first = await store.read("t1")
    first[0].content["model"] = "changed by reader"
    first[0].feedback = "up"
    assert await store.read("t1") == [Variant("ToolOutput", {"model": "a"})]


CELL = {"source": "ds.tas.plot()", "outputs": "KeyError: 'tas' \u00e9", "notebook_path": "work/ä.ipynb"}
KERNEL = {"kind": "notebook", "spec": "python3", "variables": ["ds", "arr"]}


async def test_user_variants_keep_their_cell_and_kernel(store: ThreadStore) -> None:
    await store.create("t1", ALICE)
    question = Variant("User", "why?", cell_context=dict(CELL), kernel={**KERNEL, "variables": ["ds", "arr"]})
    await store.append("t1", question)
    await store.append("t1", Variant("User", "plain"))
    await store.append("t1", Variant("User", "in a thread kernel", kernel={"kind": "thread", "spec": None}))
    # What the caller does to its objects afterwards, or to what it read, is not the stored state.
    question.cell_context["source"] = "changed by caller"
    question.kernel["variables"].append("changed")
    expected = [
        Variant("User", "why?", cell_context=CELL, kernel=KERNEL),
        Variant("User", "plain"),
        Variant("User", "in a thread kernel", kernel={"kind": "thread", "spec": None}),
    ]
    first = await store.read("t1")
    assert first == expected
    first[0].cell_context["outputs"] = "changed by reader"
    first[0].kernel["variables"].clear()
    await store.sync()
    assert await store.read("t1") == expected
    # getthread's shape: the keys are there when set; never on the wire.
    assert first[1].to_dict() == {"variant": "User", "content": "plain"}
    assert expected[0].to_dict() == {"variant": "User", "content": "why?", "cell_context": CELL, "kernel": KERNEL}
    assert expected[0].wire_dict() == {"variant": "User", "content": "why?"}
    # A fork (editthread, another user's thread continued) copies them.
    await store.fork("t1", "t2", BOB, (await store.read("t1"))[:2], "forked")
    assert await store.read("t2") == expected[:2]
    # Their text is cleaned as all text is.
    await store.append("t1", Variant("User", "q", cell_context={**CELL, "source": "a\ud800"}))
    assert (await store.read("t1"))[-1].cell_context == {**CELL, "source": "a\ufffd"}
    # What JSON cannot hold is refused, as for content.
    with pytest.raises(StoreError, match="cannot be stored"):
        await store.append("t1", Variant("User", "q", kernel={"kind": "notebook", "spec": float("nan")}))
        await store.sync("t1")


async def test_create_is_a_noop_when_the_thread_exists(store: ThreadStore) -> None:
    await _thread(store, "t1", ALICE, "first", "hello")
    await store.create("t1", BOB, "second")
    info = await store.info("t1")
    assert info is not None
    assert (info.user_id, info.topic) == (ALICE, "first")
    assert await store.read("t1") == [Variant("User", "hello")]


async def test_info(store: ThreadStore) -> None:
    assert await store.info("missing") is None
    await store.create("t1", ALICE, "topic")
    created = await store.info("t1")
    assert created is not None
    assert (created.thread_id, created.user_id, created.topic) == ("t1", ALICE, "topic")
    await store.append("t1", Variant("User", "hi"))
    touched = await store.info("t1")
    assert touched is not None
    assert touched.updated > created.updated
    assert touched.listing()["date"].endswith("Z")


# -- listing and search -----------------------------------------------------------------------------


async def test_list_is_paged_newest_activity_first_and_per_user(store: ThreadStore) -> None:
    for n in range(5):
        await store.create(f"a{n}", ALICE, f"topic {n}")
    await store.create("b0", BOB, "bob's")
    await store.append("a1", Variant("User", "bump"))

    page, total = await store.list_threads(ALICE, 2, 0)
    assert (_ids(page), total) == (["a1", "a4"], 5)
    page, total = await store.list_threads(ALICE, 2, 2)
    assert (_ids(page), total) == (["a3", "a2"], 5)
    page, total = await store.list_threads(ALICE, 2, 4)
    assert (_ids(page), total) == (["a0"], 5)
    page, total = await store.list_threads(ALICE, 2, 10)
    assert (_ids(page), total) == ([], 5)
    assert page == []
    page, total = await store.list_threads(BOB, 20, 0)
    assert [(i.thread_id, i.user_id, i.topic) for i in page] == [("b0", BOB, "bob's")]
    assert total == 1
    assert await store.list_threads("carol", 20, 0) == ([], 0)


async def test_search_topic_and_message_text(store: ThreadStore) -> None:
    await _thread(store, "topic", ALICE, "ERA5 temperature")
    await store.create("user_text", ALICE, "x")
    await store.append("user_text", Variant("User", "Please plot precipitation"))
    await store.create("assistant_text", ALICE, "y")
    await store.append("assistant_text", Variant("Assistant", "Here is the "))
    await store.extend_last("assistant_text", "Era5 plot")
    await store.create("code_only", ALICE, "z")
    await store.append("code_only", Variant("Code", '{"code": "era5 = 1"}', id="c"))
    await store.append("code_only", Variant("CodeOutput", "era5", id="c"))
    await _thread(store, "bobs", BOB, "ERA5 too", "era5")

    page, total = await store.search(ALICE, "era5", 10, 0)
    assert (_ids(page), total) == (["assistant_text", "topic"], 2)
    page, total = await store.search(ALICE, "PRECIPITATION", 10, 0)
    assert (_ids(page), total) == (["user_text"], 1)
    page, total = await store.search(ALICE, "era5", 1, 1)
    assert (_ids(page), total) == (["topic"], 2)
    assert await store.search(ALICE, "nothing like this", 10, 0) == ([], 0)
    page, total = await store.search(BOB, "ERA5", 10, 0)
    assert (_ids(page), total) == (["bobs"], 1)


async def test_search_takes_wildcards_literally_and_folds_unicode(store: ThreadStore) -> None:
    await _thread(store, "pct", ALICE, "", "100% done")
    await _thread(store, "under", ALICE, "", "snake_case name")
    await _thread(store, "slash", ALICE, "", "C:\\data")
    await _thread(store, "plain", ALICE, "", "100 percent done snakeXcase C:data")
    await _thread(store, "umlaut", ALICE, "Ärger mit CDO")

    assert _ids((await store.search(ALICE, "0% d", 10, 0))[0]) == ["pct"]
    assert _ids((await store.search(ALICE, "e_c", 10, 0))[0]) == ["under"]
    assert _ids((await store.search(ALICE, ":\\d", 10, 0))[0]) == ["slash"]
    assert _ids((await store.search(ALICE, "%", 10, 0))[0]) == ["pct"]
    assert _ids((await store.search(ALICE, "äRGER", 10, 0))[0]) == ["umlaut"]


async def test_search_takes_regular_expression_syntax_literally(store: ThreadStore) -> None:
    texts = ["a.c", "(x)", "[ab]", "^top", "end$", "p|q", "n+?", "{2}", "\\d", "a*b", "#1 ~x&y"]
    for n, text in enumerate(texts):
        await _thread(store, f"t{n}", ALICE, "", f"see {text} here")
    await _thread(store, "decoy", ALICE, "", "abc x a ab top end p q n 2 d 7 ab 1 xy aab")
    for n, text in enumerate(texts):
        assert _ids((await store.search(ALICE, text, 10, 0))[0]) == [f"t{n}"], text
    assert await store.search(ALICE, ".*", 10, 0) == ([], 0)


# -- mutations --------------------------------------------------------------------------------------


async def test_set_topic(store: ThreadStore) -> None:
    await _thread(store, "t1", ALICE, "old")
    await store.set_topic("t1", "new topic")
    info = await store.info("t1")
    assert info is not None
    assert info.topic == "new topic"
    page, _ = await store.search(ALICE, "NEW TOP", 10, 0)
    assert _ids(page) == ["t1"]
    await store.set_topic("missing", "x")
    assert await store.info("missing") is None


async def test_delete_removes_thread_variants_and_lease(store: ThreadStore) -> None:
    await _thread(store, "t1", ALICE, "gone", "hello")
    await _thread(store, "t2", ALICE, "kept", "hello")
    assert await store.acquire_lease("t1", "h1", 30)
    await store.delete("t1")
    assert await store.info("t1") is None
    assert await store.read("t1") == []
    assert await store.lease_holder("t1") is None
    assert await store.stop_requested("t1") is False
    page, total = await store.list_threads(ALICE, 10, 0)
    assert (_ids(page), total) == (["t2"], 1)
    with pytest.raises(StoreError):
        await store.append("t1", Variant("User", "after delete"))
    # The id is free again and starts empty.
    await store.create("t1", BOB, "reborn")
    assert await store.read("t1") == []
    await store.delete("never-existed")


async def test_fork_copies_given_variants_for_the_new_owner(store: ThreadStore) -> None:
    await _thread(store, "src", ALICE, "source", "one", "two")
    history = (await store.read("src"))[:1]
    await store.fork("src", "copy", BOB, history, "forked")
    assert await store.read("copy") == [Variant("User", "one")]
    info = await store.info("copy")
    assert info is not None
    assert (info.user_id, info.topic) == (BOB, "forked")
    assert await store.read("src") == [Variant("User", "one"), Variant("User", "two")]
    await store.append("copy", Variant("User", "three"))
    assert await store.read("copy") == [Variant("User", "one"), Variant("User", "three")]
    with pytest.raises(StoreError):
        await store.fork("src", "copy", BOB, history, "again")
    await store.fork("src", "empty", ALICE, [], "")
    assert await store.read("empty") == []
    assert await store.info("empty") is not None


async def test_fork_records_where_the_new_owners_part_begins(store: ThreadStore) -> None:
    await _thread(store, "src", ALICE, "source", "one", "two")
    await store.fork("src", "copy", BOB, await store.read("src"), "forked", fork_from_index=2)
    infos = [await store.info(t) for t in ("src", "copy")]
    assert [i.fork_from_index if i else "missing" for i in infos] == [None, 2]
    page, _ = await store.list_threads(BOB, 10, 0)
    assert [i.fork_from_index for i in page] == [2]


async def test_feedback_counts_assistant_and_code_only(store: ThreadStore) -> None:
    await store.create("t1", ALICE)
    for v in [
        Variant("User", "q"),
        Variant("Assistant", "a0"),
        Variant("Code", "c1", id="c"),
        Variant("CodeOutput", "o", id="c"),
        Variant("ToolCall", "{}", id="t", tool_name="rag"),
        Variant("Assistant", "a2"),
    ]:
        await store.append("t1", v)

    assert await store.set_feedback("t1", 0, "up") is True
    assert await store.set_feedback("t1", 1, "down") is True
    assert await store.set_feedback("t1", 2, "too long") is True
    assert [v.feedback for v in await store.read("t1")] == [None, "up", "down", None, None, "too long"]

    assert await store.set_feedback("t1", 0, "down") is True
    assert await store.set_feedback("t1", 2, None) is True
    assert await store.set_feedback("t1", 2, None) is False
    assert await store.set_feedback("t1", 3, "up") is False
    assert await store.set_feedback("t1", -1, "up") is False
    assert await store.set_feedback("missing", 0, "up") is False
    assert [v.feedback for v in await store.read("t1")] == [None, "down", "down", None, None, None]


# -- leases and the stop flag -----------------------------------------------------------------------


async def test_lease_acquire_conflict_renew_release(store: ThreadStore) -> None:
    assert await store.lease_holder("t1") is None
    assert await store.acquire_lease("t1", "h1", 30) is True
    assert await store.acquire_lease("t1", "h2", 30) is False
    assert await store.lease_holder("t1") == "h1"
    assert await store.acquire_lease("t1", "h1", 30) is True
    assert await store.renew_lease("t1", "h1", 30) is True
    assert await store.renew_lease("t1", "h2", 30) is False
    await store.release_lease("t1", "h2")
    assert await store.lease_holder("t1") == "h1"
    await store.release_lease("t1", "h1")
    assert await store.lease_holder("t1") is None
    assert await store.renew_lease("t1", "h1", 30) is False
    assert await store.acquire_lease("t1", "h2", 30) is True
    assert await store.lease_holder("t1") == "h2"
    # Leases are per thread.
    assert await store.acquire_lease("t2", "h1", 30) is True


async def test_expired_lease_can_be_taken(store: ThreadStore) -> None:
    assert await store.acquire_lease("t1", "h1", 0.05) is True
    await asyncio.sleep(0.1)
    assert await store.lease_holder("t1") is None
    assert await store.acquire_lease("t1", "h2", 30) is True
    assert await store.renew_lease("t1", "h1", 30) is False
    assert await store.lease_holder("t1") == "h2"


async def test_stop_flag_only_while_leased_and_cleared_on_acquire(store: ThreadStore) -> None:
    assert await store.request_stop("t1") is False
    assert await store.stop_requested("t1") is False
    assert await store.acquire_lease("t1", "h1", 30) is True
    assert await store.stop_requested("t1") is False
    assert await store.request_stop("t1") is True
    assert await store.stop_requested("t1") is True
    assert await store.stop_requested("t2") is False
    assert await store.renew_lease("t1", "h1", 30) is True
    assert await store.stop_requested("t1") is True
    assert await store.acquire_lease("t1", "h1", 30) is True
    assert await store.stop_requested("t1") is False
    await store.release_lease("t1", "h1")
    assert await store.stop_requested("t1") is False
    assert await store.request_stop("t1") is False

    assert await store.acquire_lease("t1", "h1", 0.05) is True
    await asyncio.sleep(0.1)
    assert await store.request_stop("t1") is False
    assert await store.stop_requested("t1") is False


async def test_lone_surrogates_are_stored_as_replacement_characters(store: ThreadStore) -> None:
    await store.create("t1", ALICE, "topic \ud800")
    await store.append("t1", Variant("Assistant", "a\udc00", model="m"))
    await store.extend_last("t1", "b\ud83d")
    await store.append("t1", Variant("ToolOutput", {"out": "x\ud800"}, id="c", tool_name="rag"))
    await store.append("t1", Variant("Code", "c", id="k"))
    assert await store.set_feedback("t1", 1, "meh \udfff") is True
    await store.sync()
    expected = [
        Variant("Assistant", "a\ufffdb\ufffd", model="m"),
        Variant("ToolOutput", {"out": "x\ufffd"}, id="c", tool_name="rag"),
        Variant("Code", "c", id="k", feedback="meh \ufffd"),
    ]
    assert await store.read("t1") == expected
    await store.set_topic("t1", "renamed \ud800")
    info = await store.info("t1")
    assert info is not None and info.topic == "renamed \ufffd"
    assert _ids((await store.search(ALICE, "\ud800", 10, 0))[0]) == ["t1"]
    await store.fork("t1", "t2", BOB, [Variant("User", "q\ud800")], "f\ud800")
    assert await store.read("t2") == [Variant("User", "q\ufffd")]
    # Nothing poisoned: later writes land.
    await store.append("t1", Variant("User", "after"))
    await store.sync()
    assert (await store.read("t1"))[-1] == Variant("User", "after")


async def test_concurrent_writers_lose_nothing_and_keep_each_ones_order(store: ThreadStore) -> None:
    writers = 4
    await store.create("shared", ALICE)
    for n in range(writers):
        await store.create(f"own{n}", ALICE)

    async def writer(n: int) -> None:
        for i in range(12):
            await store.append(f"own{n}", Variant("Assistant", f"{n}:{i}:"))
            for piece in "abc":
                await store.extend_last(f"own{n}", piece)
                await asyncio.sleep(0)
            await store.append("shared", Variant("User", f"{n}:{i}"))
            if i % 5 == 0:
                await store.sync(f"own{n}")

    await asyncio.gather(*(writer(n) for n in range(writers)))
    for n in range(writers):
        assert [v.content for v in await store.read(f"own{n}")] == [f"{n}:{i}:abc" for i in range(12)]
    shared = [str(v.content) for v in await store.read("shared")]
    assert len(shared) == writers * 12
    for n in range(writers):
        assert [c for c in shared if c.startswith(f"{n}:")] == [f"{n}:{i}" for i in range(12)]
    assert (await store.list_threads(ALICE, 10, 0))[1] == writers + 1


async def test_size_is_tracked_or_declared_untracked(store: ThreadStore) -> None:
    assert store.max_thread_bytes is None or store.max_thread_bytes > 1024 * 1024
    await store.create("t1", ALICE)
    await store.append("t1", Variant("User", "q"))
    small = await store.info("t1")
    await store.append("t1", Variant("Assistant", "x" * 50_000))
    large = await store.info("t1")
    assert small is not None and large is not None
    if small.size is not None:
        assert large.size is not None
        assert large.size - small.size >= 50_000


# -- memory store -----------------------------------------------------------------------------------


async def test_memory_store_drops_least_recently_used() -> None:
    store = MemoryThreadStore(max_threads=3)
    for n in range(3):
        await _thread(store, f"t{n}", ALICE, "", f"text {n}")
    await store.read("t0")
    await store.create("t3", ALICE)
    assert await store.info("t1") is None
    assert [await store.info(t) is not None for t in ("t0", "t2", "t3")] == [True, True, True]
    await store.append("t2", Variant("User", "keep me"))
    await store.create("t4", ALICE)
    assert await store.info("t0") is None
    assert _ids((await store.list_threads(ALICE, 10, 0))[0]) == ["t4", "t2", "t3"]
    with pytest.raises(ValueError):
        MemoryThreadStore(max_threads=0)


async def test_memory_store_is_bounded_by_bytes() -> None:
    store = MemoryThreadStore(max_threads=100, max_bytes=10_000)
    plot = "p" * 3_000
    for n in range(3):
        await _thread(store, f"t{n}", ALICE, "", plot)
    await store.read("t0")
    await _thread(store, "t3", ALICE, "", plot)
    # t1 was the least recently used: dropped to make room.
    assert [await store.info(t) is not None for t in ("t0", "t1", "t2", "t3")] == [True, False, True, True]
    await store.delete("t0")
    await store.delete("t2")
    # A thread alone may fill the bound, never outgrow it: the write that would is refused, nothing else lost.
    await store.append("t3", Variant("Assistant", "a"))
    await store.extend_last("t3", "b" * 5_000)
    with pytest.raises(StoreError, match="bytes"):
        await store.extend_last("t3", "b" * 5_000)
    with pytest.raises(StoreError, match="bytes"):
        await store.append("t3", Variant("Image", "i" * 20_000))
    with pytest.raises(StoreError, match="bytes"):
        await store.fork("t3", "big", BOB, [Variant("User", "u" * 20_000)], "")
    assert [len(str(v.content)) for v in await store.read("t3")] == [3_000, 5_001]
    await _thread(store, "t4", BOB, "", plot)
    # Room for t4 was made by dropping t3 (least recently used), not by refusing t4.
    assert await store.info("t3") is None
    assert await store.read("t4") == [Variant("User", plot)]


# -- two stores on one database: processes on one data dir, replicas on one MongoDB ----------------


async def test_second_instance_sees_synced_data_lease_and_stop(pair: tuple[ThreadStore, ThreadStore]) -> None:
    first, second = pair
    await first.create("t1", ALICE, "shared")
    await first.append("t1", Variant("Assistant", "par"))
    await first.extend_last("t1", "tial")
    await first.sync()
    assert await second.read("t1") == [Variant("Assistant", "partial")]
    info = await second.info("t1")
    assert info is not None
    assert (info.user_id, info.topic) == (ALICE, "shared")
    assert _ids((await second.search(ALICE, "PARTIAL", 10, 0))[0]) == ["t1"]

    assert await first.acquire_lease("t1", "server-1", 30) is True
    assert await second.lease_holder("t1") == "server-1"
    assert await second.acquire_lease("t1", "server-2", 30) is False
    assert await second.request_stop("t1") is True
    assert await first.stop_requested("t1") is True
    await first.release_lease("t1", "server-1")
    assert await second.acquire_lease("t1", "server-2", 30) is True
    assert await first.stop_requested("t1") is False


async def test_writes_are_flushed_without_sync_after_yielding(pair: tuple[ThreadStore, ThreadStore]) -> None:
    first, second = pair
    await first.create("t1", ALICE, "auto")
    await first.append("t1", Variant("User", "hello"))
    await first.extend_last("t1", " there")
    # Nobody syncs: the writer commits on its own, soon; another store can only be polled.
    async with asyncio.timeout(10):
        while await second.read("t1") != [Variant("User", "hello there")]:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    page, total = await second.list_threads(ALICE, 10, 0)
    assert (_ids(page), total) == (["t1"], 1)


async def test_two_writers_append_to_one_thread_in_turn(pair: tuple[ThreadStore, ThreadStore]) -> None:
    first, second = pair
    await first.create("t1", ALICE)
    await first.append("t1", Variant("User", "turn 1"))
    await first.sync()
    # The second server streams the next turn; the first one must not reuse its idea of the last row.
    await second.append("t1", Variant("User", "turn 2"))
    await second.sync()
    await first.append("t1", Variant("Assistant", "turn 3"))
    await first.extend_last("t1", "!")
    await first.sync()
    await second.extend_last("t1", "?")
    await second.sync()
    # The first one wrote that run last, but it is no longer as the first one left it.
    await first.extend_last("t1", ".")
    await first.sync()
    expected = [Variant("User", "turn 1"), Variant("User", "turn 2"), Variant("Assistant", "turn 3!?.")]
    assert await second.read("t1") == expected
    assert await first.read("t1") == expected


async def test_delete_by_other_instance_drops_pending_appends(pair: tuple[ThreadStore, ThreadStore]) -> None:
    first, second = pair
    await first.create("t1", ALICE)
    await first.sync()
    await second.delete("t1")
    await first.append("t1", Variant("User", "late"))
    await first.sync()
    assert await second.read("t1") == []
    assert await first.info("t1") is None


async def test_two_instances_writing_one_thread_at_once_lose_nothing(pair: tuple[ThreadStore, ThreadStore]) -> None:
    first, second = pair
    await first.create("t1", ALICE)
    await first.sync()

    async def writer(store: ThreadStore, name: str) -> None:
        for n in range(20):
            await store.append("t1", Variant("User", f"{name}{n}"))
            if n % 3 == 0:
                await store.sync("t1")
            await asyncio.sleep(0)
        await store.sync("t1")

    await asyncio.gather(writer(first, "a"), writer(second, "b"))
    stored = [v.content for v in await first.read("t1")]
    assert sorted(stored) == sorted([f"a{n}" for n in range(20)] + [f"b{n}" for n in range(20)])
    for name in "ab":
        assert [c for c in stored if c.startswith(name)] == [f"{name}{n}" for n in range(20)]


async def test_an_expired_lease_is_taken_over_by_the_other_instance(pair: tuple[ThreadStore, ThreadStore]) -> None:
    first, second = pair
    assert await first.acquire_lease("t1", "replica-a", 0.3) is True
    assert await second.acquire_lease("t1", "replica-b", 30) is False
    assert await second.request_stop("t1") is True
    await asyncio.sleep(0.4)  # replica A was killed: its lease runs out
    assert await second.lease_holder("t1") is None
    assert await second.acquire_lease("t1", "replica-b", 30) is True
    assert await second.stop_requested("t1") is False  # a new turn starts without the old stop
    assert await first.renew_lease("t1", "replica-a", 30) is False
    await first.release_lease("t1", "replica-a")  # a late release of the old holder takes nothing away
    assert await first.lease_holder("t1") == "replica-b"
    assert await first.acquire_lease("t1", "replica-a", 30) is False


# -- SQLite across processes ------------------------------------------------------------------------


async def test_sqlite_uses_wal(db_path: Path) -> None:
    store = SQLiteThreadStore(db_path)
    try:
        with contextlib.closing(sqlite3.connect(db_path)) as probe:
            assert probe.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        await store.aclose()


async def test_sqlite_batches_a_run_into_one_statement(db_path: Path) -> None:
    store = SQLiteThreadStore(db_path)
    statements: list[str] = []
    try:
        await store.create("t1", ALICE)
        await store.append("t1", Variant("Assistant", "a"))
        await store.sync()
        store._conn.set_trace_callback(statements.append)  # white box: the write pattern is the point
        for _ in range(50):
            await store.extend_last("t1", "b")
        await store.append("t1", Variant("Assistant", "c"))
        for _ in range(50):
            await store.extend_last("t1", "d")
        await store.sync()
        store._conn.set_trace_callback(None)
        assert [s.split()[0] for s in statements] == ["BEGIN", "UPDATE", "INSERT", "UPDATE", "COMMIT"]
        assert [v.content for v in await store.read("t1")] == ["a" + "b" * 50, "c" + "d" * 50]
    finally:
        await store.aclose()


async def test_sqlite_migrates_a_version_1_database(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    with contextlib.closing(sqlite3.connect(db_path)) as old:
        old.executescript(
            """
            CREATE TABLE threads (thread_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, topic TEXT NOT NULL DEFAULT '',
                created REAL NOT NULL, updated REAL NOT NULL);
            CREATE INDEX threads_by_user ON threads (user_id, updated DESC);
            CREATE TABLE variants (thread_id TEXT NOT NULL, seq INTEGER NOT NULL, variant TEXT NOT NULL,
                content TEXT, is_json INTEGER NOT NULL DEFAULT 0, vid TEXT, tool_name TEXT, model TEXT,
                feedback TEXT, PRIMARY KEY (thread_id, seq));
            CREATE TABLE leases (thread_id TEXT PRIMARY KEY, holder TEXT NOT NULL, expires REAL NOT NULL,
                stop INTEGER NOT NULL DEFAULT 0);
            INSERT INTO threads VALUES ('old', 'alice', 'kept', 1.0, 2.0);
            INSERT INTO variants (thread_id, seq, variant, content) VALUES ('old', 0, 'User', 'hi');
            PRAGMA user_version = 1;
            """
        )
    store = SQLiteThreadStore(db_path)
    try:
        assert await store.info("old") == ThreadInfo("old", ALICE, "kept", 2.0, None)
        await store.fork("old", "new", BOB, await store.read("old"), "kept", fork_from_index=1)
        info = await store.info("new")
        assert info is not None
        assert (info.user_id, info.fork_from_index) == (BOB, 1)
        assert await store.read("new") == [Variant("User", "hi")]
    finally:
        await store.aclose()
    with contextlib.closing(sqlite3.connect(db_path)) as probe:
        assert probe.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    # A database written by a newer server is refused, not damaged.
    with contextlib.closing(sqlite3.connect(db_path)) as newer:
        newer.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="newer"):
        SQLiteThreadStore(db_path)


async def test_sqlite_migrates_a_version_2_database(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    with contextlib.closing(sqlite3.connect(db_path)) as old:
        old.executescript(
            """
            CREATE TABLE threads (thread_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, topic TEXT NOT NULL DEFAULT '',
                created REAL NOT NULL, updated REAL NOT NULL, fork_from_index INTEGER);
            CREATE INDEX threads_by_user ON threads (user_id, updated DESC);
            CREATE TABLE variants (thread_id TEXT NOT NULL, seq INTEGER NOT NULL, variant TEXT NOT NULL,
                content TEXT, is_json INTEGER NOT NULL DEFAULT 0, vid TEXT, tool_name TEXT, model TEXT,
                feedback TEXT, PRIMARY KEY (thread_id, seq));
            CREATE TABLE leases (thread_id TEXT PRIMARY KEY, holder TEXT NOT NULL, expires REAL NOT NULL,
                stop INTEGER NOT NULL DEFAULT 0);
            INSERT INTO threads VALUES ('old', 'alice', 'kept', 1.0, 2.0, NULL);
            INSERT INTO variants (thread_id, seq, variant, content) VALUES ('old', 0, 'User', 'hi');
            PRAGMA user_version = 2;
            """
        )
    store = SQLiteThreadStore(db_path)
    try:
        await store.append("old", Variant("User", "and this cell?", cell_context=CELL, kernel=KERNEL))
        await store.sync()
        assert await store.read("old") == [
            Variant("User", "hi"),
            Variant("User", "and this cell?", cell_context=CELL, kernel=KERNEL),
        ]
    finally:
        await store.aclose()
    with contextlib.closing(sqlite3.connect(db_path)) as probe:
        assert probe.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        # In a column of its own, as one JSON object: the variant's content stays its text.
        row = probe.execute("SELECT content, meta FROM variants WHERE thread_id = 'old' AND seq = 1").fetchone()
        assert row[0] == "and this cell?" and json.loads(row[1]) == {"cell_context": CELL, "kernel": KERNEL}


async def test_sqlite_reopen_keeps_everything(db_path: Path) -> None:
    store = SQLiteThreadStore(db_path)
    await store.create("t1", ALICE, "kept")
    await store.append("t1", Variant("Code", '{"code": ""}', id="c1"))
    await store.set_feedback("t1", 0, "up")
    await store.aclose()
    await store.aclose()
    with pytest.raises(StoreError, match="closed"):
        await store.read("t1")

    reopened = SQLiteThreadStore(db_path)
    try:
        assert await reopened.read("t1") == [Variant("Code", '{"code": ""}', id="c1", feedback="up")]
    finally:
        await reopened.aclose()


async def test_sqlite_close_writes_pending(db_path: Path) -> None:
    store = SQLiteThreadStore(db_path)
    await store.create("t1", ALICE)
    await store.append("t1", Variant("User", "last words"))
    await store.aclose()
    reopened = SQLiteThreadStore(db_path)
    try:
        assert await reopened.read("t1") == [Variant("User", "last words")]
    finally:
        await reopened.aclose()


async def test_sqlite_close_ends_its_threads_and_connections_and_keeps_late_writes(db_path: Path) -> None:
    before = set(threading.enumerate())
    store = SQLiteThreadStore(db_path)
    await store.create("t1", ALICE)
    await store.append("t1", Variant("User", "first"))
    assert await store.read("t1") == [Variant("User", "first")]  # the reader connection is open too
    with _locked(db_path):  # the writer cannot finish its batch: the close waits for it
        await store.append("t1", Variant("Assistant", "an answer"))
        closing = asyncio.ensure_future(store.aclose())
        await asyncio.sleep(0)  # the close has begun (it runs first)
        await store.extend_last("t1", " that ends while the server stops")
    await asyncio.wait_for(closing, 30)
    assert [t.name for t in set(threading.enumerate()) - before] == []
    # SQLite removes the write-ahead log when the last connection to the file closes.
    assert not db_path.with_name(db_path.name + "-wal").exists()
    reopened = SQLiteThreadStore(db_path)
    try:
        assert (await reopened.read("t1"))[-1] == Variant("Assistant", "an answer that ends while the server stops")
    finally:
        await reopened.aclose()


async def test_sqlite_errors_surface_as_store_error(tmp_path: Path) -> None:
    broken = tmp_path / "not-a-db.sqlite"
    broken.write_bytes(b"this is not a database file" * 100)
    with pytest.raises(StoreError, match=r"not-a-db\.sqlite"):
        SQLiteThreadStore(broken)

    occupied = tmp_path / "a-file"
    occupied.write_text("x")
    with pytest.raises(StoreError, match="Cannot open"):
        SQLiteThreadStore(occupied / "threads.sqlite")


# -- SQLite off the event loop: locks and failing writes ---------------------------------------------


@contextlib.contextmanager
def _locked(db_path: Path) -> Iterator[None]:
    """Another connection (another process, a backup) holds the write lock."""
    with contextlib.closing(sqlite3.connect(db_path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")


async def test_sqlite_a_lock_delays_writes_but_not_reads_of_other_threads(db_path: Path) -> None:
    store = SQLiteThreadStore(db_path, busy_timeout=30)
    try:
        await _thread(store, "t1", ALICE, "mine", "before")
        await _thread(store, "b1", BOB, "bob's", "hello")
        await store.sync()
        with _locked(db_path):
            await store.append("t1", Variant("User", "during"))
            await store.extend_last("t1", " the lock")
            syncing = asyncio.ensure_future(store.sync("t1"))
            async with asyncio.timeout(5):  # generous: each answers in milliseconds
                assert await store.read("b1") == [Variant("User", "hello")]
                assert _ids((await store.list_threads(BOB, 10, 0))[0]) == ["b1"]
                assert _ids((await store.search(BOB, "hello", 10, 0))[0]) == ["b1"]
                assert await store.lease_holder("t1") is None
                assert await store.stop_requested("t1") is False
            assert not syncing.done()
        await asyncio.wait_for(syncing, 30)
        assert await store.read("t1") == [Variant("User", "before"), Variant("User", "during the lock")]
    finally:
        await store.aclose()


async def test_sqlite_a_lock_beyond_the_busy_timeout_fails_the_writes_and_nothing_later(db_path: Path) -> None:
    store = SQLiteThreadStore(db_path, busy_timeout=0.2)
    try:
        await _thread(store, "t1", ALICE, "", "kept")
        await store.sync()
        with _locked(db_path):
            await store.append("t1", Variant("Assistant", "lost"))
            with pytest.raises(StoreError, match="locked"):
                await store.sync("t1")
            with pytest.raises(StoreError, match="locked"):
                await store.acquire_lease("t1", "h1", 30)
            with pytest.raises(StoreError, match="locked"):
                await store.set_topic("t1", "x")
        # Reported once; the dropped append's run is not continued into the variant before it.
        await store.extend_last("t1", " more")
        await store.sync("t1")
        await store.append("t1", Variant("Assistant", "next"))
        await store.extend_last("t1", " turn")
        await store.sync()
        assert await store.read("t1") == [Variant("User", "kept"), Variant("Assistant", "next turn")]
        assert await store.acquire_lease("t1", "h1", 30) is True
    finally:
        await store.aclose()


async def test_sqlite_a_refused_write_is_dropped_and_fails_only_its_thread(db_path: Path) -> None:
    store = SQLiteThreadStore(db_path)
    try:
        await _thread(store, "bad", ALICE, "", "first")
        await _thread(store, "good", BOB, "", "first")
        await store.sync()
        # A permanent, per-row failure (as a too-large value would be): the database itself refuses the row.
        with contextlib.closing(sqlite3.connect(db_path)) as other:
            other.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON variants WHEN NEW.content LIKE 'poison%' "
                "BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
            other.commit()
        # Both in one batch.
        await store.append("bad", Variant("Assistant", "poison"))
        await store.append("good", Variant("Assistant", "fine"))
        await store.extend_last("bad", "ous")
        with pytest.raises(StoreError, match="refused"):
            await store.sync("bad")
        await store.sync("good")
        await store.extend_last("bad", " tail")
        await store.append("good", Variant("User", "later"))
        await store.append("bad", Variant("User", "later"))
        await store.sync()
        assert await store.read("bad") == [Variant("User", "first"), Variant("User", "later")]
        assert await store.read("good") == [
            Variant("User", "first"),
            Variant("Assistant", "fine"),
            Variant("User", "later"),
        ]
    finally:
        await store.aclose()


async def test_sqlite_never_runs_on_the_event_loop(db_path: Path) -> None:
    store = SQLiteThreadStore(db_path)
    loop_thread = threading.get_ident()
    threads: set[int] = set()
    try:
        await store.create("t1", ALICE)
        await store.sync()
        # White box: the thread each statement runs on is the point.
        store._conn.set_trace_callback(lambda _: threads.add(threading.get_ident()))
        await store.append("t1", Variant("User", "x"))
        await store.extend_last("t1", "y")
        await store.set_topic("t1", "t")
        assert await store.acquire_lease("t1", "h", 30) is True
        await store.read("t1")
        await store.sync()
        store._conn.set_trace_callback(None)
        assert threads and loop_thread not in threads
    finally:
        await store.aclose()


# -- MongoDB: the upstream's documents, GridFS, failures --------------------------------------------

PASSWORD = "s3cret%2Fpw-4711"  # as written in a URI; "s3cret/pw-4711" decoded


@dataclass
class Mongo:
    store: MongoThreadStore
    db: Any  # the store's database, seen directly (pymongo)

    @property
    def threads(self) -> Any:
        return self.db["threads"]


@pytest.fixture
def mongo(
    request: pytest.FixtureRequest, mongo_server: MongoServer, jp_asyncio_loop: asyncio.AbstractEventLoop
) -> Iterator[Mongo]:
    """A MongoDB store (options from indirect parametrisation) and a client of its database."""
    database = unique_database()
    store = MongoThreadStore(mongo_server.uri, database, **getattr(request, "param", {}))
    jp_asyncio_loop.run_until_complete(store.ensure_indexes())
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_server.uri, tz_aware=True)
    yield Mongo(store, client[database])
    jp_asyncio_loop.run_until_complete(store.aclose())
    jp_asyncio_loop.run_until_complete(client.close())


async def test_mongo_documents_keep_the_upstream_shape_and_fork_lineage(mongo: Mongo) -> None:
    store = mongo.store
    await store.create("src", ALICE, "ERA5")
    await store.append("src", Variant("User", "plot"))
    await store.append("src", Variant("Assistant", "He", model="m"))
    await store.extend_last("src", "llo")
    await store.sync()
    await store.extend_last("src", "!")
    await store.append("src", Variant("Code", '{"code":"1"}', id="c1"))
    await store.sync()
    doc = await mongo.threads.find_one({"thread_id": "src"}, {"_id": 0})
    assert doc is not None
    assert (doc["user_id"], doc["topic"]) == (ALICE, "ERA5")
    assert isinstance(doc["date"], datetime) and abs(doc["date"].timestamp() - time.time()) < 60
    assert doc["content"] == [
        {"variant": "User", "content": "plot"},
        {"variant": "Assistant", "content": "Hello!", "model": "m"},
        {"variant": "Code", "content": '{"code":"1"}', "id": "c1"},
    ]
    assert (doc["root_thread_id"], doc["parent_thread_id"], doc["fork_from_index"]) == ("src", None, None)

    await store.fork("src", "fork1", BOB, await store.read("src"), "ERA5", fork_from_index=3)
    await store.fork("fork1", "fork2", BOB, await store.read("fork1"), "ERA5")
    lineage = {
        d["thread_id"]: (d["root_thread_id"], d["parent_thread_id"], d["fork_from_index"])
        for d in await mongo.threads.find({"thread_id": {"$in": ["fork1", "fork2"]}}).to_list()
    }
    assert lineage == {"fork1": ("src", "src", 3), "fork2": ("src", "fork1", None)}
    infos = [await store.info(t) for t in ("src", "fork1", "fork2")]
    assert [i.fork_from_index if i else "missing" for i in infos] == [None, 3, None]


async def test_mongo_feedback_is_kept_in_userfeedback_and_deleted_with_the_thread(mongo: Mongo) -> None:
    store = mongo.store
    await store.create("t1", ALICE)
    for v in [
        Variant("User", "q"),
        Variant("Assistant", "a0"),
        Variant("Code", "c", id="k"),
        Variant("CodeOutput", "o", id="k"),
        Variant("Assistant", "a1"),
    ]:
        await store.append("t1", v)
    await _thread(store, "t2", ALICE)
    await store.append("t2", Variant("Assistant", "other"))
    assert await store.set_feedback("t1", 1, "down") is True
    assert await store.set_feedback("t1", 2, "up") is True
    assert await store.set_feedback("t1", 1, "too long") is True  # replaces the entry
    assert await store.set_feedback("t2", 0, "up") is True
    feedback = mongo.db["userfeedback"]
    entries = await feedback.find({"thread_id": "t1"}, {"_id": 0}).sort("entry_index").to_list()
    assert entries == [
        {
            "thread_id": "t1",
            "entry_index": 2,
            "user_id": ALICE,
            "entry": {"variant": "Code", "content": "c", "id": "k", "feedback": "too long"},
            "feedback": "too long",
        },
        {
            "thread_id": "t1",
            "entry_index": 4,
            "user_id": ALICE,
            "entry": {"variant": "Assistant", "content": "a1", "feedback": "up"},
            "feedback": "up",
        },
    ]
    assert await store.set_feedback("t1", 2, None) is True
    assert [e["entry_index"] for e in await feedback.find({"thread_id": "t1"}).to_list()] == [2]
    await store.delete("t1")
    assert await feedback.count_documents({"thread_id": "t1"}) == 0
    assert await feedback.count_documents({"thread_id": "t2"}) == 1


@pytest.mark.parametrize("mongo", [{"image_threshold": 1000}], indirect=True)
async def test_mongo_large_images_go_to_gridfs_and_read_back_in_line(mongo: Mongo) -> None:
    store = mongo.store
    big, small = "B" * 5000, "s" * 500
    await _thread(store, "t1", ALICE, "", "plot it")
    await store.append("t1", Variant("Image", big, id="c_0"))
    await store.append("t1", Variant("Image", small, id="c_1"))
    await store.sync()
    doc = await mongo.threads.find_one({"thread_id": "t1"})
    assert doc is not None
    large, inline = doc["content"][1:]
    assert large["content"] == "" and isinstance(large["gridfs_id"], ObjectId)
    assert inline == {"variant": "Image", "content": small, "id": "c_1"}
    expected = [Variant("User", "plot it"), Variant("Image", big, id="c_0"), Variant("Image", small, id="c_1")]
    assert await store.read("t1") == expected
    info = await store.info("t1")
    assert info is not None and info.size is not None and info.size < len(big)

    files = mongo.db["threads.images.files"]
    assert [f["metadata"] for f in await files.find().to_list()] == [{"thread_id": "t1"}]
    await store.fork("t1", "f1", BOB, await store.read("t1"), "")
    await store.delete("t1")
    assert await files.count_documents({"metadata.thread_id": "t1"}) == 0
    assert await mongo.db["threads.images.chunks"].count_documents({"files_id": large["gridfs_id"]}) == 0
    assert await store.read("f1") == expected

    # The upstream kept images in line: such a thread reads as it is.
    await mongo.threads.insert_one(
        {
            "user_id": ALICE,
            "thread_id": "old",
            "date": datetime.now(UTC),
            "content": [{"variant": "Image", "content": big}],
        }
    )
    assert await store.read("old") == [Variant("Image", big)]


async def test_mongo_size_is_the_documents_and_the_limit_is_12_mb(mongo: Mongo) -> None:
    store = mongo.store
    assert store.max_thread_bytes == 12 * 1024 * 1024
    assert MongoThreadStore("mongodb://127.0.0.1:1/", max_thread_bytes=1000).max_thread_bytes == 1000
    await _thread(store, "t1", ALICE, "size", "é" * 10_000)  # two bytes each in UTF-8
    info = await store.info("t1")
    doc = await mongo.threads.find_one({"thread_id": "t1"})
    assert info is not None and info.size == len(bson.encode(doc)) > 20_000
    page, _ = await store.list_threads(ALICE, 10, 0)
    assert [i.size for i in page] == [info.size]


def test_mongo_write_concern_must_acknowledge() -> None:
    for refused in (0, "0", -1, " "):
        with pytest.raises(ValueError, match="write concern"):
            MongoThreadStore("mongodb://127.0.0.1:1/", write_concern=refused)


@pytest.mark.parametrize(
    ("mongo", "acknowledged"),
    [({"write_concern": "majority"}, True), ({"write_concern": "2"}, False)],
    indirect=["mongo"],
)
async def test_mongo_write_concerns_pass_through(mongo: Mongo, acknowledged: bool) -> None:
    # secantusdb is a one-member replica set: "majority" is acknowledged, two members never are.
    await _thread(mongo.store, "t1", ALICE, "", "hello")
    if acknowledged:
        await mongo.store.sync()
        assert await mongo.store.read("t1") == [Variant("User", "hello")]
    else:
        with pytest.raises(StoreError):
            await mongo.store.sync()


async def test_mongo_reads_the_upstream_shapes(mongo: Mongo) -> None:
    store = mongo.store
    rust_date = "2024-06-12T08:15:42.913572411+00:00"
    await mongo.threads.insert_many(
        [
            {
                "user_id": ALICE,
                "thread_id": "rust",
                "date": rust_date,
                "topic": "Rust era",
                "content": [
                    {"variant": "Prompt", "content": '[{"role": "system", "content": "secret prompt"}]'},
                    {"variant": "ServerHint", "content": '{"thread_id": "rust"}'},
                    {"variant": "User", "content": "plot tas"},
                    {"variant": "Code", "content": ['{"code":"x"}', "call_1"]},
                    {"variant": "CodeOutput", "content": ["out", "call_1"]},
                    {"variant": "Image", "content": "iVBOR"},
                    {"variant": "CodeError", "content": ["failed"]},
                    {"variant": "Assistant", "content": "done", "feedback": ""},
                    {"variant": "StreamEnd", "content": "Generation complete"},
                    {"variant": "User", "content": "again", "model": ""},
                    {"variant": "StreamEnd", "content": "Generation complete"},
                ],
            },
            {
                "user_id": ALICE,
                "thread_id": "py",
                "date": datetime(2025, 3, 4, 10, 20, 30, tzinfo=UTC),
                "topic": "Python era",
                "content": [{"variant": "User", "content": "hello"}],
                # the upstream's lineage of a thread that is no fork
                "root_thread_id": "py",
                "parent_thread_id": "py",
                "fork_from_index": 0,
            },
        ]
    )
    assert await store.read("rust") == [
        Variant("User", "plot tas"),
        Variant("Code", '{"code":"x"}', id="call_1"),
        Variant("CodeOutput", "out", id="call_1"),
        Variant("Image", "iVBOR"),
        Variant("CodeError", "failed"),
        Variant("Assistant", "done"),
        Variant("User", "again"),
    ]
    rust, py = await store.info("rust"), await store.info("py")
    assert rust is not None and py is not None
    assert rust.updated == pytest.approx(datetime.fromisoformat(rust_date).timestamp())
    assert (rust.fork_from_index, py.fork_from_index) == (None, None)
    assert _ids((await store.list_threads(ALICE, 10, 0))[0]) == ["py", "rust"]
    assert _ids((await store.search(ALICE, "PLOT TAS", 10, 0))[0]) == ["rust"]
    assert await store.search(ALICE, "secret prompt", 10, 0) == ([], 0)

    # Continued: written per variant, and its activity is now.
    await store.append("rust", Variant("User", "more"))
    await store.append("rust", Variant("Assistant", "a"))
    await store.sync()
    await store.extend_last("rust", "b")
    assert await store.set_feedback("rust", 0, "up") is True  # the Code: 4th in the stored content
    assert (await store.read("rust"))[-2:] == [Variant("User", "more"), Variant("Assistant", "ab")]
    doc = await mongo.threads.find_one({"thread_id": "rust"})
    assert doc is not None and isinstance(doc["date"], datetime) and doc["content"][3]["feedback"] == "up"
    assert _ids((await store.list_threads(ALICE, 10, 0))[0]) == ["rust", "py"]
    entry = await mongo.db["userfeedback"].find_one({"thread_id": "rust"})
    assert entry is not None and entry["entry_index"] == 3


class _Commands(monitoring.CommandListener):
    """The commands a client sent (pymongo's own monitoring API)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_mongo_streams_a_long_answer_in_few_writes(mongo_server: MongoServer) -> None:
    commands = _Commands()
    store = MongoThreadStore(mongo_server.uri, unique_database(), client_options={"event_listeners": [commands]})
    try:
        await _thread(store, "t1", ALICE, "", "question")
        await store.append("t1", Variant("Assistant", ""))
        await store.sync()
        commands.names.clear()
        for n in range(2000):
            await store.extend_last("t1", f"{n} ")
            await asyncio.sleep(0)  # the loop turns between tokens, as while an LLM streams
        await store.sync()
        writes = [c for c in commands.names if c not in ("hello", "isMaster", "ping", "endSessions")]
        assert 1 <= len(writes) <= 200, writes
        assert (await store.read("t1"))[-1] == Variant("Assistant", "".join(f"{n} " for n in range(2000)))
    finally:
        await store.aclose()


async def test_mongo_down_is_a_store_error_and_the_store_recovers() -> None:
    server = MongoServer().start()
    store = MongoThreadStore(server.uri, "threads_db", server_selection_timeout=0.5)
    try:
        await _thread(store, "t1", ALICE, "", "hello")
        await store.sync()
        server.stop()
        await store.append("t1", Variant("Assistant", "lost"))  # buffered: the thread is known
        with pytest.raises(StoreError, match="unreachable"):
            await store.sync("t1")
        await store.sync("t1")  # reported once
        failing = [
            store.info("t1"),
            store.read("t1"),
            store.list_threads(ALICE, 10, 0),
            store.search(ALICE, "x", 10, 0),
            store.set_topic("t1", "x"),
            store.set_feedback("t1", 0, "up"),
            store.fork("t1", "t2", BOB, [], ""),
            store.delete("t1"),
            store.acquire_lease("t1", "h", 30),
            store.lease_holder("t1"),
            store.request_stop("t1"),
            store.stop_requested("t1"),
            store.ensure_indexes(),
        ]
        for call in failing:
            with pytest.raises(StoreError, match="unreachable"):
                await call
        server.start()  # the same port; secantusdb in memory starts empty
        await _thread(store, "t3", ALICE, "back", "again")
        await store.append("t3", Variant("Assistant", "a"))
        await store.extend_last("t3", "b")
        await store.sync()
        assert await store.read("t3") == [Variant("User", "again"), Variant("Assistant", "ab")]
        assert await store.acquire_lease("t3", "h", 30) is True
    finally:
        await store.aclose()
        server.stop()


async def test_mongo_a_bad_uri_fails_on_first_use_as_a_store_error() -> None:
    store = MongoThreadStore("http://not-mongodb.example/")  # constructing it does no I/O, checks nothing
    with pytest.raises(StoreError, match="InvalidURI"):
        await store.info("t1")
    assert (await store.check())["reachable"] is False
    await store.aclose()


async def test_mongo_errors_and_reports_never_show_the_password(caplog: pytest.LogCaptureFixture) -> None:
    uri = f"mongodb://freva:{PASSWORD}@127.0.0.1:{free_port()}/?authSource=admin"
    store = MongoThreadStore(uri, server_selection_timeout=0.3)
    try:
        with pytest.raises(StoreError) as failed:
            await store.info("t1")
        report = await store.check()
        assert (report["backend"], report["reachable"], report["write_test"]) == ("mongodb", False, False)
        assert report["detail"]
        assert store.shown_uri.startswith("mongodb://127.0.0.1:")
        for text in (str(failed.value), json.dumps(report), caplog.text, store.shown_uri):
            assert PASSWORD not in text and urllib.parse.unquote(PASSWORD) not in text
    finally:
        await store.aclose()


async def test_mongo_check_reports_indexes_and_a_write(mongo: Mongo) -> None:
    await mongo.store.ensure_indexes()  # again: a no-op
    report = await mongo.store.check()
    assert (report["reachable"], report["write_test"]) == (True, True)
    assert {
        "threads.thread_id_1",
        "threads.user_id_1_date_-1",
        "userfeedback.thread_id_1_entry_index_1",
        "threads.leases.expires_at_1",
    } <= set(report["indexes"])
    assert "MongoDB" in report["detail"]
    assert await mongo.db["threads.leases"].count_documents({}) == 0  # the probe is gone
    ttl = (await mongo.db["threads.leases"].index_information())["expires_at_1"]
    assert ttl["expireAfterSeconds"] > 0
    unique = (await mongo.threads.index_information())["thread_id_1"]
    assert unique.get("unique") is True


async def test_mongo_store_is_closed_after_aclose(mongo: Mongo) -> None:
    await _thread(mongo.store, "t1", ALICE, "", "last words")
    await mongo.store.aclose()
    with pytest.raises(StoreError, match="closed"):
        await mongo.store.read("t1")
    doc = await mongo.threads.find_one({"thread_id": "t1"})
    assert doc is not None and doc["content"] == [{"variant": "User", "content": "last words"}]


# -- getthread on MongoDB: images come back in line -------------------------------------------------


@pytest.fixture
def route_database() -> str:
    return unique_database()


@pytest.fixture
def freva_config(mongo_server: MongoServer, route_database: str) -> dict[str, Any]:
    return {"mongodb_uri": mongo_server.uri, "mongodb_database_name": route_database, "mongodb_image_threshold": 1000}


async def test_getthread_puts_a_gridfs_image_back_in_line(
    api: Callable[..., Any], mongo_server: MongoServer, route_database: str
) -> None:
    image = "P" * 5000
    store = MongoThreadStore(mongo_server.uri, route_database, image_threshold=1000)
    try:
        await _thread(store, "withimage", ALICE, "plot", "plot it")
        await store.append("withimage", Variant("Image", image, id="c_0"))
        await store.sync()
        response = await api("getthread", thread_id="withimage")
        assert json.loads(response.body) == [
            {"variant": "User", "content": "plot it"},
            {"variant": "Image", "content": image, "id": "c_0"},
        ]
    finally:
        await store.aclose()
