"""Threads the upstream backends left in MongoDB (tests/legacy_threads.py), through the real server on a real
MongoDB wire-protocol server: they list, read in API.md's current shapes, search, continue (their history reaches
the LLM), fork and take feedback like our own threads, and another user meets them as on our own threads."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from tests.conftest import body_json
from tests.legacy_threads import ALICE_THREADS, ALL_THREADS, BOB, ODD, PY1, PY2, RUST, LegacyThread
from tests.mongo_server import MongoServer, unique_database
from tests.test_routes import expect_error
from tests.test_tools import thread_part, turn_requests

COLLECTION = "threads"  # the upstream's default, and ours
TEXT_VARIANTS = ("User", "Assistant", "Code", "CodeOutput", "CodeError", "ServerError", "OpenAIError")
CONTROL_VARIANTS = ("Prompt", "ServerHint", "StreamEnd")
FOLLOW_UP = "One more question"
FAKE_ANSWER = f"Hello from the fake LLM. You said: {FOLLOW_UP}"


@pytest.fixture
def database() -> str:
    return unique_database()


@pytest.fixture
def freva_config(request: pytest.FixtureRequest, mongo_server: MongoServer, database: str) -> dict[str, Any]:
    # An in-process code tool: a code turn needs no kernel here.
    extra = getattr(request, "param", {})
    return {
        "mongodb_uri": mongo_server.uri,
        "mongodb_database_name": database,
        "tools": ["tests.tools:InProcessPython"],
        **extra,
    }


@pytest.fixture
def mongo(mongo_server: MongoServer, database: str, jp_asyncio_loop) -> Iterator[Any]:
    """The test database's thread collection, to write the upstream's documents and read what became of them."""
    client: AsyncMongoClient = AsyncMongoClient(mongo_server.uri)
    yield client[database][COLLECTION]
    jp_asyncio_loop.run_until_complete(client.close())


async def insert(mongo: Any, *threads: LegacyThread) -> None:
    await mongo.insert_many([copy.deepcopy(t.document) for t in threads or ALL_THREADS])


def comparable(variants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Variants with each `Code`'s arguments decoded: reading may rewrite them into the canonical form."""
    out = []
    for v in variants:
        v = dict(v)
        if v["variant"] == "Code" and isinstance(v.get("content"), str):
            try:
                v["content"] = ("arguments", json.loads(v["content"]))
            except ValueError:
                pass
        out.append(v)
    return out


def assert_current_shapes(variants: list[dict[str, Any]]) -> None:
    for v in variants:
        assert v["variant"] not in CONTROL_VARIANTS, v
        if v["variant"] in TEXT_VARIANTS:
            assert isinstance(v["content"], str), v
        assert set(v) <= {"variant", "content", "id", "tool_name", "model", "feedback"}, v
        assert v.get("id", "") is not None, v


def assert_date(listed: str, expected: datetime) -> None:
    assert listed.endswith("Z"), listed
    assert abs(datetime.fromisoformat(listed) - expected) < timedelta(milliseconds=1), (listed, expected)


