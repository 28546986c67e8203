"""The server on a configured MongoDB (`mongodb_uri`): MongoDB going away and coming back (a secantusdb of the
test's own, stopped and started again on its port), and threads too long to continue (413). A real server
in-process; MongoDB is a real wire-protocol server (tests/mongo_server.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from tests.conftest import body_json, parse_lines
from tests.mongo_server import MongoServer, unique_database
from tests.test_store_failures import Stream

# Above the MongoDB store's 12 MiB per thread, below MongoDB's 16 MB per document.
ANSWER_CHARS = 6_500_000
TOO_LONG = "Thread too long: fork it"


@pytest.fixture
def mongo() -> Iterator[MongoServer]:
    """A MongoDB of this test alone: the test may stop it."""
    with MongoServer() as server:
        yield server


@pytest.fixture
def freva_config(request: pytest.FixtureRequest, mongo: MongoServer) -> dict[str, Any]:
    extra = getattr(request, "param", {})
    return {"mongodb_uri": mongo.uri, "mongodb_database_name": unique_database(), **extra}


def assert_detail(response: Any, status: int, start: str) -> str:
    assert response.code == status, (response.code, response.body)
    detail = body_json(response)["detail"]
    assert detail.startswith(start), detail
    return detail


async def test_mongodb_down_is_503_on_routes_an_error_in_a_stream_and_the_server_recovers(
    api, jp_fetch, mongo: MongoServer
) -> None:
    first = parse_lines((await api("streamresponse", input="before the outage")).body)
    assert first[-1] == {"variant": "StreamEnd", "content": "Stream ended."}
    stream = Stream(jp_fetch, "[[fake:text tokens=40 delay=0.1]] a long story")
    await stream.started()
    # Off the event loop: the server runs on it.
    await asyncio.to_thread(mongo.stop)
    lines = await stream.finished()
    errors = [line["content"] for line in lines if line["variant"] == "ServerError"]
    assert errors and errors[0].startswith("The thread store failed: MongoDB is unreachable"), errors
    assert lines[-1] == {"variant": "StreamEnd", "content": "Stream ended with an error."}
    assert [line["variant"] for line in lines].count("StreamEnd") == 1
    # While it is down: every thread route says so, the rest of the API answers.
    thread_id = lines[0]["content"]["thread_id"]
    for route, params in (
        ("getuserthreads", {}),
        ("getthread", {"thread_id": thread_id}),
        ("streamresponse", {"input": "anyone there?"}),
        ("streamresponse", {"input": "continue", "thread_id": thread_id}),
    ):
        response = await api(route, raise_error=False, **params)
        assert_detail(response, 503, "The thread store failed: MongoDB is unreachable")
    assert (await api("ping", user="")).code == 200
    assert (await api("availablechatbots")).code == 200
    # Back on the same port (empty: secantusdb keeps its data in memory): the same server works again.
    await asyncio.to_thread(mongo.start)
    async with asyncio.timeout(60):
        while True:
            if (await api("getuserthreads", raise_error=False)).code == 200:
                break
            await asyncio.sleep(0.2)
    again = parse_lines((await api("streamresponse", input="after the outage")).body)
    assert again[-1] == {"variant": "StreamEnd", "content": "Stream ended."}
    [threads, total] = body_json(await api("getuserthreads"))
    assert total == 1 and threads[0]["thread_id"] == again[0]["content"]["thread_id"]


async def insert_long_thread(mongo: MongoServer, database: str, owner: str) -> str:
    """A thread of the upstream backend with two long answers (it kept images in line): over 12 MiB."""
    thread_id = "legacyLongThread01"
    document = {
        "user_id": owner,
        "thread_id": thread_id,
        "date": datetime(2025, 3, 1, tzinfo=UTC),
        "topic": "Plots of every decade",
        "content": [
            {"variant": "User", "content": "plot the 1990s"},
            {"variant": "Assistant", "content": "a" * ANSWER_CHARS},
            {"variant": "User", "content": "and the 2000s"},
            {"variant": "Assistant", "content": "b" * ANSWER_CHARS},
        ],
    }
    client: AsyncMongoClient = AsyncMongoClient(mongo.uri)
    try:
        await client[database]["threads"].insert_one(document)
    finally:
        await client.close()
    return thread_id


async def test_a_thread_too_long_to_continue_is_413_and_a_fork_goes_on(
    api, mongo: MongoServer, freva_config: dict[str, Any]
) -> None:
    thread_id = await insert_long_thread(mongo, freva_config["mongodb_database_name"], "alice")
    # It reads as ever.
    stored = body_json(await api("getthread", thread_id=thread_id))
    assert [v["variant"] for v in stored] == ["User", "Assistant", "User", "Assistant"]
    for user in ("alice", "bob"):  # bob would fork all of it: just as long
        response = await api("streamresponse", user=user, thread_id=thread_id, input="and the 2010s", raise_error=False)
        detail = assert_detail(response, 413, TOO_LONG)
        assert "editthread" in detail and "12 MiB" in detail, detail
        assert response.reason == TOO_LONG
    assert len(body_json(await api("getthread", thread_id=thread_id))) == 4, "nothing was added"
    # A fork from the second question holds the first answer only, and continues.
    fork = body_json(await api("editthread", source_thread_id=thread_id, user_index=1))
    lines = parse_lines((await api("streamresponse", thread_id=fork["new_thread_id"], input="and the 2000s")).body)
    assert lines[-1] == {"variant": "StreamEnd", "content": "Stream ended."}
    assert lines[0]["content"]["thread_id"] == fork["new_thread_id"]
    # A memory-only turn is not limited by the store (the memory store has its own bound).
    memory = await api("streamresponse", thread_id=thread_id, input="just here", store_thread=False, raise_error=False)
    assert memory.code != 413, memory.body


@pytest.mark.parametrize("freva_config", [{"thread_sharing": False}], indirect=True)
async def test_with_sharing_off_another_users_long_thread_is_not_revealed_by_413(
    api, mongo: MongoServer, freva_config: dict[str, Any]
) -> None:
    thread_id = await insert_long_thread(mongo, freva_config["mongodb_database_name"], "alice")
    response = await api("streamresponse", user="bob", thread_id=thread_id, input="mine?")
    lines = parse_lines(response.body)
    assert lines[0]["content"]["thread_id"] != thread_id
    assert lines[-1] == {"variant": "StreamEnd", "content": "Stream ended."}
