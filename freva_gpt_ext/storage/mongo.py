"""The MongoDB thread store: the database of a Freva deployment, shared by every replica of the server.

Documents keep the upstream backend's shape, so an existing database is read as it is (and the upstream still
reads what we write, as far as it knows the variants):
- `<collection>` (default `threads`): one document per thread, `{user_id, thread_id, date, topic, content}`;
  `date` is a BSON datetime (UTC) of the last activity (the Rust backend wrote RFC-3339 strings: read as well),
  `content` the list of variant dicts; fork lineage beside it (`root_thread_id`, `parent_thread_id`,
  `fork_from_index`).
- `userfeedback`: `{thread_id, user_id, entry_index, entry, feedback}` (entry_index: the variant's position in
  `content`), next to the `feedback` on the variant itself.
- `<collection>.leases`: the streaming lease and stop flag, `{_id: thread_id, holder, expires_at, stop}`. A
  collection of its own: a turn takes the lease before its thread document exists. A lease is live while
  `expires_at` is in the future, checked in the update that takes it; a TTL index removes leases an hour after
  they expired (cleaning up only: its monitor runs about once a minute).
- the GridFS bucket `<collection>.images`: an `Image` longer than `image_threshold` is kept there (metadata
  `thread_id`); its variant holds `content: ""` and `gridfs_id`, and reads put it back in line. The thread
  document stays far below MongoDB's 16 MB limit; `ThreadInfo.size` is the document's BSON size.

Writes are per variant, never the whole thread: a new variant is `$push`ed; a streamed run is extended with a
`$set` of `content.<n>.content` to the text accumulated so far (the store tracks `n`, the index of the thread's
last variant, and the document's `revision`, a count of our writes to its content: the update lands only while
both are as this store knows them, else it reads them again). Writes are buffered per thread on the event
loop: while one write of a thread is on its way, its fragments keep coalescing, so a long answer costs a few
round trips, not one per token. `sync()` returns once MongoDB acknowledged them (write concern w >= 1). A
buffered write that fails is dropped, logged and reported to the next `sync()` of its thread only.

Every pymongo failure becomes `StoreError` (its message never holds the URI's password); the client reconnects
on its own once MongoDB is back. pymongo's asynchronous client runs on the event loop: nothing here blocks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import bson
from bson.errors import BSONError
from gridfs import AsyncGridFSBucket
from gridfs.errors import NoFile
from pymongo import AsyncMongoClient, ReturnDocument, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure, DuplicateKeyError, OperationFailure, PyMongoError

from ..redact import safe_url, url_secrets
from ..variants import ASSISTANT, FEEDBACK_VARIANTS, IMAGE, USER, Variant, from_stored_thread, stored_time
from .base import StoreError, ThreadInfo, clean_text, stored_json

_module_log = logging.getLogger(__name__)

DEFAULT_MAX_THREAD_BYTES = 12 * 1024 * 1024
DEFAULT_IMAGE_THRESHOLD = 256 * 1024
FEEDBACK_COLLECTION = "userfeedback"  # the upstream's name, whatever the threads collection is called
# Expired leases are removed this long after they expired; until then a late renewal still succeeds, as in
# the other stores (a lease lapses only when someone else takes it).
LEASE_CLEANUP_S = 3600
# Bound of the per-thread bookkeeping (owner, last variant) kept for threads without pending writes.
_KNOWN_LIMIT = 10_000
# The text of a thread's last variant is kept to extend it without reading it back, up to this many characters.
_TAIL_TEXT_LIMIT = 64 * 1024
_CONTENT_LENGTH = {"$size": {"$ifNull": ["$content", []]}}
_INFO_FIELDS = {
    "_id": 0,
    "thread_id": 1,
    "user_id": 1,
    "topic": 1,
    "date": 1,
    "parent_thread_id": 1,
    "fork_from_index": 1,
    "size": {"$bsonSize": "$$ROOT"},
}
_NEWEST_FIRST = [("date", -1), ("thread_id", 1)]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(slots=True)
class _Tail:
    """A thread's last stored variant as this store last wrote it."""

    index: int
    text: str | None  # its content, when a run may be extended in place; None: it cannot be
    # The document's `revision` then (None: it had none): any other write since changed it.
    revision: int | None = None


# A write of the thread was dropped: later extensions must not lengthen the variant before the lost one.
_LOST = _Tail(-1, None)


