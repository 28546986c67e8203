"""Input rules: integers, ids, text and JSON bodies that are refused with a 4xx `{"detail"}`, never a 500."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import body_json, parse_lines

ALICE = {"Authorization": "token alice"}


async def fetch(jp_fetch, route: str, *, method: str = "GET", body: str | None = None, **params: Any):
    """A request as sent, without the `api` fixture's conversions: raw bodies and percent-encoded bytes."""
    if method == "POST":
        return await jp_fetch(
            "api", "chatbot", route, method="POST", body=body, params=params, headers=ALICE, raise_error=False
        )
    return await jp_fetch("api", "chatbot", route, params=params, headers=ALICE, raise_error=False)


async def refused(response, status: int, detail_part: str) -> str:
    assert response.code == status, (response.code, response.body[:300])
    body = body_json(response)
    assert set(body) == {"detail"}, body
    assert detail_part.lower() in body["detail"].lower(), body
    return body["detail"]


async def a_thread(jp_fetch) -> str:
    response = await fetch(jp_fetch, "streamresponse", method="POST", body=json.dumps({"input": "hello"}))
    return parse_lines(response.body)[0]["content"]["thread_id"]


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_integers_are_ascii_digits_within_bounds(jp_fetch, method):
    tid = await a_thread(jp_fetch)

    async def call(route: str, **params: Any):
        if method == "POST":
            return await fetch(jp_fetch, route, method="POST", body=json.dumps(params))
        return await fetch(jp_fetch, route, **params)

    for value in ("²", "¹", "٣", "1.0", "-1", " 1", "1 ", "0x10", "99999999999999999999", "9" * 5000):
        await refused(await call("getuserthreads", page=value), 422, "page")
        await refused(await call("searchthreads", query="x", num_threads=value), 422, "num_threads")
        await refused(await call("userfeedback", thread_id=tid, feedback_index=value, feedback="up"), 422, "index")
        await refused(await call("editthread", source_thread_id=tid, user_index=value), 422, "user_index")
    await refused(await call("getuserthreads", page=10**9 + 1), 422, "page")
    await refused(await call("userfeedback", thread_id=tid, feedback_index=2**63, feedback="up"), 422, "index")
    # The largest page is an empty page, not an overflow.
    assert body_json(await call("getuserthreads", page=10**9)) == [[], 1]
    assert body_json(await call("getuserthreads", page="0001")) == [[], 1]


async def test_more_threads_per_page_than_100_are_served_as_100(jp_fetch):
    await a_thread(jp_fetch)
    for value in ("101", "1000000000"):
        threads, total = body_json(await fetch(jp_fetch, "getuserthreads", num_threads=value))
        assert total == 1 and len(threads) == 1
        # A page of 100: the second page starts past the one thread.
        assert body_json(await fetch(jp_fetch, "searchthreads", query="hello", num_threads=value)) == [threads, 1]
    await refused(await fetch(jp_fetch, "getuserthreads", num_threads="0"), 422, "num_threads")


async def test_a_huge_json_number_is_400(jp_fetch):
    body = '{"page": ' + "9" * 5000 + "}"
    await refused(await fetch(jp_fetch, "getuserthreads", method="POST", body=body), 400, "JSON")


@pytest.mark.parametrize("value", ["abc\n", "abc\r\n", " abc", "abc ", "a\tb", "ab/c", "a" * 65])
async def test_ids_match_whole_and_query_values_are_not_stripped(jp_fetch, value):
    await refused(await fetch(jp_fetch, "getthread", thread_id=value), 422, "thread_id")
    body = json.dumps({"thread_id": value})
    await refused(await fetch(jp_fetch, "getthread", method="POST", body=body), 422, "thread_id")
    body = json.dumps({"input": "x", "thread_id": value})
    await refused(await fetch(jp_fetch, "streamresponse", method="POST", body=body), 422, "thread_id")
    body = json.dumps({"source_thread_id": value, "user_index": 0})
    await refused(await fetch(jp_fetch, "editthread", method="POST", body=body), 422, "source_thread_id")


def nested(depth: int) -> str:
    """A body object whose deepest value is `depth` levels down, counting the body itself."""
    return '{"thread_id": "t", "x": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


@pytest.mark.parametrize("depth", [65, 1000, 100_000])
async def test_deep_json_bodies_are_400(jp_fetch, depth):
    response = await fetch(jp_fetch, "getthread", method="POST", body=nested(depth))
    await refused(response, 400, "nested deeper than 64")


async def test_json_bodies_64_deep_are_read(jp_fetch):
    response = await fetch(jp_fetch, "getthread", method="POST", body=nested(64))
    await refused(response, 404, "not found")  # read, and the thread is unknown


TEXT_FIELDS = [
    ("streamresponse", "input", {}),
    ("streamresponse", "thread_id", {"input": "x"}),
    ("streamresponse", "chatbot", {"input": "x"}),
    ("streamresponse", "kernel_id", {"input": "x"}),
    ("streamresponse", "notebook_path", {"input": "x"}),
    ("setthreadtopic", "topic", {"thread_id": "TID"}),
    ("userfeedback", "feedback", {"thread_id": "TID", "feedback_index": 0}),
    ("searchthreads", "query", {}),
    ("help", "endpoint", {}),
    ("getthread", "thread_id", {}),
    ("stop", "thread_id", {}),
    ("deletethread", "thread_id", {}),
    ("editthread", "source_thread_id", {"user_index": 0}),
]


async def test_a_lone_surrogate_in_any_text_field_is_422_naming_it(jp_fetch):
    tid = await a_thread(jp_fetch)
    for route, field, extra in TEXT_FIELDS:
        params = {k: tid if v == "TID" else v for k, v in extra.items()}
        # Valid JSON: the escape decodes to a lone surrogate.
        body = json.dumps({**params, field: "ok \ud800 ok"})
        assert "\\ud800" in body
        await refused(await fetch(jp_fetch, route, method="POST", body=body), 422, f"'{field}' contains a lone")
        # The same character percent-encoded in a query (its UTF-8-like bytes are no UTF-8).
        response = await fetch(jp_fetch, route, **params, **{field: b"ok \xed\xa0\x80"})
        await refused(response, 422, f"'{field}' is not valid UTF-8")
    # A surrogate deeper in a body, or in a key, is refused as well.
    body = json.dumps({"thread_id": tid, "extra": {"a": ["\udfff"]}})
    await refused(await fetch(jp_fetch, "getthread", method="POST", body=body), 422, "'extra'")
    body = json.dumps({"thread_id": tid, "\ud800": 1})
    await refused(await fetch(jp_fetch, "getthread", method="POST", body=body), 422, "lone surrogate")
    # Nothing of it was stored: the thread and the listing answer as before, for this user and another.
    stored = body_json(await fetch(jp_fetch, "getthread", thread_id=tid))
    assert [v["content"] for v in stored] == ["hello", stored[1]["content"]]
    assert body_json(await fetch(jp_fetch, "getuserthreads"))[1] == 1
    bob = await jp_fetch("api", "chatbot", "getuserthreads", headers={"Authorization": "token bob"})
    assert body_json(bob) == [[], 0]


async def test_the_description_names_the_rules(jp_fetch):
    spec = body_json(await fetch(jp_fetch, "openapi.json"))
    edit = [p["name"] for p in spec["paths"]["/api/chatbot/editthread"]["get"]["parameters"]]
    assert edit == ["source_thread_id", "user_index", "show_tools"]
    paging = spec["paths"]["/api/chatbot/getuserthreads"]["get"]["parameters"][0]
    assert paging["name"] == "num_threads" and "above 100 counts as 100" in paging["description"]
