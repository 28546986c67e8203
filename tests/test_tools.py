"""The tool loop through the real server: variants and their order, what the LLM receives, stop, limits."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tests.conftest import body_json
from tests.test_turns import LiveStream
from tests.tools import SleepTool, SwallowTool

TOOLS = ["tests.tools:InProcessPython", "tests.tools:EchoTool", "tests.tools:SleepTool", "tests.tools:BrokenTool"]


@pytest.fixture
def freva_config():
    return {"tools": TOOLS}


async def turn(api, **params):
    response = await api("streamresponse", method="POST", **params)
    return [json.loads(x) for x in response.body.decode().splitlines()]


def kinds(lines):
    return [x["variant"] for x in lines]


def messages_of(lines):
    """Variant names with adjacent fragments of one message merged, as the web frontend does."""
    merged = []
    for x in lines:
        if not merged or merged[-1] != (x["variant"], x.get("id")):
            merged.append((x["variant"], x.get("id")))
    return [name for name, _ in merged]


def text_of(lines):
    return "".join(x["content"] for x in lines if x["variant"] == "Assistant")


def thread_part(messages):
    """The messages after the last system prompt: the thread, without the prompt set's few-shot examples."""
    last_system = max(i for i, m in enumerate(messages) if m["role"] == "system")
    return messages[last_system + 1 :]


def turn_requests(fake_llm):
    """The LLM calls of turns (not the topic titles)."""
    return [r for r in fake_llm.requests if "tools" in r["body"]]


async def test_code_round_trip(api, fake_llm):
    lines = await turn(api, input="compute", chatbot="fake-code")
    tid = lines[0]["content"]["thread_id"]
    codes = [x for x in lines if x["variant"] == "Code"]
    assert len(codes) >= 2  # streamed as fragments
    assert {x["id"] for x in codes} == {"call_1"}
    assert json.loads("".join(x["content"] for x in codes)) == {"code": "print(6*7)"}
    assert [m for m in messages_of(lines) if m != "ServerHint"] == ["Code", "CodeOutput", "Assistant", "StreamEnd"]
    output = next(x for x in lines if x["variant"] == "CodeOutput")
    assert output == {"variant": "CodeOutput", "content": "42\n", "id": "call_1"}
    # a status line between the two LLM calls
    between = lines[lines.index(output) + 1 : kinds(lines).index("Assistant")]
    assert [x["variant"] for x in between] == ["ServerHint"] * len(between) and between
    stored = body_json(await api("getthread", thread_id=tid))
    assert kinds(stored) == ["User", "Code", "CodeOutput", "Assistant"]
    assert json.loads(stored[1]["content"]) == {"code": "print(6*7)"}
    assert stored[3]["content"] == "The result was: 42\n"
    # round two received the history once, then the call and its result
    second = turn_requests(fake_llm)[-1]["body"]["messages"]
    assert [m["content"] for m in thread_part(second) if m["role"] == "user"] == ["compute"]
    assert second[-2]["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "code_interpreter", "arguments": stored[1]["content"]},
        }
    ]
    assert second[-1] == {"role": "tool", "tool_call_id": "call_1", "content": "42\n"}
    assert turn_requests(fake_llm)[-1]["body"]["tools"][0]["function"]["name"] == "code_interpreter"


async def test_repeated_provider_ids_become_unique(api, fake_llm):
    tid = (await turn(api, input="one", chatbot="fake-code"))[0]["content"]["thread_id"]
    lines = await turn(api, input="two", chatbot="fake-repeat-ids", thread_id=tid)
    ids = {x["id"] for x in lines if x["variant"] in ("Code", "CodeOutput")}
    assert ids == {"call_1_2"}
    stored = body_json(await api("getthread", thread_id=tid))
    assert [v.get("id") for v in stored if v["variant"] == "Code"] == ["call_1", "call_1_2"]
    # the name and id repeated in every chunk were taken once
    assert json.loads(stored[-3]["content"]) == {"code": "print(6*7)"}
    # the history sent in turn two pairs each call with its result
    messages = thread_part(turn_requests(fake_llm)[-1]["body"]["messages"])
    calls = [tc["id"] for m in messages for tc in m.get("tool_calls") or []]
    results = [m["tool_call_id"] for m in messages if m["role"] == "tool"]
    assert calls == results == ["call_1", "call_1_2"]