@dataclass(slots=True)
class _Buffer:
    """A thread's writes not yet handed to MongoDB, in the order they must land."""

    done: asyncio.Future[None]
    create: tuple[str, str, datetime] | None = None  # owner, topic, time
    extend: list[str] = field(default_factory=list)  # text for the variant stored last
    pushes: list[dict[str, Any]] = field(default_factory=list)
    more: list[str] = field(default_factory=list)  # text for the last of `pushes`
    at: datetime = _EPOCH  # time of the last push

    def fold(self) -> None:
        if self.more:
            self.pushes[-1]["content"] += "".join(self.more)
            self.more.clear()


@dataclass(slots=True)
class _Thread:
    owner: str | None = None  # known when the thread is known to exist
    tail: _Tail | None = None  # None: not known here (read it when needed)
    buffer: _Buffer | None = None
    writing: _Buffer | None = None
    flusher: asyncio.Future[None] | None = None
    error: StoreError | None = None  # a dropped write, until a `sync` reports it

    @property
    def idle(self) -> bool:
        return self.flusher is None and self.buffer is None and self.error is None

    def pending(self) -> list[asyncio.Future[None]]:
        return [b.done for b in (self.writing, self.buffer) if b is not None]


def _document(variant: Variant) -> dict[str, Any]:
    """`variant` as a stored dict of the upstream's shape, its text cleaned, independent of the caller's objects."""
    doc = variant.to_dict()
    content = doc["content"]
    doc["content"] = clean_text(content) if isinstance(content, str) else json.loads(stored_json(content))
    for key in ("id", "tool_name", "model", "feedback"):
        if key in doc:
            doc[key] = clean_text(str(doc[key]))
    for key in ("cell_context", "kernel"):
        if key in doc:
            doc[key] = json.loads(stored_json(doc[key]))
    # JSON holds integers that BSON's 64 bits cannot.
    structured = {k: doc[k] for k in ("content", "cell_context", "kernel") if k in doc and not isinstance(doc[k], str)}
    try:
        bson.encode(structured)
    except (OverflowError, BSONError) as exc:
        raise StoreError(f"Variant content cannot be stored: {exc}") from exc
    return doc


def _extendable(doc: Any) -> str | None:
    """The text a run may extend of a stored variant dict, or None."""
    if isinstance(doc, dict) and isinstance(doc.get("content"), str) and doc.get("gridfs_id") is None:
        return doc["content"]
    return None


def _tail(index: int, doc: Any, revision: int | None = None) -> _Tail | None:
    """What to remember of the variant at `index`, just written as `doc` (the document then at `revision`);
    None (read it again when needed) for a text too long to keep."""
    text = _extendable(doc)
    return None if text is not None and len(text) > _TAIL_TEXT_LIMIT else _Tail(index, text, revision)


def _info(doc: Mapping[str, Any]) -> ThreadInfo:
    thread_id = str(doc.get("thread_id"))
    parent = doc.get("parent_thread_id")
    fork_from_index = doc.get("fork_from_index")
    # The upstream marks a thread that is no fork with itself as parent (and fork_from_index 0); a restored
    # fork (`restore`) has no parent on record.
    is_fork = parent != thread_id and isinstance(fork_from_index, int)
    return ThreadInfo(
        thread_id,
        str(doc.get("user_id") or ""),
        str(doc.get("topic") or ""),
        stored_time(doc.get("date")),
        fork_from_index if is_fork else None,
        doc.get("size"),
    )


def _write_concern(value: int | str) -> int | str:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and value < 1:
        raise ValueError("the MongoDB write concern must acknowledge writes (w >= 1 or 'majority')")
    if isinstance(value, str) and not value.strip():
        raise ValueError("the MongoDB write concern is empty")
    return value.strip() if isinstance(value, str) else value


