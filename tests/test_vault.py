"""Behind the Freva nginx (`trust_proxy_headers`, no `mongodb_uri`): each request's thread store is the MongoDB that
its `X-Freva-Vault-URL` names. A real server in-process, a fake vault (tests/fake_vault.py) that gives out the URI
of the session's secantusdb, and every answer of a vault that fails. A request without the header finds no store:
never the embedded one."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from freva_gpt_ext.core.service import Refused
from freva_gpt_ext.core.stores import VAULT_HEADER, VaultResolver
from freva_gpt_ext.handlers.spec import ROUTES
from tests.conftest import body_json, check_against_store, parse_lines, serving
from tests.fake_vault import FakeVault
from tests.mongo_server import MongoServer, unique_database
from tests.server_process import free_port

CLOSED = f"http://127.0.0.1:{free_port()}/vault"
SLOW_TURN = {"input": "[[fake:tokens=400 delay=0.05]] a long one", "chatbot": "fake-slow"}
# Routes that answer without a thread store; every other route is a thread route.
SERVICE_ROUTES = {"ping", "help", "docs", "openapi.json", "availablechatbots", "newthread"}


def proxied(database: str, **extra: Any) -> dict[str, Any]:
    return {"trust_proxy_headers": True, "mongodb_database_name": database, **extra}


@pytest.fixture
def freva_config() -> dict[str, Any]:
    return proxied(unique_database())


@pytest.fixture
def vault(jp_asyncio_loop, mongo_server: MongoServer) -> Iterator[FakeVault]:
    answers = {
        "ok": (200, {"mongodb.url": mongo_server.uri, "other.secret": "x"}),
        # The upstream's other key, and the same URI: the same store.
        "alt": (200, {"mongo.url": " " + mongo_server.uri + " "}),
        "nokey": (200, {"postgres.url": "postgres://db/"}),
        "empty": (200, {"mongodb.url": ""}),
        "notjson": (200, "<html>vault</html>"),
        "list": (200, [mongo_server.uri]),
        "broken": (500, {"detail": "sealed"}),
    }
    yield from serving(jp_asyncio_loop, FakeVault(answers))


@pytest.fixture
def chat(jp_fetch) -> Callable[..., Any]:
    """POST a chatbot route as a user, with the vault header when `vault` is given (never raises)."""

    async def call(route: str, *, user: str = "alice", vault: str | None = None, **params: Any):
        headers = {"Authorization": f"token {user}"}
        if vault is not None:
            headers[VAULT_HEADER] = vault
        return await jp_fetch(
            "api", "chatbot", route, method="POST", body=json.dumps(params), headers=headers, raise_error=False
        )

    return call


async def turn(chat: Callable[..., Any], vault: str, user: str = "alice", **params: Any) -> list[dict[str, Any]]:
    """One finished turn, checked against what getthread stores (as the web frontend reads it)."""
    params = {"input": "how warm was 1990?", "chatbot": "fake-text", **params}
    response = await chat("streamresponse", user=user, vault=vault, **params)
    assert response.code == 200, response.body
    await check_against_store(functools.partial(chat, vault=vault), response.body, user=user, params=params)
    lines = parse_lines(response.body)
    assert lines[-1] == {"variant": "StreamEnd", "content": "Stream ended."}, lines
    return lines


def thread_of(lines: list[dict[str, Any]]) -> str:
    return lines[0]["content"]["thread_id"]


def assert_detail(response: Any, status: int, part: str) -> str:
    assert response.code == status, (response.code, response.body)
    detail = body_json(response)["detail"]
    assert part.lower() in detail.lower(), detail
    return detail


def thread_routes(thread_id: str) -> dict[str, dict[str, Any]]:
    """Valid parameters for every route that needs a thread store."""
    routes = {
        "streamresponse": {"input": "hello", "chatbot": "fake-text"},
        "stop": {"thread_id": thread_id},
        "getthread": {"thread_id": thread_id},
        "getuserthreads": {},
        "searchthreads": {"query": "warm"},
        "setthreadtopic": {"thread_id": thread_id, "topic": "renamed"},
        "deletethread": {"thread_id": thread_id},
        "editthread": {"source_thread_id": thread_id, "user_index": 0},
        "userfeedback": {"thread_id": thread_id, "feedback_index": 0, "feedback": "up"},
        "exportthread": {"thread_id": thread_id},
    }
    # `kernelcontext` asks a kernel, never a store.
    assert set(routes) | SERVICE_ROUTES | {"kernelcontext"} == {r.name for r in ROUTES}
    return routes


async def stored_documents(uri: str, database: str, **query: Any) -> list[dict[str, Any]]:
    client: AsyncMongoClient = AsyncMongoClient(uri)
    try:
        return await client[database]["threads"].find(query).to_list(None)
    finally:
        await client.close()


# -- no header: no store -----------------------------------------------------------------------------------------
async def test_without_the_vault_header_thread_routes_find_no_store(chat, tmp_path: Path) -> None:
    for route, params in thread_routes("abc123").items():
        for user in ("alice", "bob"):
            response = await chat(route, user=user, **params)
            assert_detail(response, 503, "No thread store configured")
            assert response.reason == "No thread store configured"
    # Memory-only turns too: which thread id is whose is decided over both stores.
    assert_detail(await chat("streamresponse", input="hi", store_thread=False), 503, "no thread store configured")
    for route in SERVICE_ROUTES:
        response = await chat(route)
        assert response.code == 200, (route, response.body)
    assert_detail(await chat("kernelcontext", kernel_id="nope"), 404, "no running kernel")
    # Never the embedded store: nothing was written under the data folder.
    assert not list((tmp_path / "data").rglob("*.sqlite3"))


# -- the vault's MongoDB -----------------------------------------------------------------------------------------
async def test_threads_live_in_the_mongodb_the_vault_names(
    chat, vault: FakeVault, mongo_server: MongoServer, freva_config: dict[str, Any], tmp_path: Path
) -> None:
    ok = vault.url("ok")
    lines = await turn(chat, ok)
    thread_id = thread_of(lines)
    [threads, total] = body_json(await chat("getuserthreads", vault=ok))
    assert total == 1 and threads[0]["thread_id"] == thread_id
    [found, _] = body_json(await chat("searchthreads", vault=ok, query="WARM"))
    assert [t["thread_id"] for t in found] == [thread_id]
    # In MongoDB, in the configured database, in the upstream's document shape.
    (document,) = await stored_documents(mongo_server.uri, freva_config["mongodb_database_name"], thread_id=thread_id)
    assert document["user_id"] == "alice"
    assert [v["content"] for v in document["content"] if v["variant"] == "User"] == ["how warm was 1990?"]
    # The vault was asked once: its answer is remembered (vault_cache_ttl).
    assert vault.counts["ok"] == 1
    # `mongo.url`, padded: the same URI, so the same store.
    alt = vault.url("alt")
    assert body_json(await chat("getthread", vault=alt, thread_id=thread_id)) == body_json(
        await chat("getthread", vault=ok, thread_id=thread_id)
    )
    await turn(chat, alt, thread_id=thread_id, input="and 1991?")
    assert len(await stored_documents(mongo_server.uri, freva_config["mongodb_database_name"])) == 1
    # Still nothing for a request without the header, nor in the embedded store.
    assert_detail(await chat("getthread", thread_id=thread_id), 503, "No thread store configured")
    assert not list((tmp_path / "data").rglob("*.sqlite3"))


async def test_stop_through_another_vault_url_of_the_same_mongodb_ends_the_turn(chat, jp_fetch, vault) -> None:
    """One store per URI: the running turn is found whichever vault URL named that URI."""
    body = bytearray()
    started = asyncio.Event()

    def arrived(chunk: bytes) -> None:
        body.extend(chunk)
        if b"Assistant" in body:
            started.set()

    headers = {"Authorization": "token alice", VAULT_HEADER: vault.url("ok")}
    stream = asyncio.ensure_future(
        jp_fetch(
            "api",
            "chatbot",
            "streamresponse",
            method="POST",
            body=json.dumps(SLOW_TURN),
            headers=headers,
            streaming_callback=arrived,
            request_timeout=60,
        )
    )
    await asyncio.wait_for(started.wait(), 30)
    thread_id = thread_of(parse_lines(bytes(body[: body.index(b"\n") + 1])))
    busy = await chat("streamresponse", vault=vault.url("alt"), thread_id=thread_id, input="me too")
    assert_detail(busy, 409, "already streaming")
    stopped = await chat("stop", vault=vault.url("alt"), thread_id=thread_id)
    assert body_json(stopped) == {"detail": "Conversation stopped."}
    await asyncio.wait_for(stream, 30)
    assert parse_lines(bytes(body))[-1] == {"variant": "StreamEnd", "content": "Stream is stopped by user."}


@pytest.mark.parametrize("freva_config", [proxied(unique_database(), vault_cache_ttl=0.5)])
async def test_the_vault_answer_expires_after_vault_cache_ttl(chat, vault: FakeVault) -> None:
    for _ in range(3):
        assert (await chat("getuserthreads", vault=vault.url("ok"))).code == 200
    assert vault.counts["ok"] == 1
    await asyncio.sleep(0.7)
    assert (await chat("getuserthreads", vault=vault.url("ok"))).code == 200
    assert vault.counts["ok"] == 2


@pytest.mark.parametrize("freva_config", [proxied(unique_database(), vault_cache_ttl=0.0)])
async def test_with_a_ttl_of_zero_the_vault_is_asked_every_time(chat, vault: FakeVault) -> None:
    for _ in range(3):
        assert (await chat("getuserthreads", vault=vault.url("ok"))).code == 200
    assert vault.counts["ok"] == 3


# -- a vault that fails ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "status", "part"),
    [
        ("closed", 503, "is unreachable"),
        ("broken", 502, "answered 500"),
        ("nokey", 502, "gave no MongoDB URL"),
        ("empty", 502, "gave no MongoDB URL"),
        ("notjson", 502, "gave no MongoDB URL"),
        ("list", 502, "gave no MongoDB URL"),
        ("ftp", 502, "is not an http(s) URL"),
        ("badport", 502, "is malformed"),
    ],
)
async def test_a_failing_vault_answers_502_or_503_and_is_asked_again(
    chat, vault: FakeVault, name: str, status: int, part: str
) -> None:
    malformed = {"closed": CLOSED, "ftp": "ftp://127.0.0.1/vault", "badport": "http://127.0.0.1:vault/"}
    url = malformed.get(name) or vault.url(name)
    for route, params in thread_routes("abc123").items():
        assert_detail(await chat(route, vault=url, **params), status, part)
    if name in vault.answers:
        # A failure is never remembered: the vault is asked on every request until it answers.
        assert vault.counts[name] == len(thread_routes("abc123"))
        vault.answers[name] = vault.answers["ok"]
        assert (await chat("getuserthreads", vault=url)).code == 200


# -- ownership holds on the vault's store --------------------------------------------------------------------------
async def test_a_vault_header_never_reaches_another_users_threads(chat, vault: FakeVault) -> None:
    ok, alt = vault.url("ok"), vault.url("alt")
    alices = thread_of(await turn(chat, ok))
    before = body_json(await chat("getthread", vault=ok, thread_id=alices))
    for url in (ok, alt):
        [threads, _] = body_json(await chat("getuserthreads", user="bob", vault=url))
        [found, _] = body_json(await chat("searchthreads", user="bob", vault=url, query="warm"))
        assert {t["user_id"] for t in threads + found} <= {"bob"}
        for route, params in thread_routes(alices).items():
            if route in ("setthreadtopic", "deletethread", "userfeedback", "stop"):
                assert_detail(await chat(route, user="bob", vault=url, **params), 403, "belongs to another user")
        # Continuing it forks it for bob; alice's thread stays as it was.
        forked = thread_of(await turn(chat, url, user="bob", thread_id=alices, input="mine now?"))
        assert forked != alices
    assert body_json(await chat("getthread", vault=ok, thread_id=alices)) == before
    [threads, total] = body_json(await chat("getuserthreads", vault=ok))
    assert total == 1 and threads[0]["thread_id"] == alices


@pytest.mark.parametrize("freva_config", [proxied(unique_database(), thread_sharing=False)])
async def test_with_sharing_off_another_users_thread_is_unknown_on_the_vaults_store(chat, vault: FakeVault) -> None:
    ok = vault.url("ok")
    alices = thread_of(await turn(chat, ok))
    for route, params in thread_routes(alices).items():
        if route in ("getthread", "setthreadtopic", "deletethread", "editthread", "userfeedback", "stop"):
            assert_detail(await chat(route, user="bob", vault=ok, **params), 404, "not found")
    lines = await turn(chat, ok, user="bob", thread_id=alices, input="let me in")
    assert thread_of(lines) != alices
    stored = body_json(await chat("getthread", user="bob", vault=ok, thread_id=thread_of(lines)))
    assert [v["content"] for v in stored if v["variant"] == "User"] == ["let me in"]


# -- the resolver itself -------------------------------------------------------------------------------------------
async def test_the_resolver_remembers_a_bounded_number_of_vaults() -> None:
    async with FakeVault({name: (200, {"mongodb.url": f"mongodb://{name}/"}) for name in "abc"}) as vault:
        resolver = VaultResolver(ttl=300.0, timeout=5.0, max_entries=2)
        try:
            for name in "abc":
                assert await resolver.mongodb_uri(vault.url(name)) == f"mongodb://{name}/"
            # c and b are remembered; a, the least recently used, was dropped.
            assert await resolver.mongodb_uri(vault.url("c")) == "mongodb://c/"
            assert await resolver.mongodb_uri(vault.url("b")) == "mongodb://b/"
            assert dict(vault.counts) == {"a": 1, "b": 1, "c": 1}
            assert await resolver.mongodb_uri(vault.url("a")) == "mongodb://a/"
            assert vault.counts["a"] == 2
            # c had become the least recently used: dropped for a.
            assert await resolver.mongodb_uri(vault.url("b")) == "mongodb://b/"
            assert await resolver.mongodb_uri(vault.url("c")) == "mongodb://c/"
            assert dict(vault.counts) == {"a": 2, "b": 1, "c": 2}
        finally:
            await resolver.aclose()


async def test_concurrent_requests_ask_the_vault_once() -> None:
    async with FakeVault({"v": (200, {"mongodb.url": "mongodb://db/"}), "bad": (200, {})}) as vault:
        resolver = VaultResolver(ttl=300.0, timeout=5.0)
        try:
            uris = await asyncio.gather(*(resolver.mongodb_uri(vault.url("v")) for _ in range(20)))
            assert uris == ["mongodb://db/"] * 20
            assert vault.counts["v"] == 1
            failures = await asyncio.gather(
                *(resolver.mongodb_uri(vault.url("bad")) for _ in range(5)), return_exceptions=True
            )
            assert all(isinstance(f, Refused) and f.status == 502 for f in failures), failures
            assert vault.counts["bad"] == 1
            # A caller that goes away does not take the answer from the others.
            vault.answers["v2"] = (200, {"mongodb.url": "mongodb://db2/"})
            first = asyncio.ensure_future(resolver.mongodb_uri(vault.url("v2")))
            second = asyncio.ensure_future(resolver.mongodb_uri(vault.url("v2")))
            await asyncio.sleep(0)
            first.cancel()
            assert await second == "mongodb://db2/"
        finally:
            await resolver.aclose()


async def test_one_thread_id_in_two_vaults_is_two_threads_with_two_kernels(chat, mongo_server: MongoServer):
    """Two Freva instances behind one server: the same thread id in each vault's MongoDB never shares a kernel,
    and deleting it in one leaves the other's kernel alone (a replayed kernel would show a new process id)."""
    pid = "[[fake:code code='import os; print(os.getpid())']]"
    with MongoServer() as other:
        vault = await FakeVault(
            {"a": (200, {"mongodb.url": mongo_server.uri}), "b": (200, {"mongodb.url": other.uri})}
        ).start()
        try:
            a, b = vault.url("a"), vault.url("b")

            def output(lines: list[dict[str, Any]]) -> str:
                return "".join(x["content"] for x in lines if x["variant"] == "CodeOutput")

            first = output(await turn(chat, a, input=pid, thread_id="sharedid"))
            assert first.strip().isdigit()
            await turn(chat, b, user="bob", input="[[fake:code code='x = 1']]", thread_id="sharedid")
            assert output(await turn(chat, b, user="bob", input=pid, thread_id="sharedid")) != first
            assert (await chat("deletethread", user="bob", vault=b, thread_id="sharedid")).code == 200
            assert output(await turn(chat, a, input=pid, thread_id="sharedid")) == first
        finally:
            await vault.stop()
