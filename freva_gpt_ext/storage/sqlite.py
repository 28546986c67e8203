"""The embedded thread store: one SQLite file that every server process on the same data dir shares.

Stream fragments arrive on the event loop many times a second, so writes are buffered in memory and
committed together: by `sync()`, by every read, and by a flush scheduled with `loop.call_soon` as soon as
the first buffered write arrives. Leases and the stop flag are never buffered: another process must see
them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..variants import ASSISTANT, CODE, USER, Variant
from .base import StoreError, ThreadInfo

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# Long enough to wait out another process's commit, short enough not to freeze the event loop for long.
BUSY_TIMEOUT_S = 5.0
# Bound of the cache of thread ids known to exist (it only saves one indexed lookup per thread).
_KNOWN_LIMIT = 10_000

_SCHEMA = f"""
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS threads (
    thread_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    topic TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL
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
    PRIMARY KEY (thread_id, seq)
);
CREATE TABLE IF NOT EXISTS leases (
    thread_id TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires REAL NOT NULL,
    stop INTEGER NOT NULL DEFAULT 0
);
PRAGMA user_version = {SCHEMA_VERSION};
COMMIT;
"""

_INSERT_THREAD = """
INSERT OR IGNORE INTO threads (thread_id, user_id, topic, created, updated) VALUES (?, ?, ?, ?, ?)
"""
# The sequence number is computed inside the transaction, not cached in memory: another process may have
# appended to the thread since (a second server streaming a later turn), and a cached number would collide.
# An append to a thread deleted meanwhile (by another process) is dropped instead of left orphaned.
_INSERT_VARIANT = """
INSERT INTO variants (thread_id, seq, variant, content, is_json, vid, tool_name, model, feedback)
SELECT :tid, (SELECT COALESCE(MAX(seq), -1) + 1 FROM variants WHERE thread_id = :tid),
       :variant, :content, :is_json, :vid, :tool_name, :model, :feedback
WHERE EXISTS (SELECT 1 FROM threads WHERE thread_id = :tid)
"""
_EXTEND_LAST = """
UPDATE variants SET content = content || :text
WHERE thread_id = :tid AND is_json = 0
  AND seq = (SELECT MAX(seq) FROM variants WHERE thread_id = :tid)
