"""The embedded thread store: one SQLite file that every server process on the same data dir shares.

SQLite never runs on the event loop. Writes run in order on one writer thread with its own connection;
reads run on a second, read-only connection in a reader thread (under WAL a reader never waits for a
writer, not even for another process holding the write lock).

Stream fragments arrive many times a second, so `create`, `append` and `extend_last` are buffered on the
loop and handed to the writer as one transaction whenever it is free: while it is busy (or waits for a lock
held by another process) fragments keep coalescing. A read waits only for the buffered writes it could
see (of its thread, or of its user's threads), so a stalled write delays no one else. Leases and the stop
flag are never buffered: another process must see them at once.

A lock held by another process delays writes up to `busy_timeout` seconds; beyond, they fail. A write that
fails is dropped with a logged error and reported to the next `sync()` of its thread as `StoreError`; it
never holds up later writes, and one thread's bad write does not fail another thread's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..variants import ASSISTANT, CODE, USER, Variant
from .base import StoreError, ThreadInfo, clean_text, stored_json

log = logging.getLogger(__name__)
T = TypeVar("T")

# 2 added threads.fork_from_index; 3 added variants.meta.
SCHEMA_VERSION = 3
DEFAULT_BUSY_TIMEOUT_S = 30.0
# Bound of the cache of thread ids known to exist (it only saves one indexed lookup per thread).
_KNOWN_LIMIT = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS threads (
    thread_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    topic TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL,
    fork_from_index INTEGER
);
CREATE INDEX IF NOT EXISTS threads_by_user ON threads (user_id, updated DESC);
CREATE TABLE IF NOT EXISTS variants (
    thread_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    variant TEXT NOT NULL,
    content TEXT,
    is_json INTEGER NOT NULL DEFAULT 0,
    vid TEXT,
    tool_name TEXT,
    model TEXT,
    feedback TEXT,
    meta TEXT,
    PRIMARY KEY (thread_id, seq)
);
CREATE TABLE IF NOT EXISTS leases (
    thread_id TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires REAL NOT NULL,
    stop INTEGER NOT NULL DEFAULT 0
);
"""

# Statements that take a database of schema version N (the key) to N + 1.
_MIGRATIONS: dict[int, list[str]] = {
    1: ["ALTER TABLE threads ADD COLUMN fork_from_index INTEGER"],
    # A JSON object of the variant's object fields (`cell_context`, `kernel`); NULL when it has none.
    2: ["ALTER TABLE variants ADD COLUMN meta TEXT"],
}

_INSERT_THREAD = """
INSERT OR IGNORE INTO threads (thread_id, user_id, topic, created, updated) VALUES (?, ?, ?, ?, ?)
"""
# The sequence number is computed inside the transaction, not cached in memory: another process may have
# appended to the thread since (a second server streaming a later turn), and a cached number would collide.
# An append to a thread deleted meanwhile (by another process) is dropped instead of left orphaned.
_INSERT_VARIANT = """
INSERT INTO variants (thread_id, seq, variant, content, is_json, vid, tool_name, model, feedback, meta)
SELECT :tid, (SELECT COALESCE(MAX(seq), -1) + 1 FROM variants WHERE thread_id = :tid),
       :variant, :content, :is_json, :vid, :tool_name, :model, :feedback, :meta
WHERE EXISTS (SELECT 1 FROM threads WHERE thread_id = :tid)
"""
_EXTEND_LAST = """
UPDATE variants SET content = content || :text
WHERE thread_id = :tid AND is_json = 0
  AND seq = (SELECT MAX(seq) FROM variants WHERE thread_id = :tid)
"""
# A thread written in one step (a fork, a restored thread), variants numbered by the caller.
_INSERT_WHOLE_THREAD = """
INSERT INTO threads (thread_id, user_id, topic, created, updated, fork_from_index) VALUES (?, ?, ?, ?, ?, ?)
"""
_INSERT_NUMBERED_VARIANT = """
INSERT INTO variants (thread_id, seq, variant, content, is_json, vid, tool_name, model, feedback, meta)
VALUES (:tid, :seq, :variant, :content, :is_json, :vid, :tool_name, :model, :feedback, :meta)
"""
_TOUCH = "UPDATE threads SET updated = MAX(updated, ?) WHERE thread_id = ?"
_SELECT_INFO = "SELECT thread_id, user_id, topic, updated, fork_from_index FROM threads"
_SEARCH = (
    _SELECT_INFO
    + """ AS t WHERE user_id = :user AND ({topic} OR EXISTS (
    SELECT 1 FROM variants AS v
    WHERE v.thread_id = t.thread_id AND v.variant IN (:user_variant, :assistant_variant)
      AND v.is_json = 0 AND {content}))
ORDER BY updated DESC, thread_id"""
)
_FEEDBACK_VARIANT_NAMES = (ASSISTANT, CODE)


