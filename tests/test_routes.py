"""Every chatbot route through a real jupyter_server: success and error statuses, identity, ownership."""

from __future__ import annotations

import re

import pytest
from tornado.httpclient import HTTPClientError

from freva_gpt_ext import __version__
from freva_gpt_ext.handlers.spec import ROUTES
from tests.conftest import body_json, parse_lines


async def expect_error(call, status: int, detail_part: str = "", **kwargs):
    with pytest.raises(HTTPClientError) as info:
        await call(**kwargs)
    assert info.value.code == status, info.value.response.body
    body = body_json(info.value.response)
    assert set(body) == {"detail"}, body
    assert detail_part.lower() in body["detail"].lower(), body
    return body["detail"]


async def stream(api, user: str = "alice", **params):
    response = await api("streamresponse", user=user, method="POST", **params)
    return parse_lines(response.body)


async def test_ping_needs_no_auth(jp_fetch):
    response = await jp_fetch("api", "chatbot", "ping")
    assert body_json(response) == {"status": "ok", "version": __version__}
    response = await jp_fetch("api", "chatbot", "ping", method="POST", body="")
    assert body_json(response)["status"] == "ok"


@pytest.mark.parametrize("route", ["availablechatbots", "getuserthreads", "newthread", "help"])
async def test_routes_refuse_unauthenticated_with_detail(jp_fetch, route):
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch("api", "chatbot", route, headers={"Authorization": "token mallory"})
    assert info.value.code == 403
    assert "detail" in body_json(info.value.response)


async def test_availablechatbots_in_catalogue_order_without_embeddings(api):
    names = body_json(await api("availablechatbots"))
    assert names[0] == "fake-text"
    assert "fake-embedding" not in names
    assert "fake-text-litellm" in names


async def test_newthread_ids_are_unguessable(api):
    ids = {body_json(await api("newthread")) for _ in range(5)}
    assert len(ids) == 5
    assert all(re.fullmatch(r"[A-Za-z0-9]{32}", i) for i in ids)
    # Nothing is recorded.
    threads, total = body_json(await api("getuserthreads"))
    assert (threads, total) == ([], 0)


async def test_openapi_lists_every_route(api):
    doc = body_json(await api("openapi.json"))
    assert doc["info"]["version"] == __version__
    assert set(doc["paths"]) == {f"/api/chatbot/{r.name}" for r in ROUTES}


async def test_help_and_docs_come_from_one_description(api):
    every = body_json(await api("help"))
    assert set(every) == {r.name for r in ROUTES}
    one = body_json(await api("help", endpoint="stop"))
    assert one == every["stop"]
    await expect_error(api, 404, "unknown endpoint", route="help", endpoint="nope")
    docs = (await api("docs")).body.decode()
    for route in ROUTES:
        assert f"/api/chatbot/{route.name}" in docs


async def test_post_body_wins_and_bad_bodies_are_400(api, jp_fetch):
    await stream(api, input="hello", thread_id="body-thread")
    response = await jp_fetch(
        "api",
        "chatbot",
        "getthread",
        method="POST",
        params={"thread_id": "ignored"},
        body='{"thread_id": "body-thread"}',
        headers={"Authorization": "token alice"},
    )
    assert body_json(response)[0] == {"variant": "User", "content": "hello"}
    for bad in ("{not json", "[1, 2]"):
        with pytest.raises(HTTPClientError) as info:
            await jp_fetch(
                "api",
                "chatbot",
                "getthread",
                method="POST",
                body=bad,
                headers={"Authorization": "token alice"},
            )
        assert info.value.code == 400
        assert "detail" in body_json(info.value.response)