def chat_view(messages: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Chat messages as tuples: ("user", text), ("assistant", text, ((id, tool, arguments), ...)), ("tool", id,
    text); arguments decoded, so that their JSON layout does not matter."""

    def arguments(text: str) -> Any:
        try:
            return json.loads(text)
        except ValueError:
            return text

    out: list[tuple[Any, ...]] = []
    for m in messages:
        if m["role"] == "assistant":
            calls = tuple(
                (c["id"], c["function"]["name"], arguments(c["function"]["arguments"]))
                for c in m.get("tool_calls") or []
            )
            out.append(("assistant", m.get("content") or "", calls))
        elif m["role"] == "tool":
            out.append(("tool", m["tool_call_id"], m["content"]))
        else:
            out.append((m["role"], m["content"]))
    return out


def assert_valid_for_providers(messages: list[dict[str, Any]]) -> None:
    """What OpenAI-compatible providers refuse with a 400: a tool call without a non-empty id unique in the request,
    a tool result that answers no call of the assistant message before it, a call left without its result."""
    seen: set[str] = set()
    waiting: list[str] = []
    for m in messages:
        if m["role"] == "tool":
            assert m["tool_call_id"] in waiting, f"a tool result answers no pending call: {m}"
            waiting.remove(m["tool_call_id"])
            continue
        assert not waiting, f"calls without a result before {m}: {waiting}"
        for call in m.get("tool_calls") or []:
            assert call["id"] and call["id"] not in seen, f"a tool call id empty or used twice: {call}"
            seen.add(call["id"])
            waiting.append(call["id"])
    assert not waiting, f"calls without a result: {waiting}"


async def thread(api, thread_id: str, *, user: str = "alice", show_tools: bool = True) -> list[dict[str, Any]]:
    return body_json(await api("getthread", user=user, thread_id=thread_id, show_tools=show_tools))


async def listed(api, user: str = "alice", **params: Any) -> tuple[list[dict[str, str]], int]:
    threads, total = body_json(await api("getuserthreads", user=user, **params))
    return threads, total


async def found(api, query: str, user: str = "alice") -> list[str]:
    threads, total = body_json(await api("searchthreads", user=user, query=query))
    assert total == len(threads)
    return [t["thread_id"] for t in threads]


async def stream(api, *, user: str = "alice", **params: Any) -> list[dict[str, Any]]:
    response = await api("streamresponse", user=user, method="POST", **params)
    return [json.loads(line) for line in response.body.decode().splitlines()]


# -- listing -------------------------------------------------------------------------------------------------


async def test_legacy_threads_list_newest_first_for_their_owner_only(api, mongo):
    await insert(mongo)
    threads, total = await listed(api)
    newest_first = sorted(ALICE_THREADS, key=lambda t: t.date, reverse=True)
    assert [t["thread_id"] for t in threads] == [t.thread_id for t in newest_first]
    assert total == len(ALICE_THREADS)
    for entry, legacy in zip(threads, newest_first, strict=True):
        assert set(entry) == {"user_id", "thread_id", "date", "topic"}, entry  # no content, no `_id`
        assert entry["user_id"] == "alice"
        assert entry["topic"] == legacy.document.get("topic", ""), entry
        # a BSON datetime and chrono's RFC 3339 string with nanoseconds alike
        assert_date(entry["date"], legacy.date)
    page, total = await listed(api, num_threads=2, page=1)
    assert [t["thread_id"] for t in page] == [t.thread_id for t in newest_first[2:4]] and total == len(ALICE_THREADS)
    bobs, total = await listed(api, user="bob")
    assert [t["thread_id"] for t in bobs] == [BOB.thread_id] and total == 1


# -- reading -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("show_tools", [False, True])
@pytest.mark.parametrize("legacy", [RUST, PY1, PY2, BOB], ids=lambda t: t.name)
async def test_getthread_reads_a_legacy_thread_in_current_shapes(api, mongo, legacy, show_tools):
    await insert(mongo)
    got = await thread(api, legacy.thread_id, user=legacy.user_id, show_tools=show_tools)
    assert_current_shapes(got)
    assert comparable(got) == comparable(legacy.shown(show_tools))


async def test_odd_legacy_shapes_read_in_current_shapes(api, mongo):
    await insert(mongo, ODD)
    got = await thread(api, ODD.thread_id)
    assert_current_shapes(got)
    assert [v["variant"] for v in got if v["variant"] != "CodeOutput"] == [
        "User",
        "Code",
        "Code",
        "Assistant",
        "ServerError",
    ]
    codes = [v for v in got if v["variant"] == "Code"]
    # the arguments of each call as a JSON text, also where the upstream kept them as an object
    assert [json.loads(v["content"]) for v in codes] == [{"code": "x = 1"}, {"code": "print({'a': 1})"}]
    # every call has an id of its own (the LLM must be able to pair it with its result), every output the id of
    # an earlier call (API.md: a CodeOutput's id is its Code's)
    ids = [v.get("id") for v in codes]
    assert all(ids) and len(set(ids)) == len(ids) and ids[1] == "call_o2", ids
    outputs = [(v.get("id"), v["content"]) for v in got if v["variant"] == "CodeOutput"]
    assert [i for i, _ in outputs if i not in ids] == [], outputs
    assert "{'a': 1}\n" in "".join(text for i, text in outputs if i == "call_o2")
    assert next(v for v in got if v["variant"] == "Assistant")["content"] == ""
    threads, _ = await listed(api)
    assert threads[0]["topic"] == ""


async def test_searchthreads_finds_legacy_threads(api, mongo):
    await insert(mongo)
    assert await found(api, "now the ZONAL mean") == [RUST.thread_id]  # a User message, any case
    assert await found(api, "annual mean temperature") == [RUST.thread_id]  # topic and message
    assert await found(api, "in hamburg?") == [PY1.thread_id]  # a regex character taken literally
    assert await found(api, "19,4 °c") == [PY1.thread_id]  # an Assistant message, not ASCII
    assert await found(api, "find datasets?") == [PY2.thread_id]
    assert await found(api, "LINE THROUGH three") == [PY2.thread_id]
    assert await found(api, "odd shapes") == [ODD.thread_id]  # a thread without topic
    assert await found(api, "mean(") == []  # not a broken regular expression
    assert await found(api, "FrevaSystemPromptWord") == []  # the stored prompt is no message
    assert await found(api, "rain most") == []  # bob's thread
    assert await found(api, "rain most", user="bob") == [BOB.thread_id]


# -- continuing ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [RUST, PY1, PY2], ids=lambda t: t.name)
async def test_a_turn_continues_a_legacy_thread(api, mongo, fake_llm, legacy):
    await insert(mongo)
    fake_llm.clear()
    began = datetime.now(UTC)
    lines = await stream(api, thread_id=legacy.thread_id, input=FOLLOW_UP)
    assert lines[0]["content"]["thread_id"] == legacy.thread_id  # the owner's thread: no fork
    # The LLM received the legacy thread as chat history: code as tool calls with their results.
    (request,) = turn_requests(fake_llm)
    messages = thread_part(request["body"]["messages"])
    assert_valid_for_providers(messages)
    assert chat_view(messages) == [*legacy.history, ("user", FOLLOW_UP)]
    # The thread now holds the legacy part, read as before, and the new turn.
    got = await thread(api, legacy.thread_id)
    assert comparable(got[: len(legacy.expected)]) == comparable(legacy.expected)
    assert [(v["variant"], v["content"]) for v in got[len(legacy.expected) :]] == [
        ("User", FOLLOW_UP),
        ("Assistant", FAKE_ANSWER),
    ]
    threads, total = await listed(api)
    assert threads[0]["thread_id"] == legacy.thread_id and total == len(ALICE_THREADS)
    assert datetime.fromisoformat(threads[0]["date"]) >= began - timedelta(seconds=1)
    # The document keeps the upstream's shape: what the upstream wrote stays as it was, the new variants follow,
    # `date` is a BSON datetime now.
    raw = await mongo.find_one({"thread_id": legacy.thread_id})
    old = legacy.document["content"]
    assert raw["content"][: len(old)] == old
    assert [v["variant"] for v in raw["content"][len(old) :]] == ["User", "Assistant"]
    assert isinstance(raw["date"], datetime)
    assert (raw["user_id"], raw["topic"]) == (legacy.user_id, legacy.document["topic"])


async def test_a_turn_continues_a_legacy_thread_of_odd_shapes(api, mongo, fake_llm):
    await insert(mongo, ODD)
    fake_llm.clear()
    await stream(api, thread_id=ODD.thread_id, input=FOLLOW_UP)
    messages = thread_part(turn_requests(fake_llm)[0]["body"]["messages"])
    assert_valid_for_providers(messages)
    view = chat_view(messages)
    assert [m[1] for m in view if m[0] == "user"] == ["Odd shapes ahead", FOLLOW_UP]
    calls = [call[2] for m in view if m[0] == "assistant" for call in m[2]]
    assert calls == [{"code": "x = 1"}, {"code": "print({'a': 1})"}]
    assert [m for m in view if m[0] == "tool"][1][2].startswith("{'a': 1}\n")


async def test_a_code_turn_on_a_legacy_thread_takes_a_call_id_of_its_own(api, mongo, fake_llm):
    await insert(mongo, PY2)
    lines = await stream(api, thread_id=PY2.thread_id, input="compute", chatbot="fake-code")
    new_ids = {x["id"] for x in lines if x["variant"] in ("Code", "CodeOutput")}
    legacy_ids = {v["id"] for v in PY2.document["content"] if "id" in v}
    assert len(new_ids) == 1 and not new_ids & legacy_ids, new_ids  # the provider said "call_1" again
    got = await thread(api, PY2.thread_id)
    (new_id,) = new_ids
    assert [(v["variant"], v.get("id")) for v in got[len(PY2.expected) + 1 :]] == [
        ("Code", new_id),
        ("CodeOutput", new_id),
        ("Assistant", None),
    ]
    assert got[-2]["content"] == "42\n"
    # the second LLM call of the turn: the legacy calls and the new one, each with its result
    messages = thread_part(turn_requests(fake_llm)[-1]["body"]["messages"])
    assert_valid_for_providers(messages)
    assert chat_view(messages)[-2:] == [
        ("assistant", "", ((new_id, "code_interpreter", {"code": "print(6*7)"}),)),
        ("tool", new_id, "42\n"),
    ]


# -- forks and feedback --------------------------------------------------------------------------------------


@pytest.mark.parametrize("user", ["alice", "bob"])
async def test_editthread_forks_a_legacy_thread(api, mongo, user):
    await insert(mongo)
    answer = body_json(await api("editthread", user=user, source_thread_id=RUST.thread_id, user_index=1))
    before_second_question = RUST.expected[:6]
    assert RUST.expected[6] == {"variant": "User", "content": "Now the Zonal Mean, please"}
    assert_current_shapes(answer["history"])
    assert comparable(answer["history"]) == comparable(before_second_question)
    new_id = answer["new_thread_id"]
    assert await thread(api, new_id, user=user) == answer["history"]
    assert new_id in [t["thread_id"] for t in (await listed(api, user=user))[0]]
    # the source is untouched, in the database too
    assert comparable(await thread(api, RUST.thread_id)) == comparable(RUST.expected)
    raw = await mongo.find_one({"thread_id": RUST.thread_id}, {"_id": 0})
    assert raw == RUST.document


async def test_userfeedback_on_legacy_threads(api, mongo):
    await insert(mongo)
    # PY2's answers and calls, as feedback counts them: 0 the upstream's "up", 4 the call "1/0"
    removed = await api("userfeedback", thread_id=PY2.thread_id, feedback_index=0, feedback="remove")
    assert body_json(removed) == {"detail": "Feedback removed."}
    saved = await api("userfeedback", method="POST", thread_id=PY2.thread_id, feedback_index=4, feedback="down")
    assert body_json(saved) == {"detail": "Feedback saved."}
    got = await thread(api, PY2.thread_id)
    assert [(v["variant"], v.get("id"), v.get("feedback")) for v in got if "feedback" in v] == [
        ("Code", "call_3", "down")
    ]
    await expect_error(
        api, 422, "feedback_index", route="userfeedback", thread_id=PY2.thread_id, feedback_index=6, feedback="up"
    )
    # RUST stored a Prompt and a ServerHint before its first answer: they count for nothing
    await api("userfeedback", thread_id=RUST.thread_id, feedback_index=0, feedback="Nice map")
    got = await thread(api, RUST.thread_id)
    assert [(v["content"], v["feedback"]) for v in got if "feedback" in v] == [
        ("Let me load the ERA5 data and plot it.", "Nice map")
    ]
    # on the variant itself, where the upstream keeps it and reads it back
    raw = await mongo.find_one({"thread_id": PY2.thread_id})
    assert [(i, v.get("feedback")) for i, v in enumerate(raw["content"]) if "feedback" in v] == [(13, "down")]
    raw = await mongo.find_one({"thread_id": RUST.thread_id})
    assert [(i, v.get("feedback")) for i, v in enumerate(raw["content"]) if "feedback" in v] == [(3, "Nice map")]


# -- owners and others ---------------------------------------------------------------------------------------


async def test_another_user_meets_a_legacy_thread_as_one_of_ours(api, mongo):
    await insert(mongo)
    tid = RUST.thread_id
    # bob may read (ids are share links) ...
    assert comparable(await thread(api, tid, user="bob")) == comparable(RUST.expected)
    # ... but not change, stop or rate it
    await expect_error(api, 403, "", route="setthreadtopic", user="bob", thread_id=tid, topic="x")
    await expect_error(api, 403, "", route="deletethread", user="bob", thread_id=tid)
    await expect_error(api, 403, "", route="stop", user="bob", thread_id=tid)
    await expect_error(api, 403, "", route="userfeedback", user="bob", thread_id=tid, feedback_index=0, feedback="up")
    # streaming into it forks it for bob, with its whole history
    lines = await stream(api, user="bob", thread_id=tid, input=FOLLOW_UP)
    bob_tid = lines[0]["content"]["thread_id"]
    assert bob_tid != tid
    forked = await thread(api, bob_tid, user="bob")
    assert comparable(forked[: len(RUST.expected)]) == comparable(RUST.expected)
    assert [v["variant"] for v in forked[len(RUST.expected) :]] == ["User", "Assistant"]
    assert [t["thread_id"] for t in (await listed(api, user="bob"))[0]] == [bob_tid, BOB.thread_id]
    assert await mongo.find_one({"thread_id": tid}, {"_id": 0}) == RUST.document
    # the owner renames and deletes it
    await api("setthreadtopic", thread_id=tid, topic="Renamed")
    assert {t["thread_id"]: t["topic"] for t in (await listed(api))[0]}[tid] == "Renamed"
    assert body_json(await api("deletethread", thread_id=tid)) == {"detail": "Thread deleted."}
    await expect_error(api, 404, "not found", route="getthread", thread_id=tid)
    assert await mongo.find_one({"thread_id": tid}) is None


@pytest.mark.parametrize("freva_config", [{"thread_sharing": False}], indirect=True)
async def test_sharing_off_hides_legacy_threads_from_others(api, mongo):
    await insert(mongo)
    tid = RUST.thread_id
    for route, extra in [
        ("getthread", {}),
        ("setthreadtopic", {"topic": "x"}),
        ("deletethread", {}),
        ("stop", {}),
        ("userfeedback", {"feedback_index": 0, "feedback": "up"}),
    ]:
        await expect_error(api, 404, "not found", route=route, user="bob", thread_id=tid, **extra)
    await expect_error(api, 404, "not found", route="editthread", user="bob", source_thread_id=tid, user_index=0)
    lines = await stream(api, user="bob", thread_id=tid, input="mine")
    bob_tid = lines[0]["content"]["thread_id"]
    assert bob_tid != tid
    assert [v["variant"] for v in await thread(api, bob_tid, user="bob")] == ["User", "Assistant"]
    assert comparable(await thread(api, tid)) == comparable(RUST.expected)
