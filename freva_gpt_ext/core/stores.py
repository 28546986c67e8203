"""Which thread store serves a request: the configured one, or the MongoDB a trusted proxy's vault names.

Three deployments (DESIGN.md, "Store per request"):
- `mongodb_uri` set: one MongoDB store for every request;
- no URI but `trust_proxy_headers`: the Freva nginx sends `X-Freva-Vault-URL`; the vault answers `GET <url>`
  with the MongoDB URI (`{"mongodb.url": ...}` or `{"mongo.url": ...}`), remembered per vault URL for a while;
  one store per URI. A request without the header is refused: falling back to the embedded store would split
  a user's threads across two stores;
- neither: the embedded SQLite store.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import httpx

from ..redact import safe_url
from ..storage.base import StoreError, ThreadStore
from .service import Refused

if TYPE_CHECKING:  # pymongo is imported only where MongoDB is used (app.mongodb_store)
    from ..storage.mongo import MongoThreadStore

VAULT_HEADER = "X-Freva-Vault-URL"
NO_STORE = (
    "No thread store configured: this server keeps threads in the MongoDB that the proxy's X-Freva-Vault-URL "
    "header names, and the request has none (or set mongodb_uri)."
)
# How long a failed index creation waits before it is tried again, at most (doubling from a second).
INDEX_RETRY_MAX = 60.0


def header(headers: Mapping[str, str], name: str) -> str:
    """A header's value ('' when absent), whatever case the mapping keeps its names in."""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return str(value or "").strip()


class VaultResolver:
    """The MongoDB URI a Freva vault gives out, asked once per vault URL and remembered for `ttl` seconds
    (at most `max_entries` vaults, least recently used dropped first; concurrent asks share one request)."""

    def __init__(self, *, ttl: float, timeout: float, max_entries: int = 64) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._cache: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._pending: dict[str, asyncio.Future[str]] = {}
        self._http = httpx.AsyncClient(timeout=timeout, trust_env=False)

    async def mongodb_uri(self, vault_url: str) -> str:
        cached = self._cache.get(vault_url)
        if cached is not None and cached[1] > time.monotonic():
            self._cache.move_to_end(vault_url)
            return cached[0]
        pending = self._pending.get(vault_url)
        if pending is None:
            pending = self._pending[vault_url] = asyncio.ensure_future(self._ask(vault_url))
            pending.add_done_callback(lambda _: self._pending.pop(vault_url, None))
        # Shielded: a request that goes away must not cancel the answer others wait for.
        return await asyncio.shield(pending)

    async def _ask(self, vault_url: str) -> str:
        shown = safe_url(vault_url)
        if not vault_url.lower().startswith(("http://", "https://")):
            raise Refused(502, f"The vault URL {shown!r} (X-Freva-Vault-URL) is not an http(s) URL.", "Bad vault URL")
        try:
            answer = await self._http.get(vault_url)
        except httpx.InvalidURL as err:  # not an HTTPError: a port that is no number, a bracket left open
            raise Refused(502, f"The vault URL {shown!r} (X-Freva-Vault-URL) is malformed.", "Bad vault URL") from err
        except httpx.HTTPError as err:
            raise Refused(
                503, f"The vault at {shown} is unreachable ({type(err).__name__}).", "Vault unreachable"
            ) from err
        if answer.status_code >= 400:
            raise Refused(502, f"The vault at {shown} answered {answer.status_code}.", "Vault failed")
        try:
            data = answer.json()
        except ValueError:
            data = None
        uri = (data.get("mongodb.url") or data.get("mongo.url")) if isinstance(data, dict) else None
        if not isinstance(uri, str) or not uri.strip():
            raise Refused(
                502,
                f"The vault at {shown} gave no MongoDB URL (a JSON object with 'mongodb.url' or 'mongo.url').",
                "Vault answer malformed",
            )
        uri = uri.strip()
        if self.ttl > 0:
            self._cache[vault_url] = (uri, time.monotonic() + self.ttl)
            self._cache.move_to_end(vault_url)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return uri

    async def aclose(self) -> None:
        for pending in list(self._pending.values()):
            pending.cancel()
        await self._http.aclose()


class ThreadStores:
    """The persistent thread stores of the server and the choice among them per request (see the module).

    Give exactly one of `embedded` (the SQLite store), `mongodb` (the configured MongoDB), or `vault` with
    `open_mongodb` (a store for a URI the vault gives out).
    """

    def __init__(
        self,
        *,
        embedded: ThreadStore | None = None,
        mongodb: MongoThreadStore | None = None,
        vault: VaultResolver | None = None,
        open_mongodb: Callable[[str], MongoThreadStore] | None = None,
        log: logging.Logger,
    ) -> None:
        if sum(part is not None for part in (embedded, mongodb, vault)) != 1:
            raise ValueError("give exactly one of embedded, mongodb and vault")
        if vault is not None and open_mongodb is None:
            raise ValueError("the vault's stores need open_mongodb")
        self.default = embedded or mongodb
        self.mongodb = mongodb
        self.vault = vault
        self._open_mongodb = open_mongodb
        self.log = log
        self._by_uri: dict[str, MongoThreadStore] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def stores(self) -> list[ThreadStore]:
        """Every store opened so far."""
        return [*([self.default] if self.default is not None else []), *self._by_uri.values()]

    def start(self) -> None:
        """Prepare the configured MongoDB in the background: the server's start never waits for a database.
        Those a vault names are prepared when first asked for."""
        if self.mongodb is not None:
            self._prepare(self.mongodb)

    def scope_of(self, store: ThreadStore) -> str:
        """What tools key their per-thread state (kernels, MCP sessions) by besides the thread id: one id in two
        vaults' databases is two threads of possibly two users, never one kernel."""
        for uri, candidate in self._by_uri.items():
            if candidate is store:
                return "mongodb:" + hashlib.sha256(uri.encode()).hexdigest()[:16]
        return ""

    async def store_for(self, headers: Mapping[str, str]) -> ThreadStore:
        """The store of a request with these (trusted) headers; `Refused` when there is none or the vault fails."""
        if self.default is not None:
            return self.default
        assert self.vault is not None
        vault_url = header(headers, VAULT_HEADER)
        if not vault_url:
            raise Refused(503, NO_STORE, "No thread store configured")
        uri = await self.vault.mongodb_uri(vault_url)
        store = self._by_uri.get(uri)
        if store is None:
            # One store, and one client pool, per URI for the server's life.
            assert self._open_mongodb is not None
            store = self._by_uri[uri] = self._open_mongodb(uri)
            self.log.info("FrevaGPT threads of the vault %s: MongoDB at %s", safe_url(vault_url), store.shown_uri)
            self._prepare(store)
        return store

    def _prepare(self, store: MongoThreadStore) -> None:
        task = asyncio.ensure_future(self._ensure_indexes(store))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ensure_indexes(self, store: MongoThreadStore) -> None:
        """Create the indexes once MongoDB answers; until then each request finds out for itself (503)."""
        delay = 1.0
        while True:
            try:
                await store.ensure_indexes()
            except StoreError as err:
                self.log.warning(
                    "FrevaGPT: MongoDB at %s: indexes not created (%s); trying again in %g s",
                    store.shown_uri,
                    err,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(2 * delay, INDEX_RETRY_MAX)
                continue
            self.log.info("FrevaGPT: MongoDB at %s is ready (indexes in place).", store.shown_uri)
            return

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        parts: list[Any] = [*self.stores, *([self.vault] if self.vault is not None else [])]
        for part in parts:
            try:
                await part.aclose()
            except Exception:
                self.log.exception("FrevaGPT: closing %s failed", type(part).__name__)
