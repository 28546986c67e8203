"""The thread store contract, run against every embedded backend."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from freva_gpt_ext.storage import (
    MemoryThreadStore,
    SQLiteThreadStore,
    StoreError,
    ThreadInfo,
    ThreadStore,
)
from freva_gpt_ext.storage.sqlite import SCHEMA_VERSION
from freva_gpt_ext.variants import Variant

ALICE = "alice"
BOB = "bob"


@pytest.fixture(params=["sqlite", "memory"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, jp_asyncio_loop: asyncio.AbstractEventLoop
) -> Iterator[ThreadStore]:
    made: ThreadStore = (
        SQLiteThreadStore(tmp_path / "db" / "threads.sqlite") if request.param == "sqlite" else MemoryThreadStore()
    )
    yield made
    jp_asyncio_loop.run_until_complete(made.aclose())


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "threads.sqlite"


@pytest.fixture
def sqlite_pair(
    db_path: Path, jp_asyncio_loop: asyncio.AbstractEventLoop
) -> Iterator[tuple[SQLiteThreadStore, SQLiteThreadStore]]:
    """Two stores on one file: two Jupyter servers sharing a data dir."""
    first = SQLiteThreadStore(db_path)
    second = SQLiteThreadStore(db_path)
    yield first, second
    jp_asyncio_loop.run_until_complete(first.aclose())
    jp_asyncio_loop.run_until_complete(second.aclose())


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
    await store.append("t1", Variant("ServerHint", {"thread_id": "t1", "n": 3}))
    await store.append("t1", Variant("Code", ["x = 1", "legacy_id"]))
    await store.append("t1", Variant("ToolCall", '{"q": "cdo"}', id="call_2", tool_name="get_context"))
    expected = [
        Variant("User", "plot ERA5"),
        Variant("Assistant", "Hello world", model="gpt-x"),
        Variant("Code", '{"code": "print(1)"}', id="call_1"),
        Variant("CodeOutput", "1\n", id="call_1"),
        Variant("ServerHint", {"thread_id": "t1", "n": 3}),
        Variant("Code", ["x = 1", "legacy_id"]),
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
    await store.append("t1", Variant("ServerHint", {"a": 1}))
    await store.extend_last("t1", "x")
    await store.sync()
    await store.extend_last("t1", "y")
    assert await store.read("t1") == [Variant("ServerHint", {"a": 1})]


async def test_writes_to_unknown_thread_fail(store: ThreadStore) -> None:
    with pytest.raises(StoreError, match="nope"):
        await store.append("nope", Variant("User", "hi"))
    with pytest.raises(StoreError, match="nope"):
        await store.extend_last("nope", "hi")
    assert await store.read("nope") == []


async def test_stored_state_cannot_be_mutated_by_callers(store: ThreadStore) -> None:
    await store.create("t1", ALICE)
    hint = Variant("ServerHint", {"model": "a"})
    await store.append("t1", hint)
    hint.content["model"] = "changed by caller"
    first = await store.read("t1")
    first[0].content["model"] = "changed by reader"
    first[0].feedback = "up"
    assert await store.read("t1") == [Variant("ServerHint", {"model": "a"})]


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


# -- SQLite across processes ------------------------------------------------------------------------


async def test_sqlite_uses_wal(db_path: Path) -> None:
    store = SQLiteThreadStore(db_path)
    try:
        with contextlib.closing(sqlite3.connect(db_path)) as probe:
            assert probe.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        await store.aclose()


async def test_sqlite_second_instance_sees_synced_data_lease_and_stop(
    sqlite_pair: tuple[SQLiteThreadStore, SQLiteThreadStore],
) -> None:
    first, second = sqlite_pair
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


async def test_sqlite_flushes_without_sync_after_yielding(
    sqlite_pair: tuple[SQLiteThreadStore, SQLiteThreadStore],
) -> None:
    first, second = sqlite_pair
    await first.create("t1", ALICE, "auto")
    await first.append("t1", Variant("User", "hello"))
    await first.extend_last("t1", " there")
    # Nobody syncs: the writer commits on its own, soon; another store can only be polled.
    async with asyncio.timeout(10):
        while await second.read("t1") != [Variant("User", "hello there")]:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    page, total = await second.list_threads(ALICE, 10, 0)
    assert (_ids(page), total) == (["t1"], 1)


async def test_sqlite_two_writers_append_to_one_thread_in_turn(
    sqlite_pair: tuple[SQLiteThreadStore, SQLiteThreadStore],
) -> None:
    first, second = sqlite_pair
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
    expected = [Variant("User", "turn 1"), Variant("User", "turn 2"), Variant("Assistant", "turn 3!?")]
    assert await second.read("t1") == expected
    assert await first.read("t1") == expected


async def test_sqlite_delete_in_other_process_drops_pending_appends(
    sqlite_pair: tuple[SQLiteThreadStore, SQLiteThreadStore],
) -> None:
    first, second = sqlite_pair
    await first.create("t1", ALICE)
    await first.sync()
    await second.delete("t1")
    await first.append("t1", Variant("User", "late"))
    await first.sync()
    assert await second.read("t1") == []
    assert await first.info("t1") is None


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
        assert probe.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    # A database written by a newer server is refused, not damaged.
    with contextlib.closing(sqlite3.connect(db_path)) as newer:
        newer.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="newer"):
        SQLiteThreadStore(db_path)


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