@dataclass(slots=True)
class _Create:
    thread_id: str
    user_id: str
    topic: str
    at: float


@dataclass(slots=True)
class _Append:
    thread_id: str
    row: dict[str, Any]
    at: float
    # Text of `extend_last` calls that came before this append was written.
    more: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Extend:
    thread_id: str
    parts: list[str]


_Op = _Create | _Append | _Extend


def _is_busy(exc: BaseException) -> bool:
    # SQLITE_BUSY / SQLITE_LOCKED and their extended codes: another connection holds the lock.
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.OperationalError) and code is not None and code & 0xFF in (5, 6)


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    # BEGIN IMMEDIATE takes the write lock up front instead of failing to upgrade a read lock under contention.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def _encode(content: Any) -> tuple[str, int]:
    # Text stays raw so a streamed run is extended in SQL (`content || ?`) without reading it back.
    if isinstance(content, str):
        return clean_text(content), 0
    return stored_json(content), 1


def _clean_optional(text: str | None) -> str | None:
    return None if text is None else clean_text(text)


def _row(thread_id: str, variant: Variant) -> dict[str, Any]:
    content, is_json = _encode(variant.content)
    return {
        "tid": thread_id,
        "variant": variant.variant,
        "content": content,
        "is_json": is_json,
        "vid": _clean_optional(variant.id),
        "tool_name": _clean_optional(variant.tool_name),
        "model": _clean_optional(variant.model),
        "feedback": _clean_optional(variant.feedback),
        "meta": stored_json(meta) if (meta := _meta(variant)) else None,
    }


def _meta(variant: Variant) -> dict[str, Any]:
    return {
        name: value
        for name, value in (("cell_context", variant.cell_context), ("kernel", variant.kernel))
        if value is not None
    }


def _decode(content: str | None, is_json: int) -> Any:
    return json.loads(content) if is_json and content is not None else content


def _variant(name: str, content: Any, is_json: int, vid: Any, tool: Any, model: Any, fb: Any, meta: Any) -> Variant:
    fields = json.loads(meta) if meta else {}
    return Variant(
        name,
        _decode(content, is_json),
        id=vid,
        tool_name=tool,
        model=model,
        feedback=fb,
        cell_context=fields.get("cell_context"),
        kernel=fields.get("kernel"),
    )


def _like_pattern(query: str) -> str:
    escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _casefold_contains(text: str | None, needle: str) -> bool:
    return text is not None and needle in text.casefold()


def _infos(rows: Sequence[tuple[Any, ...]]) -> list[ThreadInfo]:
    return [ThreadInfo(str(r[0]), str(r[1]), str(r[2]), float(r[3]), r[4]) for r in rows]