async def test_stream_text_turn_is_stored(api, fake_llm):
    lines = await stream(api, input="What is ERA5?")
    assert lines[0]["variant"] == "ServerHint"
    thread_id = lines[0]["content"]["thread_id"]
    assert lines[0]["content"]["model"] == "fake-text"
    assert lines[-1]["variant"] == "StreamEnd"
    assert all(line["variant"] != "User" for line in lines)
    text = "".join(line["content"] for line in lines if line["variant"] == "Assistant")
    assert text == "Hello from the fake LLM. You said: What is ERA5?"
    stored = body_json(await api("getthread", thread_id=thread_id))
    assert stored == [
        {"variant": "User", "content": "What is ERA5?"},
        {"variant": "Assistant", "content": text, "model": "fake-text"},
    ]
    threads, total = body_json(await api("getuserthreads"))
    assert total == 1
    assert threads[0]["thread_id"] == thread_id
    assert threads[0]["user_id"] == "alice"
    assert threads[0]["topic"] in ("What is ERA5?", "Hello from the fake LLM. You said: What is ERA5?")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", threads[0]["date"])
    assert "content" not in threads[0]


async def test_prompts_and_history_sent_once(api, fake_llm):
    first = await stream(api, input="first question")
    thread_id = first[0]["content"]["thread_id"]
    fake_llm.clear()
    await stream(api, input="second question", thread_id=thread_id)
    (request,) = fake_llm.requests
    messages = request["body"]["messages"]
    assert messages[0]["role"] == "system"
    assert "code_interpreter" in messages[0]["content"]
    systems = [m for m in messages if m["role"] == "system"]
    assert len(systems) == 2  # starting prompt + summary prompt
    # the prompt set's few-shot examples sit between the two; the thread follows the summary prompt
    thread = messages[messages.index(systems[1]) + 1 :]
    users = [m["content"] for m in thread if m["role"] == "user"]
    assert users == ["first question", "second question"]
    assistants = [m["content"] for m in thread if m["role"] == "assistant"]
    assert assistants == ["Hello from the fake LLM. You said: first question"]
    assert messages[-1] == {"role": "user", "content": "second question"}
    assert request["body"]["stream"] is True
    assert request["body"]["model"] == "fake-text"


async def test_stream_validation_errors_before_first_line(api):
    detail = await expect_error(api, 422, "chatbot", route="streamresponse", input="x", chatbot="nope")
    assert "fake-text" in detail  # lists the valid names
    await expect_error(api, 422, "input", route="streamresponse")
    await expect_error(api, 422, "thread_id", route="streamresponse", input="x", thread_id="../etc/passwd")
    await expect_error(api, 422, "thread_id", route="streamresponse", input="x", thread_id="a" * 65)
    await expect_error(api, 422, "store_thread", route="streamresponse", input="x", store_thread="maybe")
    await expect_error(api, 404, "kernel", route="streamresponse", input="x", kernel_id="no-such-kernel")
    await expect_error(api, 404, "kernel", route="streamresponse", input="x", notebook_path="nope.ipynb")


@pytest.mark.parametrize("freva_config", [{"max_input_chars": 10}])
async def test_input_too_large_is_413(api):
    await expect_error(api, 413, "longer", route="streamresponse", input="x" * 11)


async def test_empty_thread_id_means_new_thread(api):
    lines = await stream(api, input="hi", thread_id="")
    assert re.fullmatch(r"[A-Za-z0-9]{32}", lines[0]["content"]["thread_id"])
    lines = await stream(api, input="hi", thread_id="client_chosen-id")
    assert lines[0]["content"]["thread_id"] == "client_chosen-id"


async def test_stream_headers(jp_fetch):
    response = await jp_fetch(
        "api",
        "chatbot",
        "streamresponse",
        params={"input": "hi"},
        headers={"Authorization": "token alice"},
    )
    assert response.headers["Content-Type"] == "application/x-ndjson"
    assert response.headers["Cache-Control"] == "no-cache, no-transform"
    assert response.headers["X-Accel-Buffering"] == "no"


async def test_llm_http_error_in_stream(api):
    lines = await stream(api, input="x", chatbot="fake-error")
    assert [line["variant"] for line in lines] == ["ServerHint", "ServerError", "StreamEnd"]
    assert "500" in lines[1]["content"]
    stored = body_json(await api("getthread", thread_id=lines[0]["content"]["thread_id"]))
    assert [v["variant"] for v in stored] == ["User", "ServerError"]