class MongoThreadStore:
    """`ThreadStore` in MongoDB (see the module). Constructing it does no I/O: the client connects when first used."""

    def __init__(
        self,
        uri: str,
        database: str = "chatbot",
        collection: str = "threads",
        *,
        write_concern: int | str = 1,
        image_threshold: int = DEFAULT_IMAGE_THRESHOLD,
        max_thread_bytes: int = DEFAULT_MAX_THREAD_BYTES,
        log: logging.Logger | None = None,
        server_selection_timeout: float = 5.0,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        """`server_selection_timeout`: how long an operation waits for an unreachable MongoDB before it fails;
        `client_options`: further keyword arguments of `pymongo.AsyncMongoClient`."""
        self._uri = uri.strip()
        self._database_name = database
        self._collection_name = collection
        self._w = _write_concern(write_concern)
        self.image_threshold = image_threshold
        self.max_thread_bytes: int | None = max_thread_bytes
        self._log = log or _module_log
        self._client_options = {
            "tz_aware": True,
            "appname": "freva-gpt-ext",
            "serverSelectionTimeoutMS": int(server_selection_timeout * 1000),
            # A MongoDB that stops answering without closing the connection (a network partition) fails the
            # operation after this long instead of holding it for good. (Not `timeoutMS`: it would override the
            # short server selection timeout.)
            "socketTimeoutMS": 60_000,
            **(client_options or {}),
        }
        self._secrets = url_secrets(self._uri)
        self._client: AsyncMongoClient[dict[str, Any]] | None = None
        self._db: AsyncDatabase[dict[str, Any]] | None = None
        self._bucket: AsyncGridFSBucket | None = None
        self._threads: OrderedDict[str, _Thread] = OrderedDict()
        self._dirty: set[str] = set()  # threads with writes buffered or on their way
        self._last_ms = 0
        self._closed = False

    @property
    def shown_uri(self) -> str:
        """The URI as it may be logged or shown: without its credentials."""
        return safe_url(self._uri)

    # -- plumbing ---------------------------------------------------------------------------------

    def _database(self) -> AsyncDatabase[dict[str, Any]]:
        if self._closed:
            raise StoreError("the thread store is closed (the server is stopping)")
        if self._db is None:
            with self._failures():
                client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(self._uri, **self._client_options)
            self._client = client
            self._db = client.get_database(self._database_name, write_concern=WriteConcern(w=self._w))
        return self._db

    def _threads_collection(self) -> AsyncCollection[dict[str, Any]]:
        return self._database()[self._collection_name]

    def _feedback_collection(self) -> AsyncCollection[dict[str, Any]]:
        return self._database()[FEEDBACK_COLLECTION]

    def _leases(self) -> AsyncCollection[dict[str, Any]]:
        return self._database()[f"{self._collection_name}.leases"]

    def _images_name(self) -> str:
        return f"{self._collection_name}.images"

    def _images(self) -> AsyncGridFSBucket:
        if self._bucket is None:
            self._bucket = AsyncGridFSBucket(self._database(), bucket_name=self._images_name())
        return self._bucket

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _error(self, exc: BaseException) -> StoreError:
        """What a client may read of a failure: what failed, never the URI's credentials (the log has more)."""
        if isinstance(exc, ConnectionFailure):
            text = "MongoDB is unreachable"
        elif isinstance(exc, OperationFailure):
            text = f"MongoDB refused the operation (code {exc.code}): {(exc.details or {}).get('errmsg') or exc}"
        elif isinstance(exc, BSONError | OverflowError):
            text = f"Variant content cannot be stored: {exc}"
        else:
            text = f"MongoDB failed ({type(exc).__name__}: {exc})"
        text = self._redact(text)[:500]
        self._log.error("The thread store (MongoDB %s) failed: %s", self.shown_uri, self._redact(str(exc))[:2000])
        return StoreError(text)

    @contextlib.contextmanager
    def _failures(self) -> Iterator[None]:
        try:
            yield
        except (PyMongoError, BSONError, OverflowError) as exc:
            raise self._error(exc) from exc

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the thread store is closed (the server is stopping)")

    def _now(self) -> datetime:
        # BSON datetimes have milliseconds: strictly increasing ones within the process keep activity order exact.
        ms = max(int(time.time() * 1000), self._last_ms + 1)
        self._last_ms = ms
        return _EPOCH + timedelta(milliseconds=ms)

    def _state(self, thread_id: str) -> _Thread:
        state = self._threads.get(thread_id)
        if state is None:
            state = self._threads[thread_id] = _Thread()
            if len(self._threads) > _KNOWN_LIMIT:
                self._forget_idle(keep=thread_id)
        else:
            self._threads.move_to_end(thread_id)
        return state

    def _forget_idle(self, keep: str) -> None:
        idle = [t for t, s in self._threads.items() if s.idle and t != keep]
        for thread_id in idle[: len(self._threads) - _KNOWN_LIMIT // 2]:
            del self._threads[thread_id]

    async def _settled(self, thread_id: str) -> None:
        """Until the writes buffered so far for `thread_id` are written or dropped."""
        state = self._threads.get(thread_id)
        if state is not None and (pending := state.pending()):
            await asyncio.wait(pending)

    async def _settled_all(self, owner: str | None = None) -> None:
        """Until the writes buffered so far are written or dropped: all, or those to threads of `owner`."""
        states = [s for t in self._dirty if (s := self._threads.get(t)) is not None]
        pending = [f for s in states if owner is None or s.owner == owner for f in s.pending()]
        if pending:
            await asyncio.wait(pending)

    async def _require_thread(self, thread_id: str) -> _Thread:
        state = self._threads.get(thread_id)
        if state is not None and state.owner is not None:
            self._threads.move_to_end(thread_id)
            return state
        await self._settled(thread_id)
        with self._failures():
            doc = await self._threads_collection().find_one({"thread_id": thread_id}, {"_id": 0, "user_id": 1})
        if doc is None:
            raise StoreError(f"Thread {thread_id!r} does not exist; create it first.")
        state = self._state(thread_id)
        state.owner = str(doc.get("user_id") or "")
        return state

    # -- the write buffer -------------------------------------------------------------------------

    def _buffer(self, thread_id: str, state: _Thread) -> _Buffer:
        self._check_open()
        if state.buffer is None:
            state.buffer = _Buffer(asyncio.get_running_loop().create_future())
            self._dirty.add(thread_id)
            if state.flusher is None:
                # Starts on the next pass of the loop: what the caller buffers until it waits joins this write.
                state.flusher = asyncio.ensure_future(self._flush(thread_id, state))
        return state.buffer

    async def _flush(self, thread_id: str, state: _Thread) -> None:
        try:
            while (buffer := state.buffer) is not None:
                state.buffer, state.writing = None, buffer
                try:
                    await self._write(thread_id, state, buffer)
                except Exception as exc:
                    if not isinstance(exc, StoreError):
                        self._log.exception("Writing thread %s failed", thread_id)
                    state.error = exc if isinstance(exc, StoreError) else self._error(exc)
                    state.tail = _LOST
                    if buffer.create is not None:
                        state.owner = None  # it may not exist: the next write asks MongoDB
                    self._log.error("Dropped buffered writes to thread %s: %s", thread_id, state.error)
                finally:
                    state.writing = None
                    if not buffer.done.done():
                        buffer.done.set_result(None)
        finally:
            state.flusher = None
            self._dirty.discard(thread_id)

    async def _write(self, thread_id: str, state: _Thread, buffer: _Buffer) -> None:
        if buffer.extend:
            await self._extend_stored(thread_id, state, "".join(buffer.extend))
        if buffer.create is None and not buffer.pushes:
            return
        buffer.fold()
        docs, files = await self._out_of_line(thread_id, buffer.pushes)
        update: dict[str, Any] = {}
        if docs:
            update["$push"] = {"content": {"$each": docs}}
            update["$max"] = {"date": buffer.at}
            update["$inc"] = {"revision": 1}
        if buffer.create is not None:
            owner, topic, at = buffer.create
            fresh: dict[str, Any] = {
                "user_id": owner,
                "topic": topic,
                "root_thread_id": thread_id,
                "parent_thread_id": None,
                "fork_from_index": None,
            }
            if not docs:
                fresh |= {"date": at, "content": []}
            update["$setOnInsert"] = fresh
        try:
            with self._failures():
                found = await self._threads_collection().find_one_and_update(
                    {"thread_id": thread_id},
                    update,
                    projection={"_id": 0, "length": _CONTENT_LENGTH, "revision": 1},
                    upsert=buffer.create is not None,
                    return_document=ReturnDocument.AFTER,
                )
        except StoreError:
            await self._remove_files(files)
            raise
        if found is None:
            # Deleted meanwhile (by another replica): the writes go with it, as the thread's other content did.
            await self._remove_files(files)
            state.owner, state.tail = None, None
            return
        if docs:
            state.tail = _tail(int(found["length"]) - 1, docs[-1], found.get("revision"))

    async def _extend_stored(self, thread_id: str, state: _Thread, addition: str) -> None:
        """Add `addition` to the text of the thread's last stored variant, wherever it is now."""
        threads = self._threads_collection()
        for _ in range(5):
            tail = state.tail
            if tail is _LOST:
                return
            with self._failures():
                if tail is None:
                    doc = await threads.find_one(
                        {"thread_id": thread_id},
                        {
                            "_id": 0,
                            "length": _CONTENT_LENGTH,
                            "last": {"$arrayElemAt": ["$content", -1]},
                            "revision": 1,
                        },
                    )
                    if doc is None or not doc.get("length"):
                        return
                    tail = _Tail(int(doc["length"]) - 1, _extendable(doc.get("last")), doc.get("revision"))
                if tail.text is None:
                    state.tail = tail
                    return
                text = tail.text + addition
                # Only while the document is as this store knows it: another replica may have written since (each
                # write of ours counts a revision; the position checks catch writers that do not count).
                done = await threads.update_one(
                    {
                        "thread_id": thread_id,
                        "revision": tail.revision,
                        f"content.{tail.index}.variant": {"$exists": True},
                        f"content.{tail.index + 1}": {"$exists": False},
                    },
                    {"$set": {f"content.{tail.index}.content": text}, "$inc": {"revision": 1}},
                )
            if done.matched_count:
                state.tail = _tail(tail.index, {"content": text}, (tail.revision or 0) + 1)
                return
            state.tail = None  # moved on (or deleted): look again
        raise StoreError(f"Thread {thread_id!r} kept changing while a run was extended.")

    # -- images in GridFS -------------------------------------------------------------------------

    async def _out_of_line(self, thread_id: str, docs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Any]]:
        """`docs` with each large image moved to GridFS (the variant keeps a reference), and the files made."""
        out: list[dict[str, Any]] = []
        files: list[Any] = []
        try:
            for doc in docs:
                content = doc["content"]
                if doc["variant"] == IMAGE and isinstance(content, str) and len(content) > self.image_threshold:
                    with self._failures():
                        file_id = await self._images().upload_from_stream(
                            f"{thread_id}/{doc.get('id') or 'image'}",
                            content.encode(),
                            metadata={"thread_id": thread_id},
                        )
                    files.append(file_id)
                    doc = {**doc, "content": "", "gridfs_id": file_id}
                out.append(doc)
        except StoreError:
            await self._remove_files(files)
            raise
        return out, files

    async def _remove_files(self, files: list[Any]) -> None:
        """Best effort: files of a write that did not land (a leftover only costs space)."""
        for file_id in files:
            try:
                await self._images().delete(file_id)
            except (PyMongoError, NoFile) as exc:
                self._log.warning("Could not remove the unused image %s: %s", file_id, self._redact(str(exc)))

    async def _in_line(self, thread_id: str, content: list[Any]) -> None:
        refs = [d for d in content if isinstance(d, dict) and d.get("gridfs_id") is not None]
        if not refs:
            return
        with self._failures():
            texts = await asyncio.gather(*(self._download(thread_id, d["gridfs_id"]) for d in refs))
        for doc, text in zip(refs, texts, strict=True):
            doc["content"] = text

    async def _download(self, thread_id: str, file_id: Any) -> str:
        try:
            stream = await self._images().open_download_stream(file_id)
            data = await stream.read()
        except NoFile:
            # Removed behind our back: the thread still reads, with this image empty.
            self._log.error("The image %s of thread %s is missing from GridFS", file_id, thread_id)
            return ""
        return data.decode("utf-8", errors="replace")

    # -- buffered writes --------------------------------------------------------------------------

    async def create(self, thread_id: str, user_id: str, topic: str = "") -> None:
        self._check_open()
        user_id = clean_text(user_id)
        state = self._state(thread_id)
        state.owner = user_id
        buffer = self._buffer(thread_id, state)
        if buffer.create is None:
            buffer.create = (user_id, clean_text(topic), self._now())

    async def append(self, thread_id: str, variant: Variant) -> None:
        state = await self._require_thread(thread_id)
        doc = _document(variant)
        buffer = self._buffer(thread_id, state)
        if buffer.pushes:
            buffer.fold()
        buffer.pushes.append(doc)
        buffer.at = self._now()

    async def extend_last(self, thread_id: str, text: str) -> None:
        state = await self._require_thread(thread_id)
        if not text:
            return
        text = clean_text(text)
        buffer = self._buffer(thread_id, state)
        if not buffer.pushes:
            buffer.extend.append(text)
        elif isinstance(buffer.pushes[-1]["content"], str):
            buffer.more.append(text)

    async def sync(self, thread_id: str | None = None) -> None:
        self._check_open()
        if thread_id is None:
            await self._settled_all()
            errors = [s.error for s in self._threads.values() if s.error is not None]
            for state in self._threads.values():
                state.error = None
            error = errors[0] if errors else None
        else:
            await self._settled(thread_id)
            state = self._threads.get(thread_id)
            error = None if state is None else state.error
            if state is not None:
                state.error = None
        if error is not None:
            raise error

    # -- reads: they wait for the buffered writes they could see -----------------------------------

    async def info(self, thread_id: str) -> ThreadInfo | None:
        self._check_open()
        await self._settled(thread_id)
        with self._failures():
            doc = await self._threads_collection().find_one({"thread_id": thread_id}, _INFO_FIELDS)
        return None if doc is None else _info(doc)

    async def read(self, thread_id: str) -> list[Variant]:
        self._check_open()
        await self._settled(thread_id)
        with self._failures():
            doc = await self._threads_collection().find_one({"thread_id": thread_id}, {"_id": 0, "content": 1})
        if doc is None:
            return []
        content = doc.get("content") or []
        if not isinstance(content, list):
            raise StoreError(f"Thread {thread_id!r} holds undecodable content (not a list of variants).")
        await self._in_line(thread_id, content)
        return from_stored_thread(content)

    async def _page(self, query: dict[str, Any], limit: int, offset: int) -> tuple[list[ThreadInfo], int]:
        threads = self._threads_collection()
        # pymongo reads a limit of 0 as none.
        cursor = threads.find(query, _INFO_FIELDS).sort(_NEWEST_FIRST).skip(max(0, offset)).limit(max(1, limit))
        with self._failures():
            total, docs = await asyncio.gather(threads.count_documents(query), cursor.to_list())
        return [_info(d) for d in docs][: max(0, limit)], total

    async def list_threads(self, user_id: str, limit: int, offset: int) -> tuple[list[ThreadInfo], int]:
        self._check_open()
        await self._settled_all(user_id)
        return await self._page({"user_id": user_id}, limit, offset)

    async def search(self, user_id: str, query: str, limit: int, offset: int) -> tuple[list[ThreadInfo], int]:
        self._check_open()
        await self._settled_all(user_id)
        # The query is text, never a pattern. `re.escape` puts a backslash before ASCII punctuation and white
        # space only, which PCRE (MongoDB's regular expressions) reads as that character too.
        pattern = {"$regex": re.escape(clean_text(query)), "$options": "i"}
        found = {
            "user_id": user_id,
            "$or": [
                {"topic": pattern},
                {"content": {"$elemMatch": {"variant": {"$in": [USER, ASSISTANT]}, "content": pattern}}},
            ],
        }
        return await self._page(found, limit, offset)

    # -- direct writes: after the thread's buffered ones -------------------------------------------

    async def set_topic(self, thread_id: str, topic: str) -> None:
        self._check_open()
        topic = clean_text(topic)
        await self._settled(thread_id)
        with self._failures():
            await self._threads_collection().update_one({"thread_id": thread_id}, {"$set": {"topic": topic}})

    async def delete(self, thread_id: str) -> None:
        self._check_open()
        await self._settled(thread_id)
        db = self._database()
        files = db[f"{self._images_name()}.files"]
        # The thread goes last: should a step fail, the thread is still there to be deleted again.
        with self._failures():
            file_ids = [d["_id"] for d in await files.find({"metadata.thread_id": thread_id}, {"_id": 1}).to_list()]
            await self._feedback_collection().delete_many({"thread_id": thread_id})
            if file_ids:
                await db[f"{self._images_name()}.chunks"].delete_many({"files_id": {"$in": file_ids}})
                await files.delete_many({"_id": {"$in": file_ids}})
            await self._leases().delete_one({"_id": thread_id})
            await self._threads_collection().delete_many({"thread_id": thread_id})
        state = self._threads.get(thread_id)
        if state is not None:
            state.owner, state.tail = None, None
            if state.idle:
                del self._threads[thread_id]

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
        self._check_open()
        user_id = clean_text(user_id)
        threads = self._threads_collection()
        with self._failures():
            source = await threads.find_one({"thread_id": source_id}, {"_id": 0, "root_thread_id": 1})
        root = (source or {}).get("root_thread_id") or source_id
        docs, files = await self._out_of_line(new_id, [_document(v) for v in variants])
        thread = {
            "user_id": user_id,
            "date": self._now(),
            "topic": clean_text(topic),
            "content": docs,
            "root_thread_id": root,
            "parent_thread_id": source_id,
            "fork_from_index": fork_from_index,
        }
        try:
            with self._failures():
                # An upsert that only inserts: the id must be new, also where no unique index exists yet.
                done = await threads.update_one({"thread_id": new_id}, {"$setOnInsert": thread}, upsert=True)
        except StoreError as exc:
            await self._remove_files(files)
            if isinstance(exc.__cause__, DuplicateKeyError):
                raise StoreError(f"Cannot fork {source_id!r}: thread {new_id!r} already exists.") from exc
            raise
        if done.upserted_id is None:
            await self._remove_files(files)
            raise StoreError(f"Cannot fork {source_id!r}: thread {new_id!r} already exists.")
        state = self._state(new_id)
        state.owner = user_id
        state.tail = _tail(len(docs) - 1, docs[-1]) if docs else None

    async def set_feedback(self, thread_id: str, index: int, feedback: str | None) -> bool:
        self._check_open()
        if index < 0:
            return False
        feedback = None if feedback is None else clean_text(feedback)
        await self._settled(thread_id)
        threads = self._threads_collection()
        with self._failures():
            doc = await threads.find_one(
                {"thread_id": thread_id}, {"_id": 0, "user_id": 1, "content.variant": 1, "content.feedback": 1}
            )
            if doc is None:
                return False
            content = doc.get("content") or []
            numbered = [
                n for n, v in enumerate(content) if isinstance(v, dict) and v.get("variant") in FEEDBACK_VARIANTS
            ]
            if index >= len(numbered):
                return False
            n = numbered[index]
            if feedback is None and not content[n].get("feedback"):
                return False
            same_variant = {"thread_id": thread_id, f"content.{n}.variant": content[n]["variant"]}
            entry = {"thread_id": thread_id, "entry_index": n}
            if feedback is None:
                await threads.update_one(same_variant, {"$unset": {f"content.{n}.feedback": ""}})
                await self._feedback_collection().delete_many(entry)
                return True
            updated = await threads.find_one_and_update(
                same_variant,
                {"$set": {f"content.{n}.feedback": feedback}},
                projection={"_id": 0, "content": {"$slice": [n, 1]}},
                return_document=ReturnDocument.AFTER,
            )
            if updated is None:
                return False
            await self._feedback_collection().update_one(
                entry,
                {
                    "$set": {
                        "user_id": doc.get("user_id"),
                        "entry": (updated.get("content") or [None])[0],
                        "feedback": feedback,
                    }
                },
                upsert=True,
            )
        return True

    # -- moving threads (`jupyter freva-gpt threads`) ---------------------------------------------

    async def owners(self) -> list[str]:
        self._check_open()
        await self._settled_all()
        with self._failures():
            names = await self._threads_collection().distinct("user_id")
        return sorted({str(name) for name in names if name})

    async def restore(self, info: ThreadInfo, variants: list[Variant]) -> bool:
        self._check_open()
        thread_id, user_id = info.thread_id, clean_text(info.user_id)
        await self._settled(thread_id)
        threads = self._threads_collection()
        with self._failures():
            # Before the images are uploaded: importing a file again finds most of its threads there.
            if await threads.find_one({"thread_id": thread_id}, {"_id": 1}) is not None:
                return False
        docs, files = await self._out_of_line(thread_id, [_document(v) for v in variants])
        thread: dict[str, Any] = {
            "user_id": user_id,
            "date": datetime.fromtimestamp(info.updated, UTC),
            "topic": clean_text(info.topic),
            "content": docs,
        }
        if info.fork_from_index is not None:
            thread["fork_from_index"] = info.fork_from_index
        try:
            with self._failures():
                # An upsert that only inserts, as in `fork`.
                done = await threads.update_one({"thread_id": thread_id}, {"$setOnInsert": thread}, upsert=True)
        except StoreError as exc:
            await self._remove_files(files)
            if isinstance(exc.__cause__, DuplicateKeyError):
                return False
            raise
        if done.upserted_id is None:
            await self._remove_files(files)
            return False
        with self._failures():
            for n, doc in enumerate(docs):
                if doc.get("feedback"):
                    # Keyed as `set_feedback` keys it: an entry a deleted thread of this id left behind is replaced.
                    await self._feedback_collection().update_one(
                        {"thread_id": thread_id, "entry_index": n},
                        {"$set": {"user_id": user_id, "entry": doc, "feedback": doc["feedback"]}},
                        upsert=True,
                    )
        state = self._state(thread_id)
        state.owner = user_id
        state.tail = _tail(len(docs) - 1, docs[-1]) if docs else None
        return True

    # -- leases: never buffered, another replica must see them at once -----------------------------

    async def acquire_lease(self, thread_id: str, holder: str, ttl: float) -> bool:
        self._check_open()
        now = datetime.now(UTC)
        with self._failures():
            try:
                await self._leases().find_one_and_update(
                    {"_id": thread_id, "$or": [{"holder": holder}, {"expires_at": {"$lte": now}}]},
                    {"$set": {"holder": holder, "expires_at": now + timedelta(seconds=ttl), "stop": False}},
                    projection={"_id": 1},
                    upsert=True,
                )
            except DuplicateKeyError:
                return False  # the lease exists and matched neither: another holder's, still live
        return True

    async def renew_lease(self, thread_id: str, holder: str, ttl: float) -> bool:
        self._check_open()
        with self._failures():
            done = await self._leases().update_one(
                {"_id": thread_id, "holder": holder},
                {"$set": {"expires_at": datetime.now(UTC) + timedelta(seconds=ttl)}},
            )
        return done.matched_count > 0

    async def release_lease(self, thread_id: str, holder: str) -> None:
        self._check_open()
        with self._failures():
            await self._leases().delete_one({"_id": thread_id, "holder": holder})

    async def lease_holder(self, thread_id: str) -> str | None:
        self._check_open()
        with self._failures():
            lease = await self._leases().find_one({"_id": thread_id, "expires_at": {"$gt": datetime.now(UTC)}})
        return None if lease is None else str(lease.get("holder"))

    async def request_stop(self, thread_id: str) -> bool:
        self._check_open()
        with self._failures():
            done = await self._leases().update_one(
                {"_id": thread_id, "expires_at": {"$gt": datetime.now(UTC)}}, {"$set": {"stop": True}}
            )
        return done.matched_count > 0

    async def stop_requested(self, thread_id: str) -> bool:
        self._check_open()
        with self._failures():
            lease = await self._leases().find_one({"_id": thread_id}, {"_id": 0, "stop": 1})
        return bool(lease and lease.get("stop"))

    # -- administration ---------------------------------------------------------------------------

    async def ensure_indexes(self) -> None:
        """Create the indexes the store's queries need (a no-op for those that exist).

        Raises `StoreError` when MongoDB cannot be reached (try again later). An index MongoDB refuses (an
        existing one of the same name with other options, duplicate thread ids in old data) is logged and
        left out: trying again would not help, and every query still works without it, only slower.
        """
        db = self._database()
        wanted: list[tuple[str, list[tuple[str, int]], dict[str, Any]]] = [
            (self._collection_name, [("thread_id", 1)], {"unique": True}),
            (self._collection_name, [("user_id", 1), ("date", -1)], {}),
            (FEEDBACK_COLLECTION, [("thread_id", 1), ("entry_index", 1)], {}),
            (f"{self._collection_name}.leases", [("expires_at", 1)], {"expireAfterSeconds": LEASE_CLEANUP_S}),
            (f"{self._images_name()}.files", [("metadata.thread_id", 1)], {}),
        ]
        for collection, keys, options in wanted:
            try:
                with self._failures():
                    await db[collection].create_index(keys, **options)
            except StoreError as exc:
                if not isinstance(exc.__cause__, OperationFailure):
                    raise
                self._log.warning("MongoDB refused an index on %s %s: %s", collection, keys, exc)

    async def check(self) -> dict[str, Any]:
        """The store's health for `doctor`: reachable, its indexes, whether a write is acknowledged."""
        report: dict[str, Any] = {
            "backend": "mongodb",
            "reachable": False,
            "indexes": [],
            "write_test": False,
            "detail": "",
        }
        try:
            db = self._database()
            with self._failures():
                build = await db.command("buildInfo")
                report["reachable"] = True
                for name in (self._collection_name, FEEDBACK_COLLECTION, f"{self._collection_name}.leases"):
                    report["indexes"] += [f"{name}.{index}" for index in await db[name].index_information()]
                probe = f"doctor-{secrets.token_hex(8)}"
                await self._leases().insert_one({"_id": probe, "holder": "doctor", "expires_at": datetime.now(UTC)})
                await self._leases().delete_one({"_id": probe})
                report["write_test"] = True
            report["detail"] = (
                f"MongoDB {build.get('version', '?')} at {self.shown_uri}, database {self._database_name!r}, "
                f"collection {self._collection_name!r}"
            )
        except StoreError as exc:
            report["detail"] = str(exc)
        return report

    async def aclose(self) -> None:
        if self._closed:
            return
        # Every buffered write, also those buffered while waiting, is written (or dropped with a logged error).
        while self._dirty:
            await self._settled_all()
        self._closed = True
        client, self._client, self._db, self._bucket = self._client, None, None, None
        if client is not None:
            await client.close()
