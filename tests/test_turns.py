"""Streamed turns over time: incremental lines, stop (streaming and stalled), 409, keep-alive."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError

from tests.conftest import body_json
from tests.frontend import read_stream


class LiveStream:
    """A streamresponse read as it arrives, with the arrival time of every line."""

    def __init__(self, jp_fetch, user: str = "alice", **params: Any) -> None:
        self.lines: list[dict[str, Any]] = []
        self.times: list[float] = []
        self._body = b""  # as it came, for the oracles
        self._buffer = b""
        self.task = asyncio.ensure_future(
            jp_fetch(
                "api",
                "chatbot",
                "streamresponse",
                method="POST",
                body=json.dumps(params),
                headers={"Authorization": f"token {user}"},
                streaming_callback=self._chunk,
                request_timeout=60,
            )
        )

    def _chunk(self, data: bytes) -> None:
        self._body += data
        self._buffer += data
        *complete, self._buffer = self._buffer.split(b"\n")
        for line in complete:
            self.lines.append(json.loads(line))
            self.times.append(time.monotonic())

    async def wait_for(self, predicate, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.lines):
            assert time.monotonic() < deadline, f"timed out; lines so far: {self.lines}"
            assert not self.task.done() or predicate(self.lines), f"stream ended early: {self.lines}"
            await asyncio.sleep(0.01)

    @property
    def thread_id(self) -> str:
        return self.lines[0]["content"]["thread_id"]

    async def finish(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        await asyncio.wait_for(self.task, timeout)
        assert self._buffer == b"", "the stream ended in the middle of a line"
        read_stream(self._body)
        return self.lines


def texts(lines):
    return "".join(line["content"] for line in lines if line["variant"] == "Assistant")


async def test_lines_arrive_incrementally(jp_fetch):
    live = LiveStream(jp_fetch, input="[[fake:tokens=20 delay=0.05]]", chatbot="fake-slow")
    await live.wait_for(lambda lines: any(line["variant"] == "Assistant" for line in lines))
    first_text_at = time.monotonic()
    lines = await live.finish()
    assert lines[-1] == {"variant": "StreamEnd", "content": "Stream ended."}
    assert time.monotonic() - first_text_at > 0.5  # the rest came later, piece by piece
    assert texts(lines) == " ".join(f"tok{i}" for i in range(20))
    assert len([line for line in lines if line["variant"] == "Assistant"]) >= 10


async def test_stop_while_streaming_stores_partial_answer(jp_fetch, api):
    live = LiveStream(jp_fetch, input="[[fake:tokens=400 delay=0.05]]", chatbot="fake-slow")
    await live.wait_for(lambda lines: len([x for x in lines if x["variant"] == "Assistant"]) >= 3)
    asked = time.monotonic()
    assert body_json(await api("stop", method="POST", thread_id=live.thread_id)) == {"detail": "Conversation stopped."}
    lines = await live.finish()
    assert time.monotonic() - asked < 3.0
    assert lines[-1] == {"variant": "StreamEnd", "content": "Stream is stopped by user."}
    shown = texts(lines)
    assert shown.startswith("tok0 tok1")
    assert "tok399" not in shown
    stored = body_json(await api("getthread", thread_id=live.thread_id))
    assert [v["variant"] for v in stored] == ["User", "Assistant"]
    assert stored[1]["content"] == shown  # everything seen is stored, nothing more
    # The thread is free again.
    await api("streamresponse", input="again", thread_id=live.thread_id)


async def test_stop_while_llm_stalls(jp_fetch, api, fake_llm):
    live = LiveStream(jp_fetch, input="[[fake:stall=60]]", chatbot="fake-stall")
    await live.wait_for(lambda lines: any(x["variant"] == "Assistant" for x in lines))
    await asyncio.sleep(0.5)  # the LLM now sends nothing
    asked = time.monotonic()
    await api("stop", thread_id=live.thread_id)
    lines = await live.finish()
    assert time.monotonic() - asked < 3.0
    assert lines[-1]["content"] == "Stream is stopped by user."
    stored = body_json(await api("getthread", thread_id=live.thread_id))
    assert stored[-1]["content"] == texts(lines)


async def test_keepalive_during_stall_never_splits_a_run(jp_fetch):
    live = LiveStream(jp_fetch, input="[[fake:stall=1.2]]", chatbot="fake-stall")
    lines = await live.finish()
    gaps = [b - a for a, b in zip(live.times, live.times[1:], strict=False)]
    assert max(gaps) < 0.2 * 4  # heartbeat interval 0.2 s in tests, generous bound
    # During the stall the open Assistant run is kept alive by empty Assistant fragments only.
    first = next(i for i, x in enumerate(lines) if x["variant"] == "Assistant")
    last = max(i for i, x in enumerate(lines) if x["variant"] == "Assistant")
    assert all(x["variant"] == "Assistant" for x in lines[first : last + 1])
    assert sum(1 for x in lines[first:last] if x["content"] == "") >= 3


async def test_second_turn_on_streaming_thread_is_409(jp_fetch, api):
    live = LiveStream(jp_fetch, input="[[fake:tokens=200 delay=0.05]]", chatbot="fake-slow")
    await live.wait_for(lambda lines: len(lines) >= 2)
    with pytest.raises(HTTPClientError) as info:
        await api("streamresponse", input="other", thread_id=live.thread_id)
    assert info.value.code == 409
    assert info.value.response.reason == "Thread is busy"
    assert "already streaming" in body_json(info.value.response)["detail"]
    with pytest.raises(HTTPClientError) as info:
        await api("deletethread", thread_id=live.thread_id)
    assert info.value.code == 409
    await api("stop", thread_id=live.thread_id)
    await live.finish()


async def test_stop_unknown_or_idle_thread_is_404(api):
    with pytest.raises(HTTPClientError) as info:
        await api("stop", thread_id="neverexisted")
    assert info.value.code == 404
    tid = json.loads((await api("streamresponse", input="hi")).body.split(b"\n")[0])["content"]["thread_id"]
    with pytest.raises(HTTPClientError) as info:
        await api("stop", thread_id=tid)
    assert info.value.code == 404
    assert (
        "not being generated" in body_json(info.value.response)["detail"]
        or "No answer" in body_json(info.value.response)["detail"]
    )


async def test_dropped_client_turn_runs_to_completion(jp_fetch, api, jp_serverapp):
    live = LiveStream(jp_fetch, input="[[fake:tokens=30 delay=0.03]]", chatbot="fake-slow")
    await live.wait_for(lambda lines: len(lines) >= 2)
    tid = live.thread_id
    live.task.cancel()  # the client goes away
    deadline = time.monotonic() + 10
    while True:
        stored = body_json(await api("getthread", thread_id=tid))
        if stored[-1]["content"].endswith("tok29"):
            break
        assert time.monotonic() < deadline, stored
        await asyncio.sleep(0.1)
    assert stored[-1]["content"] == " ".join(f"tok{i}" for i in range(30))


@pytest.mark.parametrize("chatbot", ["fake-reset", "fake-malformed", "fake-429"])
async def test_llm_faults_end_with_server_error(api, chatbot):
    response = await api("streamresponse", input="x", chatbot=chatbot)
    lines = [json.loads(x) for x in response.body.decode().splitlines()]
    assert [x["variant"] for x in lines[-2:]] == ["ServerError", "StreamEnd"]
    tid = lines[0]["content"]["thread_id"]
    stored = body_json(await api("getthread", thread_id=tid))
    assert stored[-1]["variant"] == "ServerError"
    # the next turn on the same thread works
    again = await api("streamresponse", input="x", thread_id=tid)
    assert json.loads(again.body.decode().splitlines()[-1])["variant"] == "StreamEnd"


@pytest.mark.parametrize("freva_config", [{"llm_read_timeout": 0.5}])
async def test_llm_stall_beyond_timeout(api):
    started = time.monotonic()
    response = await api("streamresponse", input="[[fake:stall=30]]", chatbot="fake-stall")
    lines = [json.loads(x) for x in response.body.decode().splitlines()]
    assert time.monotonic() - started < 10
    assert lines[-2]["variant"] == "ServerError"
    assert "did not answer" in lines[-2]["content"]


def title_requests(fake_llm):
    return [r for r in fake_llm.requests if r["body"]["messages"][0]["content"].startswith("You name conversations")]


async def wait_for_topic(api, thread_id: str, expected: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        topics = {t["thread_id"]: t["topic"] for t in body_json(await api("getuserthreads"))[0]}
        if topics.get(thread_id) == expected:
            return
        assert time.monotonic() < deadline, topics
        await asyncio.sleep(0.05)


async def test_topic_model_titles_the_first_meaningful_message(api, fake_llm):
    first = await api("streamresponse", input="hi")
    tid = json.loads(first.body.split(b"\n")[0])["content"]["thread_id"]
    assert body_json(await api("getuserthreads"))[0][0]["topic"] == "hi"  # a greeting gets no title
    await api("streamresponse", input="Plot the ERA5 temperature", thread_id=tid)
    await wait_for_topic(api, tid, "Hello from the fake LLM. You said: Plot the ERA5 temperature")
    assert len(title_requests(fake_llm)) == 1
    assert title_requests(fake_llm)[0]["body"]["messages"][-1] == {
        "role": "user",
        "content": "Plot the ERA5 temperature",
    }
    # Once titled, never again.
    await api("streamresponse", input="And now the precipitation please", thread_id=tid)
    assert len(title_requests(fake_llm)) == 1


async def test_renamed_thread_keeps_its_name(api):
    tid = body_json(await api("newthread"))
    await api("streamresponse", input="[[fake:tokens=3]] hi", thread_id=tid)
    await api("setthreadtopic", thread_id=tid, topic="Mine")
    await api("streamresponse", input="a meaningful question about rain", thread_id=tid)
    await asyncio.sleep(0.5)
    assert body_json(await api("getuserthreads"))[0][0]["topic"] == "Mine"


@pytest.mark.parametrize("freva_config", [{"topic_model": "fake-text-litellm"}])
async def test_litellm_path_yields_the_same_variants(api):
    async def run(chatbot):
        response = await api("streamresponse", input="same words here", chatbot=chatbot, request_timeout=90)
        return [json.loads(x) for x in response.body.decode().splitlines()]

    lean = await run("fake-text")
    via_litellm = await run("fake-text-litellm")
    assert texts(lean) == texts(via_litellm) == "Hello from the fake LLM. You said: same words here"
    assert via_litellm[0]["content"]["model"] == "fake-text-litellm"
    assert via_litellm[-1] == {"variant": "StreamEnd", "content": "Stream ended."}
    # the topic model on the litellm path titles the thread too
    await wait_for_topic(
        api, via_litellm[0]["content"]["thread_id"], "Hello from the fake LLM. You said: same words here"
    )
    # an HTTP error on the litellm path is a ServerError with the status, then StreamEnd
    response = await api("streamresponse", input="[[fake:error status=503]]", chatbot="fake-text-litellm")
    lines = [json.loads(x) for x in response.body.decode().splitlines()]
    assert [x["variant"] for x in lines[-2:]] == ["ServerError", "StreamEnd"]