async def test_non_ascii_is_escaped_on_the_wire(api):
    response = await api("streamresponse", input="Temperatur über Köln")
    assert all(byte < 128 for byte in response.body)
    lines = parse_lines(response.body)
    text = "".join(line["content"] for line in lines if line["variant"] == "Assistant")
    assert text.endswith("Temperatur über Köln")


async def test_ownership_and_sharing(api):
    lines = await stream(api, input="alice's question")
    tid = lines[0]["content"]["thread_id"]
    # bob may read (ids are share links) ...
    assert len(body_json(await api("getthread", user="bob", thread_id=tid))) == 2
    # ... but not change or stop
    await expect_error(api, 403, "another user", route="setthreadtopic", user="bob", thread_id=tid, topic="x")
    await expect_error(api, 403, "", route="deletethread", user="bob", thread_id=tid)
    await expect_error(api, 403, "", route="stop", user="bob", thread_id=tid)
    await expect_error(api, 403, "", route="userfeedback", user="bob", thread_id=tid, feedback_index=0, feedback="up")
    # streaming into alice's thread forks it for bob
    bob_lines = await stream(api, user="bob", input="bob's follow-up", thread_id=tid)
    bob_tid = bob_lines[0]["content"]["thread_id"]
    assert bob_tid != tid
    bob_thread = body_json(await api("getthread", user="bob", thread_id=bob_tid))
    assert [v["content"] for v in bob_thread if v["variant"] == "User"] == ["alice's question", "bob's follow-up"]
    assert len(body_json(await api("getthread", thread_id=tid))) == 2  # alice's is untouched
    # listings are isolated
    assert [t["thread_id"] for t in body_json(await api("getuserthreads"))[0]] == [tid]
    assert [t["thread_id"] for t in body_json(await api("getuserthreads", user="bob"))[0]] == [bob_tid]
    assert body_json(await api("searchthreads", user="bob", query="alice's"))[1] == 1
    assert body_json(await api("searchthreads", user="alice", query="bob's"))[1] == 0


@pytest.mark.parametrize("freva_config", [{"thread_sharing": False}])
async def test_sharing_off_hides_foreign_threads_everywhere(api):
    lines = await stream(api, input="private")
    tid = lines[0]["content"]["thread_id"]
    for route, extra in [
        ("getthread", {}),
        ("setthreadtopic", {"topic": "x"}),
        ("deletethread", {}),
        ("stop", {}),
        ("userfeedback", {"feedback_index": 0, "feedback": "up"}),
    ]:
        await expect_error(api, 404, "not found", route=route, user="bob", thread_id=tid, **extra)
    await expect_error(api, 404, "not found", route="editthread", user="bob", source_thread_id=tid, user_index=0)
    await expect_error(api, 404, "not found", route="getthread", user="bob", thread_id="unknownthread")
    # streaming into it gives bob a new, empty thread
    bob_lines = await stream(api, user="bob", input="mine", thread_id=tid)
    bob_tid = bob_lines[0]["content"]["thread_id"]
    assert bob_tid != tid
    bob_thread = body_json(await api("getthread", user="bob", thread_id=bob_tid))
    assert [v["variant"] for v in bob_thread] == ["User", "Assistant"]
    assert bob_thread[0]["content"] == "mine"


async def test_topic_rename_search_delete(api):
    tid = (await stream(api, input="Plot ERA5 temperature"))[0]["content"]["thread_id"]
    other = (await stream(api, input="Precipitation trend"))[0]["content"]["thread_id"]
    assert body_json(await api("setthreadtopic", method="POST", thread_id=tid, topic="My plot")) == {
        "detail": "Topic updated."
    }
    threads, total = body_json(await api("getuserthreads"))
    assert total == 2
    assert threads[0]["thread_id"] == other  # newest activity first
    assert {t["topic"] for t in threads} == {"My plot", "Precipitation trend"}
    found, n = body_json(await api("searchthreads", query="my PLOT"))
    assert n == 1 and found[0]["thread_id"] == tid
    found, n = body_json(await api("searchthreads", query="fake llm"))  # message text
    assert n == 2
    page, n = body_json(await api("getuserthreads", num_threads=1, page=1))
    assert n == 2 and [t["thread_id"] for t in page] == [tid]
    await expect_error(api, 422, "num_threads", route="getuserthreads", num_threads=0)
    await expect_error(api, 422, "page", route="getuserthreads", page="-1")
    await expect_error(api, 422, "query", route="searchthreads")
    await expect_error(api, 422, "topic", route="setthreadtopic", thread_id=tid)
    await expect_error(api, 404, "not found", route="setthreadtopic", thread_id="unknown", topic="x")
    assert body_json(await api("deletethread", method="POST", thread_id=tid)) == {"detail": "Thread deleted."}
    await expect_error(api, 404, "not found", route="getthread", thread_id=tid)
    await expect_error(api, 404, "not found", route="deletethread", thread_id=tid)
    assert body_json(await api("getuserthreads"))[1] == 1