async def test_two_calls_in_one_answer(api):
    lines = await turn(api, input="x [[fake:two-tools code=\"print('a')\" code2=\"print('b')\"]]")
    visible = [(x["variant"], x.get("id")) for x in lines if x["variant"] not in ("ServerHint",)]
    order = []
    for item in visible:
        if not order or order[-1] != item:
            order.append(item)
    assert order == [
        ("Code", "call_1"),
        ("CodeOutput", "call_1"),
        ("Code", "call_2"),
        ("CodeOutput", "call_2"),
        ("Assistant", None),
        ("StreamEnd", None),
    ]
    assert [x["content"] for x in lines if x["variant"] == "CodeOutput"] == ["a\n", "b\n"]


async def test_tool_calls_hidden_unless_show_tools(api):
    hidden = await turn(api, input='x [[fake:tool tool=echo args=\'{"text": "hi"}\']]')
    assert "ToolCall" not in kinds(hidden) and "ToolOutput" not in kinds(hidden)
    assert text_of(hidden) == 'The result was: echo: {"text": "hi"}'
    shown = await turn(api, input='x [[fake:tool tool=echo args=\'{"text": "hi"}\']]', show_tools=True)
    calls = [x for x in shown if x["variant"] == "ToolCall"]
    # `{"text": "hi"}` alone on a line would read as an object to climateclaw-client: it spans two lines.
    assert [x["content"] for x in calls] == ["{", '"text": "hi"}']
    assert {(x["id"], x["tool_name"]) for x in calls} == {(calls[0]["id"], "echo")}
    output = next(x for x in shown if x["variant"] == "ToolOutput")
    expected = {"variant": "ToolOutput", "content": 'echo: {"text": "hi"}', "id": calls[0]["id"], "tool_name": "echo"}
    assert output == expected
    tid = hidden[0]["content"]["thread_id"]
    assert kinds(body_json(await api("getthread", thread_id=tid))) == ["User", "Assistant"]
    assert kinds(body_json(await api("getthread", thread_id=tid, show_tools=True))) == [
        "User",
        "ToolCall",
        "ToolOutput",
        "Assistant",
    ]
    # editthread answers the history before a user message as getthread does: tools only when asked.
    await turn(api, input="second", thread_id=tid)
    fork = body_json(await api("editthread", source_thread_id=tid, user_index=1))
    assert kinds(fork["history"]) == ["User", "Assistant"]
    fork = body_json(await api("editthread", source_thread_id=tid, user_index=1, show_tools=True))
    assert kinds(fork["history"]) == ["User", "ToolCall", "ToolOutput", "Assistant"]
    # The fork itself keeps the tools.
    assert kinds(body_json(await api("getthread", thread_id=fork["new_thread_id"], show_tools=True))) == kinds(
        fork["history"]
    )


async def test_broken_and_unknown_tools_fail_the_call_not_the_turn(api, fake_llm):
    lines = await turn(api, input="x [[fake:tool tool=broken]]", show_tools=True)
    output = next(x for x in lines if x["variant"] == "ToolOutput")
    assert "the disk is on fire" in output["content"]
    assert lines[-1]["content"] == "Stream ended."
    lines = await turn(api, input="x [[fake:tool tool=nosuchtool]]", show_tools=True)
    assert "Unknown tool 'nosuchtool'" in next(x for x in lines if x["variant"] == "ToolOutput")["content"]
    assert "Unknown tool" in turn_requests(fake_llm)[-1]["body"]["messages"][-1]["content"]


@pytest.mark.parametrize("freva_config", [{"tools": TOOLS, "max_tool_rounds": 2}])
async def test_round_limit(api, fake_llm):
    lines = await turn(api, input="x [[fake:code rounds=inf]]")
    assert kinds(lines)[-2:] == ["ServerError", "StreamEnd"]
    assert "2 times" in lines[-2]["content"]
    assert len(turn_requests(fake_llm)) == 3  # the first call and two tool rounds


