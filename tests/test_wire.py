"""Issue 11: a wire every client reads, whatever shape the provider's tool-call arguments come in.

The fake LLM shapes the arguments like real providers (tests/fake_llm.py: args_split, args_raw, args_pause) and
the built-in code_interpreter runs the code in a real kernel. Every stream the `api` fixture and LiveStream
receive is read by the web frontend's oracle and by climateclaw-client's real parser (tests/frontend.py); the
tests here check the canonical form of API.md on the wire and in what getthread returns.
"""

from __future__ import annotations

import json
import shlex
import time
from typing import Any

import pytest

from tests.conftest import body_json, parse_lines
from tests.test_turns import LiveStream

CODE_FIRST = '{"code":"'
CODE_LAST = '"}'
ENDED = "Stream ended."
DICT_LITERALS = 'd = {"a": "b"}\nprint(d["a"] + "}")'
ENDS_WITH_A_DICT = 'print(1)\nd = {"a": "b"}'


def directive(behaviour: str, **params: str) -> str:
    return f"[[fake:{behaviour} " + " ".join(f"{k}={shlex.quote(v)}" for k, v in params.items()) + "]]"


async def turn(api, behaviour: str, **params: str) -> list[dict[str, Any]]:
    response = await api("streamresponse", method="POST", input=f"x {directive(behaviour, **params)}")
    return parse_lines(response.body)


def runs(lines: list[dict[str, Any]], variant: str) -> list[list[str]]:
    """The fragments of each run of adjacent `variant` lines of one id."""
    out: list[list[str]] = []
    previous: tuple[str, Any] | None = None
    for x in lines:
        key = (x["variant"], x.get("id"))
        if x["variant"] == variant:
            if key == previous:
                out[-1].append(x["content"])
            else:
                out.append([x["content"]])
        previous = key
    return out


def merged(lines: list[dict[str, Any]], variant: str) -> list[str]:
    return ["".join(run) for run in runs(lines, variant)]


def canonical(code: str) -> str:
    return json.dumps({"code": code}, ensure_ascii=False, separators=(",", ":"))


def wire_codes(lines: list[dict[str, Any]]) -> list[str]:
    """The code of each Code run, after checking the wire rules climateclaw-client depends on."""
    for x in lines:
        content = x["content"]
        assert not (isinstance(content, str) and content.startswith("{") and content.endswith("}")), x
    codes = []
    for run in runs(lines, "Code"):
        assert run[0] == CODE_FIRST and run[-1] == CODE_LAST, run
        assert all(run), f"an empty Code fragment: {run}"
        assert not any(fragment.endswith('"}') for fragment in run[:-1]), run
        codes.append(json.loads("".join(run))["code"])
    return codes


async def stored_codes(api, lines: list[dict[str, Any]]) -> list[str]:
    """The code of each stored Code of the thread, after checking each is stored in the canonical form."""
    thread = body_json(await api("getthread", thread_id=lines[0]["content"]["thread_id"]))
    stored = [v["content"] for v in thread if v["variant"] == "Code"]
    codes = [json.loads(content)["code"] for content in stored]
    assert stored == [canonical(code) for code in codes]
    return codes


async def ran(api, lines: list[dict[str, Any]], codes: list[str], outputs: list[str]) -> None:
    """The turn ran exactly `codes`, printed `outputs` and ended well; wire and store agree."""
    assert wire_codes(lines) == codes
    assert await stored_codes(api, lines) == codes
    assert merged(lines, "CodeOutput") == outputs
    assert "ServerError" not in [x["variant"] for x in lines] and lines[-1]["content"] == ENDED


@pytest.mark.parametrize(
    ("params", "code", "output"),
    [
        ({"args_raw": '{"code": "print(6*7)"}'}, "print(6*7)", "42\n"),
        ({"args_raw": '{"code":"print(6*7)"}', "args_split": "1"}, "print(6*7)", "42\n"),
        ({"code": "print(6*7)", "args_split": "all"}, "print(6*7)", "42\n"),
        ({"code": "x = 6\nprint(x * 7)", "args_split": "1"}, "x = 6\nprint(x * 7)", "42\n"),
        *(
            ({"args_raw": '{"code": "print(\\"caf\\u00e9\\")"}', "args_split": n}, 'print("café")', "café\n")
            for n in ("1", "2", "3")
        ),
        ({"args_raw": '{"code": "print(\'café\')"}', "args_split": "1"}, "print('café')", "café\n"),
        *(({"code": DICT_LITERALS, "args_split": n}, DICT_LITERALS, "b}\n") for n in ("1", "5", "8", "all")),
        *(({"code": ENDS_WITH_A_DICT, "args_split": n}, ENDS_WITH_A_DICT, "1\n") for n in ("1", "8", "all")),
        ({"code": 'print("a\\tb\\\\")', "args_split": "1"}, 'print("a\\tb\\\\")', "a\tb\\\n"),
        ({"args_raw": '{"code": "print(1)", "timeout": 5}'}, "print(1)", "1\n"),
        ({"args_raw": '{"language": "python", "code": "print(1)"}', "args_split": "1"}, "print(1)", "1\n"),
    ],
    ids=[
        "spaces",
        "compact-every-character",
        "one-delta",
        "newline-every-character",
        "split-inside-u00e9-1",
        "split-inside-u00e9-2",
        "split-inside-u00e9-3",
        "raw-utf8",
        "dict-literals-1",
        "dict-literals-5",
        "dict-literals-8",
        "dict-literals-one-delta",
        "ends-with-a-dict-1",
        "ends-with-a-dict-8",
        "ends-with-a-dict-one-delta",
        "backslashes",
        "extra-keys",
        "code-not-first",
    ],
)
async def test_provider_argument_shapes(api, params, code, output):
    lines = await turn(api, "code", **params)
    await ran(api, lines, [code], [output])