async def test_editthread_forks_before_a_user_message(api):
    tid = (await stream(api, input="one"))[0]["content"]["thread_id"]
    await stream(api, input="two", thread_id=tid)
    answer = body_json(await api("editthread", user="bob", source_thread_id=tid, user_index=1))
    assert re.fullmatch(r"[A-Za-z0-9]{32}", answer["new_thread_id"])
    assert [v["variant"] for v in answer["history"]] == ["User", "Assistant"]
    assert answer["history"][0]["content"] == "one"
    forked = body_json(await api("getthread", user="bob", thread_id=answer["new_thread_id"]))
    assert forked == answer["history"]
    assert body_json(await api("getuserthreads", user="bob"))[1] == 1
    await expect_error(api, 422, "user_index", route="editthread", source_thread_id=tid, user_index=2)
    await expect_error(api, 422, "user_index", route="editthread", source_thread_id=tid)
    await expect_error(api, 404, "not found", route="editthread", source_thread_id="nope", user_index=0)


async def test_userfeedback(api):
    tid = (await stream(api, input="rate me"))[0]["content"]["thread_id"]
    ok = await api("userfeedback", method="POST", thread_id=tid, feedback_index=0, feedback="up")
    assert body_json(ok) == {"detail": "Feedback saved."}
    stored = body_json(await api("getthread", thread_id=tid))
    assert stored[1]["feedback"] == "up"
    removed = await api("userfeedback", thread_id=tid, feedback_index="0", feedback="remove")
    assert body_json(removed) == {"detail": "Feedback removed."}
    assert "feedback" not in body_json(await api("getthread", thread_id=tid))[1]
    await expect_error(
        api, 404, "Feedback not found.", route="userfeedback", thread_id=tid, feedback_index=0, feedback="remove"
    )
    await expect_error(
        api, 404, "Thread not found.", route="userfeedback", thread_id="nope", feedback_index=0, feedback="up"
    )
    await expect_error(api, 422, "feedback_index", route="userfeedback", thread_id=tid, feedback_index=5, feedback="up")
    await expect_error(
        api, 422, "feedback_index", route="userfeedback", thread_id=tid, feedback_index="x", feedback="up"
    )


async def test_store_thread_false_lives_in_memory_only(api):
    lines = await stream(api, input="secret", store_thread=False)
    tid = lines[0]["content"]["thread_id"]
    assert lines[-1]["variant"] == "StreamEnd"
    await expect_error(api, 404, "not found", route="getthread", thread_id=tid)
    assert body_json(await api("getuserthreads"))[1] == 0
    assert body_json(await api("searchthreads", query="secret"))[1] == 0


async def test_store_thread_false_keeps_history_in_memory(api, fake_llm):
    tid = (await stream(api, input="remember 42", store_thread="false"))[0]["content"]["thread_id"]
    fake_llm.clear()
    await stream(api, input="what number?", thread_id=tid, store_thread="0")
    messages = fake_llm.requests[0]["body"]["messages"]
    thread = messages[max(i for i, m in enumerate(messages) if m["role"] == "system") + 1 :]  # after the examples
    users = [m["content"] for m in thread if m["role"] == "user"]
    assert users == ["remember 42", "what number?"]


async def test_unknown_route_is_json_404(api):
    await expect_error(api, 404, "Unknown route", route="nosuchroute")