class _Worker:
    """One thread that runs submitted calls in order and hands their results back to the event loop.

    A plain queue and `call_soon_threadsafe`: half the cost of a `ThreadPoolExecutor` round trip, which
    matters for a store that commits every few milliseconds while an answer streams.
    """

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.Future[Any]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, work: Callable[[], T]) -> asyncio.Future[T]:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put((work, future))
        return future

    def stop(self) -> None:
        """End the thread. Called once its last call is done: it has nothing left but to return."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            work, future = item
            try:
                outcome: tuple[Any, BaseException | None] = (work(), None)
            except Exception as exc:
                outcome = (None, exc)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                future.get_loop().call_soon_threadsafe(_settle, future, *outcome)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():  # the caller gave up waiting; the work was done all the same
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class SQLiteThreadStore:
    """`ThreadStore` over one SQLite file; safe to share between processes on one machine."""

    max_thread_bytes: int | None = None

    def __init__(self, path: Path | str, busy_timeout: float = DEFAULT_BUSY_TIMEOUT_S) -> None:
        self._path = Path(path)
        self._busy_timeout = busy_timeout
        # Loop side: the batch being buffered, numbered; batches are written in order of their numbers.
        self._ops: list[_Op] = []
        # Per thread: the buffered op that holds the text of its last variant, so consecutive
        # `extend_last` calls coalesce into one string instead of one UPDATE each.
        self._tail: dict[str, _Append | _Extend] = {}
        self._batch = 1
        self._written = 0  # the last batch the writer finished
        self._in_flight = 0
        self._flush_scheduled = False
        self._batch_done: dict[int, asyncio.Future[None]] = {}
        # The last batch holding a write to a thread / to a thread of a user: what a read has to wait for.
        self._pending_threads: dict[str, int] = {}
        self._pending_users: dict[str, int] = {}
        self._failed: dict[str, StoreError] = {}  # thread -> its dropped write, until a `sync` reports it
        self._owners: dict[str, str] = {}  # threads known to exist -> their user (saves a lookup per write)
        self._last_time = 0.0
        self._closed = False
        # Writer side (touched only by the writer thread): threads whose last variant was dropped, so a
        # later `extend_last` must not lengthen the variant before it.
        self._lost_tails: set[str] = set()
        self._conn = self._open()
        self._reader: sqlite3.Connection | None = None
        self._writer = _Worker("frevagpt-store-writer")
        self._reader_thread = _Worker("frevagpt-store-reader")

    @property
    def path(self) -> Path:
        return self._path

    def _open(self) -> sqlite3.Connection:
        # At start-up, before the event loop serves anyone.
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self._path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"Cannot open the thread database {self._path}: {exc}") from exc
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning(
                    "The file system of %s refuses WAL (journal mode %s): readers will wait for writers.",
                    self._path,
                    mode,
                )
            conn.execute("PRAGMA synchronous = NORMAL")
            with _transaction(conn):
                self._migrate(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"Cannot open the thread database {self._path}: {exc}") from exc
        except StoreError:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        # Inside the write transaction: of several servers starting on one file, one migrates, the others
        # then see the new version.
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"The thread database {self._path} has schema version {version}, newer than this "
                f"server understands ({SCHEMA_VERSION}); upgrade freva-gpt-ext."
            )
        if version == SCHEMA_VERSION:
            return
        if version == 0:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
        else:
            for step in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[step]:
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- plumbing ---------------------------------------------------------------------------------

    def _error(self, exc: BaseException) -> StoreError:
        """What a client may read of a failure: never the server's paths (the log names the file)."""
        if _is_busy(exc):
            text = f"the database stayed locked by another process for more than {self._busy_timeout:g} s"
        else:
            text = f"the database failed ({type(exc).__name__}: {exc})"
        log.error("The thread database %s failed: %s", self._path, text)
        return StoreError(text)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the thread store is closed (the server is stopping)")

    def _now(self) -> float:
        # Strictly increasing within the process, so activity order is exact even for writes that fall
        # in the same clock tick.
        now = max(time.time(), self._last_time + 1e-6)
        self._last_time = now
        return now

    async def _in_thread(self, worker: _Worker, work: Callable[[], T]) -> T:
        self._check_open()

        def guarded() -> T:
            try:
                return work()
            except StoreError:
                raise
            except Exception as exc:  # sqlite3 errors, and text SQLite cannot bind
                raise self._error(exc) from exc

        return await worker.submit(guarded)

    async def _write(self, work: Callable[[sqlite3.Connection], T], *, after_buffered: bool = True) -> T:
        """Run `work` in one transaction on the writer thread, after the writes buffered so far."""
        if after_buffered:
            self._submit()

        def transaction() -> T:
            with _transaction(self._conn):
                return work(self._conn)

        return await self._in_thread(self._writer, transaction)

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await self._in_thread(self._reader_thread, lambda: work(self._read_connection()))

    def _read_connection(self) -> sqlite3.Connection:
        if self._reader is None:
            uri = self._path.resolve().as_uri() + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, timeout=self._busy_timeout, isolation_level=None)
            conn.create_function("casefold_contains", 2, _casefold_contains, deterministic=True)
            self._reader = conn
        return self._reader

    def _remember(self, thread_id: str, user_id: str) -> None:
        if len(self._owners) >= _KNOWN_LIMIT:
            self._owners.clear()
        self._owners[thread_id] = user_id

    async def _require_thread(self, thread_id: str) -> None:
        if thread_id in self._owners:
            return
        await self._wait(self._pending_threads.get(thread_id))
        rows = await self._read(
            lambda c: c.execute("SELECT user_id FROM threads WHERE thread_id = ?", (thread_id,)).fetchall()
        )
        if not rows:
            raise StoreError(f"Thread {thread_id!r} does not exist; create it first.")
        self._remember(thread_id, str(rows[0][0]))

    # -- the write buffer -------------------------------------------------------------------------

    def _buffer(self, thread_id: str, op: _Op | None) -> None:
        """Note a buffered write to `thread_id` (`op` joins the batch unless it was merged into one)."""
        self._check_open()
        if op is not None:
            self._ops.append(op)
        batch = self._batch
        if batch not in self._batch_done:
            self._batch_done[batch] = asyncio.get_running_loop().create_future()
        self._pending_threads[thread_id] = batch
        user = self._owners.get(thread_id)
        if user is not None:
            self._pending_users[user] = batch
        if not self._flush_scheduled and not self._in_flight:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._auto_flush)

    def _auto_flush(self) -> None:
        self._flush_scheduled = False
        # While a batch is being written, writes keep coalescing; its completion submits them.
        if not self._in_flight:
            self._submit()

    def _submit(self) -> None:
        """Hand the buffered writes to the writer thread as one batch."""
        if not self._ops:
            return
        ops, batch = self._ops, self._batch
        self._ops = []
        self._tail.clear()
        self._batch += 1
        self._in_flight += 1
        future = self._writer.submit(lambda: self._write_batch(ops))
        future.add_done_callback(lambda f: self._finished(batch, f))

    def _finished(self, batch: int, future: asyncio.Future[dict[str, StoreError]]) -> None:
        self._in_flight -= 1
        self._written = batch
        failed = future.result()  # `_write_batch` reports failures, it never raises
        self._failed.update(failed)
        self._pending_threads = {t: b for t, b in self._pending_threads.items() if b > batch}
        self._pending_users = {u: b for u, b in self._pending_users.items() if b > batch}
        done = self._batch_done.pop(batch, None)
        if done is not None and not done.done():
            done.set_result(None)
        if self._ops and not self._in_flight:
            self._submit()

    async def _wait(self, batch: int | None) -> None:
        """Until the writer has finished `batch` (written or dropped); a buffered batch is on its way already."""
        if batch is None or batch <= self._written:
            return
        done = self._batch_done.get(batch)
        if done is not None:
            await asyncio.shield(done)

    # -- the writer thread ------------------------------------------------------------------------

    def _write_batch(self, ops: list[_Op]) -> dict[str, StoreError]:
        """Write `ops` in one transaction; returns the threads whose writes were dropped."""
        try:
            with _transaction(self._conn):
                self._apply(ops, isolated=False)
            return {}
        except Exception as exc:
            if _is_busy(exc):
                return self._drop(ops, exc)
        # One op failed; find it: each op in its own savepoint, so the others are still written.
        try:
            with _transaction(self._conn):
                return self._apply(ops, isolated=True)
        except Exception as exc:
            return self._drop(ops, exc)

    def _apply(self, ops: list[_Op], *, isolated: bool) -> dict[str, StoreError]:
        conn = self._conn
        failed: dict[str, StoreError] = {}
        touched: dict[str, float] = {}
        for op in ops:
            if isolated:
                conn.execute("SAVEPOINT op")
            try:
                self._apply_one(conn, op, touched)
            except Exception as exc:
                if not isolated or _is_busy(exc):
                    raise
                conn.execute("ROLLBACK TO op")
                failed[op.thread_id] = self._error(exc)
                if not isinstance(op, _Create):
                    self._lost_tails.add(op.thread_id)
                log.error("Dropped a write to thread %s", op.thread_id)
            if isolated:
                conn.execute("RELEASE op")
        for thread_id, at in touched.items():
            conn.execute(_TOUCH, (at, thread_id))
        return failed

    def _apply_one(self, conn: sqlite3.Connection, op: _Op, touched: dict[str, float]) -> None:
        if isinstance(op, _Create):
            conn.execute(_INSERT_THREAD, (op.thread_id, op.user_id, op.topic, op.at, op.at))
        elif isinstance(op, _Append):
            row = op.row
            if op.more:
                row = {**row, "content": row["content"] + "".join(op.more)}
            conn.execute(_INSERT_VARIANT, row)
            touched[op.thread_id] = op.at
            self._lost_tails.discard(op.thread_id)
        elif op.thread_id not in self._lost_tails:
            conn.execute(_EXTEND_LAST, {"tid": op.thread_id, "text": "".join(op.parts)})

    def _drop(self, ops: list[_Op], exc: BaseException) -> dict[str, StoreError]:
        error = self._error(exc)
        threads = {op.thread_id for op in ops}
        self._lost_tails.update(op.thread_id for op in ops if not isinstance(op, _Create))
        log.error("Dropped %d buffered writes to %d threads", len(ops), len(threads))
        return dict.fromkeys(threads, error)

    # -- buffered writes --------------------------------------------------------------------------

    async def create(self, thread_id: str, user_id: str, topic: str = "") -> None:
        self._check_open()
        user_id = clean_text(user_id)
        self._remember(thread_id, user_id)
        self._buffer(thread_id, _Create(thread_id, user_id, clean_text(topic), self._now()))

    async def append(self, thread_id: str, variant: Variant) -> None:
        await self._require_thread(thread_id)
        op = _Append(thread_id, _row(thread_id, variant), self._now())
        self._tail[thread_id] = op
        self._buffer(thread_id, op)

    async def extend_last(self, thread_id: str, text: str) -> None:
        await self._require_thread(thread_id)
        if not text:
            return
        text = clean_text(text)
        tail = self._tail.get(thread_id)
        if isinstance(tail, _Append):
            # Only string content is extended, the same rule the SQL applies through `is_json = 0`.
            if not tail.row["is_json"]:
                tail.more.append(text)
            self._buffer(thread_id, None)
        elif tail is not None:
            tail.parts.append(text)
            self._buffer(thread_id, None)
        else:
            op = _Extend(thread_id, [text])
            self._tail[thread_id] = op
            self._buffer(thread_id, op)

    async def sync(self, thread_id: str | None = None) -> None:
        self._check_open()
        if thread_id is None:
            await self._wait(self._batch if self._ops else self._batch - 1)
            error = next(iter(self._failed.values()), None)
            self._failed.clear()
        else:
            await self._wait(self._pending_threads.get(thread_id))
            error = self._failed.pop(thread_id, None)
        if error is not None:
            raise error

    # -- reads: they wait only for the buffered writes they could see ------------------------------

    async def info(self, thread_id: str) -> ThreadInfo | None:
        await self._wait(self._pending_threads.get(thread_id))
        rows = await self._read(lambda c: c.execute(_SELECT_INFO + " WHERE thread_id = ?", (thread_id,)).fetchall())
        return _infos(rows)[0] if rows else None

    async def read(self, thread_id: str) -> list[Variant]:
        await self._wait(self._pending_threads.get(thread_id))
        rows = await self._read(
            lambda c: c.execute(
                "SELECT variant, content, is_json, vid, tool_name, model, feedback, meta FROM variants "
                "WHERE thread_id = ? ORDER BY seq",
                (thread_id,),
            ).fetchall()
        )
        try:
            return [_variant(*row) for row in rows]
        except ValueError as exc:
            raise StoreError(f"Thread {thread_id!r} holds undecodable content: {exc}") from exc

    async def list_threads(self, user_id: str, limit: int, offset: int) -> tuple[list[ThreadInfo], int]:
        await self._wait(self._pending_users.get(user_id))

        def page(conn: sqlite3.Connection) -> tuple[list[ThreadInfo], int]:
            # One read transaction: the count and the page come from the same snapshot.
            with contextlib.closing(conn.cursor()) as cur:
                cur.execute("BEGIN")
                try:
                    total = cur.execute("SELECT COUNT(*) FROM threads WHERE user_id = ?", (user_id,)).fetchone()[0]
                    rows = cur.execute(
                        _SELECT_INFO + " WHERE user_id = ? ORDER BY updated DESC, thread_id LIMIT ? OFFSET ?",
                        (user_id, max(0, limit), max(0, offset)),
                    ).fetchall()
                finally:
                    cur.execute("COMMIT")
            return _infos(rows), int(total)

        return await self._read(page)

    async def search(self, user_id: str, query: str, limit: int, offset: int) -> tuple[list[ThreadInfo], int]:
        await self._wait(self._pending_users.get(user_id))
        query = clean_text(query)
        params: dict[str, Any] = {"user": user_id, "user_variant": USER, "assistant_variant": ASSISTANT}
        if query.isascii():
            # LIKE folds ASCII case in C, the fast path for almost every query.
            sql = _SEARCH.format(topic="topic LIKE :pattern ESCAPE '\\'", content="v.content LIKE :pattern ESCAPE '\\'")
            params["pattern"] = _like_pattern(query)
        else:
            # LIKE folds only ASCII; `Ä` must find `ä`.
            sql = _SEARCH.format(
                topic="casefold_contains(topic, :needle)", content="casefold_contains(v.content, :needle)"
            )
            params["needle"] = query.casefold()
        rows = await self._read(lambda c: c.execute(sql, params).fetchall())
        start = max(0, offset)
        return _infos(rows[start : start + max(0, limit)]), len(rows)

    # -- direct writes: after everything buffered before them -------------------------------------

    async def set_topic(self, thread_id: str, topic: str) -> None:
        topic = clean_text(topic)
        await self._write(lambda c: c.execute("UPDATE threads SET topic = ? WHERE thread_id = ?", (topic, thread_id)))

    async def delete(self, thread_id: str) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM variants WHERE thread_id = ?", (thread_id,))
            conn.execute("DELETE FROM leases WHERE thread_id = ?", (thread_id,))
            conn.execute("DELETE FROM threads WHERE thread_id = ?", (thread_id,))

        await self._write(delete)
        self._owners.pop(thread_id, None)

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
        user_id = clean_text(user_id)
        rows = [{**_row(new_id, v), "seq": seq} for seq, v in enumerate(variants)]
        now = self._now()
        thread = (new_id, user_id, clean_text(topic), now, now, fork_from_index)

        def fork(conn: sqlite3.Connection) -> None:
            conn.execute(_INSERT_WHOLE_THREAD, thread)
            conn.executemany(_INSERT_NUMBERED_VARIANT, rows)

        try:
            await self._write(fork)
        except StoreError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                raise StoreError(f"Cannot fork {source_id!r}: thread {new_id!r} already exists.") from exc
            raise
        self._remember(new_id, user_id)

    async def owners(self) -> list[str]:
        await self._wait(self._batch if self._ops else self._batch - 1)  # a buffered create may add an owner
        rows = await self._read(lambda c: c.execute("SELECT DISTINCT user_id FROM threads ORDER BY user_id").fetchall())
        return [str(r[0]) for r in rows]

    async def restore(self, info: ThreadInfo, variants: list[Variant]) -> bool:
        user_id = clean_text(info.user_id)
        rows = [{**_row(info.thread_id, v), "seq": seq} for seq, v in enumerate(variants)]
        thread = (info.thread_id, user_id, clean_text(info.topic), info.updated, info.updated, info.fork_from_index)

        def restore(conn: sqlite3.Connection) -> bool:
            if conn.execute("SELECT 1 FROM threads WHERE thread_id = ?", (info.thread_id,)).fetchone():
                return False
            conn.execute(_INSERT_WHOLE_THREAD, thread)
            conn.executemany(_INSERT_NUMBERED_VARIANT, rows)
            return True

        restored = await self._write(restore)
        if restored:
            self._remember(info.thread_id, user_id)
        return restored

    async def set_feedback(self, thread_id: str, index: int, feedback: str | None) -> bool:
        if index < 0:
            return False
        feedback = _clean_optional(feedback)

        def set_feedback(conn: sqlite3.Connection) -> bool:
            found = conn.execute(
                "SELECT seq, feedback FROM variants WHERE thread_id = ? AND variant IN (?, ?) "
                "ORDER BY seq LIMIT 1 OFFSET ?",
                (thread_id, *_FEEDBACK_VARIANT_NAMES, index),
            ).fetchone()
            if found is None or (feedback is None and found[1] is None):
                return False
            conn.execute(
                "UPDATE variants SET feedback = ? WHERE thread_id = ? AND seq = ?", (feedback, thread_id, found[0])
            )
            return True

        return await self._write(set_feedback)

    # -- leases: never buffered, another process must see them at once ----------------------------

    async def acquire_lease(self, thread_id: str, holder: str, ttl: float) -> bool:
        def acquire(conn: sqlite3.Connection) -> bool:
            now = time.time()
            cur = conn.execute(
                "INSERT INTO leases (thread_id, holder, expires, stop) VALUES (?, ?, ?, 0) "
                "ON CONFLICT (thread_id) DO UPDATE SET holder = excluded.holder, "
                "expires = excluded.expires, stop = 0 "
                "WHERE leases.holder = excluded.holder OR leases.expires <= ?",
                (thread_id, holder, now + ttl, now),
            )
            return cur.rowcount > 0

        return await self._write(acquire, after_buffered=False)

    async def renew_lease(self, thread_id: str, holder: str, ttl: float) -> bool:
        def renew(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE leases SET expires = ? WHERE thread_id = ? AND holder = ?",
                (time.time() + ttl, thread_id, holder),
            )
            return cur.rowcount > 0

        return await self._write(renew, after_buffered=False)

    async def release_lease(self, thread_id: str, holder: str) -> None:
        await self._write(
            lambda c: c.execute("DELETE FROM leases WHERE thread_id = ? AND holder = ?", (thread_id, holder)),
            after_buffered=False,
        )

    async def lease_holder(self, thread_id: str) -> str | None:
        rows = await self._read(
            lambda c: c.execute(
                "SELECT holder FROM leases WHERE thread_id = ? AND expires > ?", (thread_id, time.time())
            ).fetchall()
        )
        return str(rows[0][0]) if rows else None

    async def request_stop(self, thread_id: str) -> bool:
        def request(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE leases SET stop = 1 WHERE thread_id = ? AND expires > ?", (thread_id, time.time())
            )
            return cur.rowcount > 0

        return await self._write(request, after_buffered=False)

    async def stop_requested(self, thread_id: str) -> bool:
        rows = await self._read(
            lambda c: c.execute("SELECT stop FROM leases WHERE thread_id = ?", (thread_id,)).fetchall()
        )
        return bool(rows and rows[0][0])

    async def aclose(self) -> None:
        if self._closed:
            return
        # Every buffered write, also those buffered while waiting, is written; whatever fails now was logged
        # when it was dropped.
        while self._ops or self._written < self._batch - 1:
            self._submit()
            await self._wait(self._batch - 1)
        self._closed = True
        # Each connection is closed on its own thread, after whatever that thread still runs; the writer's
        # last, as only a writable connection can fold the write-ahead log into the file and remove it.
        await self._reader_thread.submit(self._close_reader)
        await self._writer.submit(self._conn.close)
        self._writer.stop()
        self._reader_thread.stop()

    def _close_reader(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(sqlite3.Error):
                self._reader.close()
            self._reader = None