"""
_TOUCH = "UPDATE threads SET updated = MAX(updated, ?) WHERE thread_id = ?"
_SELECT_INFO = "SELECT thread_id, user_id, topic, updated FROM threads"
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


def _encode(content: Any) -> tuple[str, int]:
    # Text stays raw so a streamed run is extended in SQL (`content || ?`) without reading it back.
    if isinstance(content, str):
        return content, 0
    try:
        return json.dumps(content, ensure_ascii=False, allow_nan=False), 1
    except (TypeError, ValueError) as exc:
        raise StoreError(f"Variant content cannot be stored: {exc}") from exc


def _decode(content: str | None, is_json: int) -> Any:
    return json.loads(content) if is_json and content is not None else content


def _like_pattern(query: str) -> str:
    escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _casefold_contains(text: str | None, needle: str) -> bool:
    return text is not None and needle in text.casefold()


def _infos(rows: Sequence[tuple[Any, ...]]) -> list[ThreadInfo]:
    return [ThreadInfo(str(r[0]), str(r[1]), str(r[2]), float(r[3])) for r in rows]


class SQLiteThreadStore:
    """`ThreadStore` over one SQLite file; safe to share between processes on one machine."""

    def __init__(self, path: Path | str) -> None:
        self._path = Path(path)
        self._ops: list[_Create | _Append | _Extend] = []
        # Per thread: the buffered op that holds the text of its last variant, so consecutive
        # `extend_last` calls coalesce into one string instead of one UPDATE each.
        self._tail: dict[str, _Append | _Extend] = {}
        self._known: set[str] = set()
        self._flush_scheduled = False
        self._last_time = 0.0
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._closed = False
        self._conn = self._open()

    @property
    def path(self) -> Path:
        return self._path

    def _open(self) -> sqlite3.Connection:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode: transactions are opened explicitly with BEGIN IMMEDIATE, so a writer takes
            # the write lock up front instead of failing to upgrade a read lock under contention.
            conn = sqlite3.connect(self._path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
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
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"The thread database {self._path} has schema version {version}, newer than this "
                    f"server understands ({SCHEMA_VERSION}); upgrade freva-gpt-ext."
                )
            conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"Cannot open the thread database {self._path}: {exc}") from exc
        except StoreError:
            conn.close()
            raise
        return conn

    # -- plumbing ---------------------------------------------------------------------------------

    def _error(self, exc: sqlite3.Error) -> StoreError:
        return StoreError(f"The thread database {self._path} failed: {exc}")

    def _db(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"The thread database {self._path} is closed.")
        return self._conn

    def _now(self) -> float:
        # Strictly increasing within the process, so activity order is exact even for writes that fall
        # in the same clock tick.
        now = max(time.time(), self._last_time + 1e-6)
        self._last_time = now
        return now

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._db()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise self._error(exc) from exc
            raise

    def _query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._db().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _remember(self, thread_id: str) -> None:
        if len(self._known) >= _KNOWN_LIMIT:
            self._known.clear()
        self._known.add(thread_id)

    def _require_thread(self, thread_id: str) -> None:
        if thread_id in self._known:
            return
        if not self._query("SELECT 1 FROM threads WHERE thread_id = ?", (thread_id,)):
            raise StoreError(f"Thread {thread_id!r} does not exist; create it first.")
        self._remember(thread_id)

    def _schedule_flush(self) -> None:
        if self._flush_scheduled:
            return
        self._flush_scheduled = True
        asyncio.get_running_loop().call_soon(self._auto_flush)

    def _auto_flush(self) -> None:
        self._flush_scheduled = False
        if self._closed:
            return
        try:
            self._flush()
        except StoreError:
            # Nobody awaits this callback; the writes stay buffered and the next write or sync retries.
            log.exception("Writing buffered thread variants failed; will retry")

    def _flush(self) -> None:
        if not self._ops:
            return
        touched: dict[str, float] = {}
        with self._write() as conn:
            for op in self._ops:
                if isinstance(op, _Create):
                    conn.execute(_INSERT_THREAD, (op.thread_id, op.user_id, op.topic, op.at, op.at))
                elif isinstance(op, _Append):
                    row = op.row
                    if op.more:
                        row = {**row, "content": row["content"] + "".join(op.more)}
                    conn.execute(_INSERT_VARIANT, row)
                    touched[op.thread_id] = op.at
                else:
                    conn.execute(_EXTEND_LAST, {"tid": op.thread_id, "text": "".join(op.parts)})
            for thread_id, at in touched.items():
                conn.execute(_TOUCH, (at, thread_id))
        # Cleared only after the commit: a failed flush keeps everything for the retry.
        self._ops = []
        self._tail.clear()

    # -- buffered writes --------------------------------------------------------------------------

    async def create(self, thread_id: str, user_id: str, topic: str = "") -> None:
        self._db()
        self._ops.append(_Create(thread_id, user_id, topic, self._now()))
        self._remember(thread_id)
        self._schedule_flush()

    async def append(self, thread_id: str, variant: Variant) -> None:
        self._require_thread(thread_id)
        content, is_json = _encode(variant.content)
        row = {
            "tid": thread_id,
            "variant": variant.variant,
            "content": content,
            "is_json": is_json,
            "vid": variant.id,
            "tool_name": variant.tool_name,
            "model": variant.model,
            "feedback": variant.feedback,
        }
        op = _Append(thread_id, row, self._now())
        self._ops.append(op)
        self._tail[thread_id] = op
        self._schedule_flush()

    async def extend_last(self, thread_id: str, text: str) -> None:
        self._require_thread(thread_id)
        if not text:
            return
        tail = self._tail.get(thread_id)
        if isinstance(tail, _Append):
            # Only string content is extended, the same rule the SQL applies through `is_json = 0`.
            if not tail.row["is_json"]:
                tail.more.append(text)
        elif tail is not None:
            tail.parts.append(text)
        else:
            op = _Extend(thread_id, [text])
            self._ops.append(op)
            self._tail[thread_id] = op
        self._schedule_flush()

    async def sync(self) -> None:
        self._flush()

    # -- reads and direct writes ------------------------------------------------------------------

    async def info(self, thread_id: str) -> ThreadInfo | None:
        self._flush()
        rows = self._query(_SELECT_INFO + " WHERE thread_id = ?", (thread_id,))
        return _infos(rows)[0] if rows else None

    async def read(self, thread_id: str) -> list[Variant]:
        self._flush()
        rows = self._query(
            "SELECT variant, content, is_json, vid, tool_name, model, feedback FROM variants "
            "WHERE thread_id = ? ORDER BY seq",
            (thread_id,),
        )
        try:
            return [
                Variant(name, _decode(content, is_json), id=vid, tool_name=tool, model=model, feedback=fb)
                for name, content, is_json, vid, tool, model, fb in rows
            ]
        except ValueError as exc:
            raise StoreError(f"Thread {thread_id!r} holds undecodable content: {exc}") from exc

    async def list_threads(self, user_id: str, limit: int, offset: int) -> tuple[list[ThreadInfo], int]:
        self._flush()
        total = self._query("SELECT COUNT(*) FROM threads WHERE user_id = ?", (user_id,))[0][0]
        rows = self._query(
            _SELECT_INFO + " WHERE user_id = ? ORDER BY updated DESC, thread_id LIMIT ? OFFSET ?",
            (user_id, max(0, limit), max(0, offset)),
        )
        return _infos(rows), int(total)

    async def search(self, user_id: str, query: str, limit: int, offset: int) -> tuple[list[ThreadInfo], int]:
        self._flush()
        rows = await asyncio.to_thread(self._search_rows, user_id, query)
        start = max(0, offset)
        return _infos(rows[start : start + max(0, limit)]), len(rows)

    def _search_rows(self, user_id: str, query: str) -> list[tuple[Any, ...]]:
        # Runs in a worker thread on its own read-only connection: under WAL it reads a consistent
        # snapshot while the event loop keeps writing.
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
        with self._read_lock:
            try:
                return self._read_connection().execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

    def _read_connection(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"The thread database {self._path} is closed.")
        if self._reader is None:
            uri = self._path.resolve().as_uri() + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
            conn.create_function("casefold_contains", 2, _casefold_contains, deterministic=True)
            self._reader = conn
        return self._reader

    async def set_topic(self, thread_id: str, topic: str) -> None:
        self._flush()
        with self._write() as conn:
            conn.execute("UPDATE threads SET topic = ? WHERE thread_id = ?", (topic, thread_id))

    async def delete(self, thread_id: str) -> None:
        self._flush()
        with self._write() as conn:
            conn.execute("DELETE FROM variants WHERE thread_id = ?", (thread_id,))
            conn.execute("DELETE FROM leases WHERE thread_id = ?", (thread_id,))
            conn.execute("DELETE FROM threads WHERE thread_id = ?", (thread_id,))
        self._known.discard(thread_id)

    async def fork(self, source_id: str, new_id: str, user_id: str, variants: list[Variant], topic: str) -> None:
        self._flush()
        rows = []
        for seq, v in enumerate(variants):
            content, is_json = _encode(v.content)
            rows.append((new_id, seq, v.variant, content, is_json, v.id, v.tool_name, v.model, v.feedback))
        now = self._now()
        try:
            with self._write() as conn:
                conn.execute(
                    "INSERT INTO threads (thread_id, user_id, topic, created, updated) VALUES (?, ?, ?, ?, ?)",
                    (new_id, user_id, topic, now, now),
                )
                conn.executemany(
                    "INSERT INTO variants (thread_id, seq, variant, content, is_json, vid, tool_name, model, "
                    "feedback) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
        except StoreError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                raise StoreError(f"Cannot fork {source_id!r}: thread {new_id!r} already exists.") from exc
            raise
        self._remember(new_id)

    async def set_feedback(self, thread_id: str, index: int, feedback: str | None) -> bool:
        if index < 0:
            return False
        self._flush()
        with self._write() as conn:
            found = conn.execute(
                "SELECT seq, feedback FROM variants WHERE thread_id = ? AND variant IN (?, ?) "
                "ORDER BY seq LIMIT 1 OFFSET ?",
                (thread_id, *_FEEDBACK_VARIANT_NAMES, index),
            ).fetchone()
            if found is None or (feedback is None and found[1] is None):
                return False
            conn.execute(
                "UPDATE variants SET feedback = ? WHERE thread_id = ? AND seq = ?",
                (feedback, thread_id, found[0]),
            )
        return True

    # -- leases: never buffered, another process must see them at once ----------------------------

    async def acquire_lease(self, thread_id: str, holder: str, ttl: float) -> bool:
        now = time.time()
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO leases (thread_id, holder, expires, stop) VALUES (?, ?, ?, 0) "
                "ON CONFLICT (thread_id) DO UPDATE SET holder = excluded.holder, "
                "expires = excluded.expires, stop = 0 "
                "WHERE leases.holder = excluded.holder OR leases.expires <= ?",
                (thread_id, holder, now + ttl, now),
            )
            return cur.rowcount > 0

    async def renew_lease(self, thread_id: str, holder: str, ttl: float) -> bool:
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE leases SET expires = ? WHERE thread_id = ? AND holder = ?",
                (time.time() + ttl, thread_id, holder),
            )
            return cur.rowcount > 0

    async def release_lease(self, thread_id: str, holder: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM leases WHERE thread_id = ? AND holder = ?", (thread_id, holder))

    async def lease_holder(self, thread_id: str) -> str | None:
        rows = self._query("SELECT holder FROM leases WHERE thread_id = ? AND expires > ?", (thread_id, time.time()))
        return str(rows[0][0]) if rows else None

    async def request_stop(self, thread_id: str) -> bool:
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE leases SET stop = 1 WHERE thread_id = ? AND expires > ?", (thread_id, time.time())
            )
            return cur.rowcount > 0

    async def stop_requested(self, thread_id: str) -> bool:
        rows = self._query("SELECT stop FROM leases WHERE thread_id = ?", (thread_id,))
        return bool(rows and rows[0][0])

    async def aclose(self) -> None:
        if self._closed:
            return
        try:
            self._flush()
        except StoreError:
            log.exception("Buffered thread variants could not be written while closing the store")
        self._closed = True
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
        await asyncio.to_thread(self._close_reader)

    def _close_reader(self) -> None:
        # Under the lock: a search still running in a worker thread finishes first.
        with self._read_lock:
            if self._reader is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._reader.close()
                self._reader = None