@pytest.mark.parametrize("split", ["8", "1", "all"])
async def test_two_calls_in_one_answer(api, split):
    first, second = 'd = {"a": "b"}\nprint(d)', 'print("{}", end="")'
    lines = await turn(api, "two-tools", code=first, code2=second, args_split=split)
    await ran(api, lines, [first, second], ["{'a': 'b'}\n", "{}"])
    order = [(x["variant"], x.get("id")) for x in lines if x["variant"] in ("Code", "CodeOutput")]
    assert list(dict.fromkeys(order)) == [
        ("Code", "call_1"),
        ("CodeOutput", "call_1"),
        ("Code", "call_2"),
        ("CodeOutput", "call_2"),
    ]


@pytest.mark.parametrize("text", ["{'answer': 42}", "{}", '{"a": 1}'])
async def test_outputs_that_look_like_dicts(api, text):
    code = f"print({text!r}, end='')"
    lines = await turn(api, "code", code=code)
    await ran(api, lines, [code], [text])
    assert merged(lines, "Assistant") == ["The result was: " + text]


async def test_a_result_repr_that_looks_like_a_dict(api):
    lines = await turn(api, "code", code="{'answer': 42}")
    await ran(api, lines, ["{'answer': 42}"], ["{'answer': 42}"])


@pytest.mark.parametrize("chunk", ["0", "100"])
@pytest.mark.parametrize("text", ["{x}", "{}", "{{x}}", '{"a": 1}'])
async def test_assistant_text_that_looks_like_a_dict(api, text, chunk):
    lines = await turn(api, "text", text=text, chunk=chunk)
    assert wire_codes(lines) == []
    assert merged(lines, "Assistant") == [text]
    thread = body_json(await api("getthread", thread_id=lines[0]["content"]["thread_id"]))
    assert [v["content"] for v in thread if v["variant"] == "Assistant"] == [text]


@pytest.mark.parametrize("arguments", ['{"cmd": "print(1)"}', "{}", ""], ids=["other-key", "empty-object", "empty"])
async def test_arguments_without_code(api, arguments):
    lines = await turn(api, "code", args_raw=arguments)
    assert runs(lines, "Code") == [[CODE_FIRST, CODE_LAST]]
    assert merged(lines, "CodeOutput") == [""]
    assert merged(lines, "CodeError") == ["The call had no code."]
    assert await stored_codes(api, lines) == [""]
    thread = body_json(await api("getthread", thread_id=lines[0]["content"]["thread_id"]))
    assert [(v["variant"], v["content"]) for v in thread[1:4]] == [
        ("Code", '{"code":""}'),
        ("CodeOutput", ""),
        ("CodeError", "The call had no code."),
    ]


async def test_provider_cuts_the_arguments_off(api):
    lines = await turn(api, "code", args_raw='{"code": "print(1)', args_split="3")
    assert wire_codes(lines) == await stored_codes(api, lines) == ["print(1)"]
    assert lines[-1]["variant"] == "StreamEnd"


async def test_stop_cuts_a_code_call_short(jp_fetch, api):
    code = "print(" + '"é" + ' * 40 + '"x")'
    live = LiveStream(jp_fetch, input=directive("code", code=code, args_split="4", delay="0.1"))
    await live.wait_for(lambda lines: len([x for x in lines if x["variant"] == "Code"]) >= 4)
    await api("stop", thread_id=live.thread_id)
    lines = await live.finish()
    [partial] = wire_codes(lines)
    assert code.startswith(partial) and partial != code
    assert await stored_codes(api, lines) == [partial]
    assert merged(lines, "CodeOutput") == [""]
    assert merged(lines, "CodeError") == ["Stopped by user."]
    assert lines[-1] == {"variant": "StreamEnd", "content": "Stream is stopped by user."}


@pytest.mark.parametrize("at", ["0", "5"], ids=["before-the-code", "inside-the-code"])
async def test_pause_in_code_generation_longer_than_the_heartbeat(api, at):
    # The test configuration's heartbeat interval is 0.2 s.
    code = 'print("paused" * 2)'
    started = time.monotonic()
    lines = await turn(api, "code", code=code, args_split="4", args_pause="1.0", args_pause_at=at)
    assert time.monotonic() - started >= 1.0
    await ran(api, lines, [code], ["pausedpaused\n"])


async def test_text_inside_a_code_call_waits_for_its_end(api):
    """A provider that mixes text into the arguments: the Code run stays one run, its output follows it, the text
    comes after (in the store too, so the history sent to the LLM keeps each call next to its result)."""
    code = 'print("one run")'
    lines = await turn(api, "code", code=code, args_split="3", args_text="Let me run this.")
    await ran(api, lines, [code], ["one run\n"])
    order = [x["variant"] for x in lines if x["variant"] in ("Code", "Assistant", "CodeOutput")]
    assert list(dict.fromkeys(order)) == ["Code", "CodeOutput", "Assistant"]
    assert merged(lines, "Assistant") == ["Let me run this.", "The result was: one run\n"]