async def test_stop_while_tool_runs(jp_fetch, api):
    live = LiveStream(jp_fetch, input="x [[fake:tool tool=sleep args='{\"seconds\": 60}']]", show_tools=True)
    await live.wait_for(lambda lines: any(x["variant"] == "ToolCall" for x in lines))
    await asyncio.sleep(0.3)
    asked = time.monotonic()
    await api("stop", thread_id=live.thread_id)
    lines = await live.finish()
    assert time.monotonic() - asked < 3
    assert lines[-1]["content"] == "Stream is stopped by user."
    call = next(x for x in lines if x["variant"] == "ToolCall")
    assert call["id"] in SleepTool.cancelled
    stored = body_json(await api("getthread", thread_id=live.thread_id, show_tools=True))
    assert kinds(stored) == ["User", "ToolCall", "ToolOutput"]
    assert stored[-1]["content"] == "Stopped by user."


@pytest.mark.parametrize("freva_config", [{"tools": ["tests.tools:SwallowTool"], "tool_stop_grace": 0.5}])
async def test_stop_ends_the_stream_when_a_tool_ignores_it(jp_fetch, api):
    live = LiveStream(jp_fetch, input="x [[fake:tool tool=swallow args='{}']]", show_tools=True)
    await live.wait_for(lambda lines: any(x["variant"] == "ToolCall" for x in lines))
    call_id = next(x for x in live.lines if x["variant"] == "ToolCall")["id"]
    await live.wait_for(lambda _: call_id in SwallowTool.started)
    asked = time.monotonic()
    await api("stop", thread_id=live.thread_id)
    lines = await live.finish()
    assert time.monotonic() - asked < 5
    assert call_id in SwallowTool.cancelled  # it was cancelled and did not stop
    assert kinds(lines)[-3:] == ["ToolOutput", "ServerError", "StreamEnd"]
    assert lines[-1]["content"] == "Stream is stopped by user."
    assert lines[-2]["content"] == "A tool did not stop within 0.5 s; the answer ends without it."
    stored = body_json(await api("getthread", thread_id=live.thread_id, show_tools=True))
    assert kinds(stored) == ["User", "ToolCall", "ToolOutput", "ServerError"]
    assert stored[2]["content"] == "Stopped by user."
    # The thread is free again.
    assert kinds(await turn(api, input="again", thread_id=live.thread_id))[-1] == "StreamEnd"


async def test_stop_cuts_a_code_call_short(jp_fetch, api):
    code = "print(" + "1 + " * 40 + "1)"
    live = LiveStream(jp_fetch, input=f'[[fake:code code="{code}" chunk=4 delay=0.1]]')
    await live.wait_for(lambda lines: len([x for x in lines if x["variant"] == "Code"]) >= 3)
    await api("stop", thread_id=live.thread_id)
    lines = await live.finish()
    fragments = [x["content"] for x in lines if x["variant"] == "Code"]
    arguments = json.loads("".join(fragments))  # the last fragment completes the JSON
    assert code.startswith(arguments["code"]) and arguments["code"] != code
    assert kinds(lines)[-3:] == ["CodeOutput", "CodeError", "StreamEnd"]
    stored = body_json(await api("getthread", thread_id=live.thread_id))
    assert kinds(stored) == ["User", "Code", "CodeOutput", "CodeError"]
    assert json.loads(stored[1]["content"]) == arguments
    assert stored[2]["content"] == "" and stored[3]["content"] == "Stopped by user."


async def test_litellm_path_runs_the_same_tool_loop(api):
    async def lines_of(chatbot):
        return await turn(api, input="compute", chatbot=chatbot, request_timeout=90)

    lean_lines = await lines_of("fake-code")
    litellm_lines = await lines_of("fake-code-litellm")
    assert messages_of(lean_lines) == messages_of(litellm_lines)
    assert text_of(lean_lines) == text_of(litellm_lines) == "The result was: 42\n"
    code = [
        json.loads("".join(x["content"] for x in lines if x["variant"] == "Code"))
        for lines in (lean_lines, litellm_lines)
    ]
    assert code[0] == code[1] == {"code": "print(6*7)"}
