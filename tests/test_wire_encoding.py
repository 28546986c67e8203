"""The stream encoder and the code-argument reader, without a server: every shape a provider may send."""

from __future__ import annotations

import json
import random

import pytest

from freva_gpt_ext.core.code_arguments import CodeArguments
from freva_gpt_ext.core.wire import CODE_HOLD_CHARS, IMAGE_LINE_CHARS, StreamEncoder
from freva_gpt_ext.variants import (
    ASSISTANT,
    CODE,
    CODE_OUTPUT,
    CODE_PREFIX,
    CODE_SUFFIX,
    IMAGE,
    STREAM_END,
    Variant,
    canonical_code,
    escape_code,
    hint,
)
from tests.climateclaw_oracle import render_in_climateclaw

CODES = [
    "print(6*7)",
    'd = {"a": "b"}\nprint(d["a"], "}")',
    "x = {}",
    "{}",
    '"}',
    "}}}",
    "s = 'caf\u00e9 \U0001f600'\nprint(s)",
    "print('tab\\there')\\",
    "a = 1\r\n\x01\u2028",
    "",
]


def argument_texts(code: str) -> list[str]:
    """What providers send for one call: compact, spaced, indented, ASCII-escaped, with other keys around."""
    return [
        json.dumps({"code": code}, separators=(",", ":")),
        json.dumps({"code": code}),
        json.dumps({"code": code}, ensure_ascii=False, indent=2),
        json.dumps({"timeout": 5, "opts": {"x": "}", "y": [1, "{"]}, "code": code, "after": "x"}),
    ]


def splits(text: str, size: int | None) -> list[str]:
    if size is None:
        return [text]
    return [text[i : i + size] for i in range(0, len(text), size)]


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("size", [1, 2, 3, 5, None])
def test_the_reader_hands_out_the_code_as_it_arrives(code, size):
    for text in argument_texts(code):
        reader = CodeArguments()
        got = ""
        for fragment in splits(text, size):
            got += reader.feed(fragment)
            assert code.startswith(got) or "\U0001f600" in code, (text, got)
        assert got == code == reader.code == reader.text


def test_the_reader_joins_a_surrogate_pair_split_between_fragments():
    escaped = (['{"code": "\\ud83d', '\\ude00"}'], ['{"code": "\\ud83d\\ud', "e00", '"}'])
    for parts in (*escaped, ['{"code": "\ud83d', '\ude00"}']):
        reader = CodeArguments()
        assert "".join(reader.feed(p) for p in parts) == "\U0001f600" == reader.code


@pytest.mark.parametrize(
    ("text", "partial"),
    [('{"text": "x"}', ""), ('{"code": 5}', ""), ("not json", ""), ('{"code": "print(1', "print(1"), ("", "")],
)
def test_arguments_without_a_whole_code_string_have_no_code(text, partial):
    reader = CodeArguments()
    reader.feed(text)
    assert reader.code is None and reader.text == partial


def stream(lines: list[bytes]) -> bytes:
    return b"".join(
        [
            *StreamEncoder().encode(hint(thread_id="t", model="m")),
            *lines,
            *StreamEncoder().encode(Variant(STREAM_END, "Stream ended.")),
        ]
    )


def contents(lines: list[bytes], variant: str) -> list[str]:
    return [obj["content"] for obj in map(json.loads, lines) if obj["variant"] == variant]


def code_run(code: str, size: int | None, rng: random.Random, keep_alives: float) -> list[bytes]:
    """A code call through the encoder: its escaped code in pieces of `size`, keep-alives in between."""
    encoder = StreamEncoder()
    lines = encoder.encode(Variant(CODE, CODE_PREFIX, id="call_1"))
    for piece in splits(escape_code(code), size):
        lines += encoder.encode(Variant(CODE, piece, id="call_1"))
        while rng.random() < keep_alives:
            lines += encoder.keep_alive("thinking")
    lines += encoder.encode(Variant(CODE, CODE_SUFFIX, id="call_1"))
    lines += encoder.keep_alive("executing")
    lines += encoder.encode(Variant(CODE_OUTPUT, "42\n", id="call_1"))
    return lines


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("size", [1, 2, 7, None])
def test_a_code_run_is_canonical_whatever_its_pieces(code, size):
    rng = random.Random(f"{code}{size}")
    for keep_alives in (0.0, 0.5, 0.9):
        lines = code_run(code, size, rng, keep_alives)
        fragments = contents(lines, CODE)
        assert fragments[0] == CODE_PREFIX and fragments[-1] == CODE_SUFFIX
        assert all(fragments), "an empty Code fragment crashes climateclaw-client"
        for fragment in fragments[1:-1]:
            assert not fragment.endswith('"}'), fragments
            assert not (fragment[0] == "{" and fragment[-1] == "}" and len(fragment) > 1), fragments
        assert "".join(fragments) == canonical_code(code)
        render_in_climateclaw(stream(lines))


def test_keep_alives_release_held_back_code_then_go_quiet():
    encoder = StreamEncoder()
    encoder.encode(Variant(CODE, CODE_PREFIX, id="c"))
    shown = contents(encoder.encode(Variant(CODE, "print('abcdefghij')", id="c")), CODE)
    held = "print('abcdefghij')"[len("".join(shown)) :]
    assert len(held) >= CODE_HOLD_CHARS
    released = [contents(encoder.keep_alive("thinking"), CODE) for _ in range(len(held) + 3)]
    assert ["".join(r) for r in released if r] == list(held)  # one character per pause
    assert released[-1] == []  # nothing left: no line at all rather than an empty fragment
    assert contents(encoder.encode(Variant(CODE, CODE_SUFFIX, id="c")), CODE) == [CODE_SUFFIX]
    assert contents(encoder.keep_alive("executing"), "ServerHint") == [{"status": "executing"}]


def test_an_open_assistant_run_is_kept_alive_with_empty_fragments():
    encoder = StreamEncoder()
    encoder.encode(Variant(ASSISTANT, "Hello"))
    assert contents(encoder.keep_alive("thinking"), ASSISTANT) == [""]
    assert encoder.run_open


@pytest.mark.parametrize(
    ("variant", "text", "parts"),
    [
        (ASSISTANT, "{x}", ["{", "x}"]),
        (CODE_OUTPUT, "{'answer': 42}", ["{", "'answer': 42}"]),
        (CODE_OUTPUT, "{}", ["{", "}"]),
        (CODE_OUTPUT, '{"a": 1}', ["{", '"a": 1}']),
        (CODE_OUTPUT, "{{a}}", ["{{", "a}}"]),
        (CODE_OUTPUT, "{a} b", ["{a} b"]),
    ],
)
def test_content_that_reads_as_an_object_spans_two_lines(variant, text, parts):
    lines = StreamEncoder().encode(Variant(variant, text, id=None if variant == ASSISTANT else "c"))
    assert contents(lines, variant) == parts
    rendered = render_in_climateclaw(stream(lines))
    if variant == CODE_OUTPUT:
        assert text in "".join(md for v, md in rendered)


def test_images_are_split_and_separated():
    encoder = StreamEncoder()
    big = "A" * (IMAGE_LINE_CHARS * 2 + 5)
    lines = encoder.encode(Variant(IMAGE, big, id="c_0")) + encoder.encode(Variant(IMAGE, "QUJD", id="c_1"))
    objects = [json.loads(x) for x in lines]
    assert [o["variant"] for o in objects] == [IMAGE, IMAGE, IMAGE, "ServerHint", IMAGE]
    assert "".join(o["content"] for o in objects[:3]) == big and objects[3]["content"] == {"image": 1}
