"""Thread documents as the upstream backends wrote them into MongoDB's `threads` collection, and what reading them
must give.

Written from the upstream code, read for its shapes (nothing copied):
- the Rust backend (freva-org/freva-gpt-backend): `src/chatbot/types.rs` serialises `StreamVariant` with serde's
  adjacent tagging, so a two-field variant (`Code`, `CodeOutput`) stores its content as the list `[text, id]`,
  `ServerHint` holds a JSON-encoded string, `Image`, `CodeError`, `OpenAIError` and `StreamEnd` a plain string,
  `Image` no id; `stream_response.rs` stores a `Prompt` first in a new thread, then per turn a
  `ServerHint {"thread_id"}` and the `User`, and every turn ends with a `StreamEnd`;
  `src/chatbot/mongodb/mongodb_storage.rs` writes `{user_id, thread_id, date, topic, content}` with `date` a
  string from chrono's `to_rfc3339()` (nanoseconds, `+00:00`).
- the Python backend (freva-org/freva-gpt-backend-py): `src/services/storage/mongodb_storage.py` writes `date` as
  a BSON datetime (`datetime.now(timezone.utc)`) and rewrites the whole content on each save through
  `from_sv_to_json`, so a thread it continued holds the earlier turns in its own shapes. Its first version of
  `from_sv_to_json` wrote `Code` as `[json.dumps({"code": code}, ensure_ascii=False), id]`, `CodeOutput` as
  `[output, id]`, `ServerHint` as a JSON-encoded string and an `Image` read from a Rust thread with `"id": null`;
  the current one writes `Code` / `CodeOutput` / `Image` / `ToolCall` / `ToolOutput` as a string content with
  `id` (and `tool_name`), `ServerHint` as an object, and in both `CodeError` is the one-element list `[message]`.
  `stream_orchestrator.run_stream` stores a `ServerHint {"thread_id"}` before each `User` and a `StreamEnd`
  (`"Stream ended."`) after each turn; `tool_calls.parse_code_interpreter_result` gives images the id
  `<call id>_<n>` and stores JSON display data as an extra `CodeOutput` with the id `<call id>:json`;
  `api/chatbot/userfeedback.py` puts `feedback` on the variant itself.

`expected` is what `getthread?show_tools=true` answers (API.md's current shapes): no `Prompt`, `ServerHint` or
`StreamEnd` (control lines, never part of a stored thread of ours), `[text, id]` unpacked, `CodeError` a string
carrying the id of the call it follows, `Image` without id where it had none. `history` is what the LLM must
receive for the thread, as `chat_view` (tests/test_legacy_threads.py) shows a request's messages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from freva_gpt_ext.variants import FIGURE_NOTE

# A 1x1 PNG: the upstream kept images in line, base64 in the variant.
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="

# The Rust backend's starting prompt: a JSON-encoded list of chat messages (types.rs: `Prompt(String)`). The word
# "FrevaSystemPromptWord" is nowhere else: a search for it must find nothing.
RUST_PROMPT = json.dumps(
    [{"role": "system", "name": "Prompt", "content": "You are FrevaGPT. FrevaSystemPromptWord: answer briefly."}]
)

Shown = tuple[Any, ...]  # one message of `chat_view`


@dataclass(frozen=True)
class LegacyThread:
    name: str
    document: dict[str, Any]
    date: datetime  # the instant the document's `date` stands for
    expected: list[dict[str, Any]]
    history: list[Shown] = field(default_factory=list)

    @property
    def thread_id(self) -> str:
        return str(self.document["thread_id"])

    @property
    def user_id(self) -> str:
        return str(self.document["user_id"])

    def shown(self, show_tools: bool) -> list[dict[str, Any]]:
        return [v for v in self.expected if show_tools or v["variant"] not in ("ToolCall", "ToolOutput")]


def code(text: str) -> dict[str, str]:
    return {"code": text}


# -- the Rust backend: two turns, the second ended by an error ---------------------------------------------

RUST_ID = "RustThreadEra5Map000000000000001"
RUST_CODE_1 = "import xarray as xr\nds = xr.open_dataset('era5_tas_2023.nc')\nds.tas.mean('time').plot()"
RUST_OUT_1 = "<matplotlib.collections.QuadMesh object at 0x7f3a>"
RUST_CODE_2 = 'zonal = ds.tas.mean(("time", "lon"))\nzonal.plot()'
RUST_ERROR = "The code could not be executed: the code interpreter did not answer."
RUST = LegacyThread(
    name="rust",
    document={
        "user_id": "alice",
        "thread_id": RUST_ID,
        "date": "2024-06-12T08:15:42.913572411+00:00",
        "topic": "Annual mean temperature map",
        "content": [
            {"variant": "Prompt", "content": RUST_PROMPT},
            {"variant": "ServerHint", "content": f'{{"thread_id": "{RUST_ID}"}}'},
            {"variant": "User", "content": "Make an annual mean temperature map for 2023"},
            {"variant": "Assistant", "content": "Let me load the ERA5 data and plot it."},
            # serde's compact JSON of the arguments, as in the Rust examples.jsonl
            {"variant": "Code", "content": [json.dumps(code(RUST_CODE_1), separators=(",", ":")), "call_r1"]},
            {"variant": "CodeOutput", "content": [RUST_OUT_1, "call_r1"]},
            {"variant": "Image", "content": PNG},
            {"variant": "Assistant", "content": "The map above shows the annual mean temperature."},
            {"variant": "StreamEnd", "content": "Generation complete"},
            {"variant": "ServerHint", "content": f'{{"thread_id": "{RUST_ID}"}}'},
            {"variant": "User", "content": "Now the Zonal Mean, please"},
            # the arguments as the LLM sent them, pretty-printed (types.rs's own test thread has this form)
            {"variant": "Code", "content": [json.dumps(code(RUST_CODE_2), indent=4), "call_r2"]},
            {"variant": "CodeOutput", "content": ["", "call_r2"]},
            {"variant": "CodeError", "content": RUST_ERROR},
            {"variant": "OpenAIError", "content": "Rate limit reached for requests"},
            {"variant": "StreamEnd", "content": "Generation complete"},
        ],
    },
    date=datetime(2024, 6, 12, 8, 15, 42, 913572, tzinfo=UTC),
    expected=[
        {"variant": "User", "content": "Make an annual mean temperature map for 2023"},
        {"variant": "Assistant", "content": "Let me load the ERA5 data and plot it."},
        {"variant": "Code", "content": json.dumps(code(RUST_CODE_1), separators=(",", ":")), "id": "call_r1"},
        {"variant": "CodeOutput", "content": RUST_OUT_1, "id": "call_r1"},
        {"variant": "Image", "content": PNG},
        {"variant": "Assistant", "content": "The map above shows the annual mean temperature."},
        {"variant": "User", "content": "Now the Zonal Mean, please"},
        {"variant": "Code", "content": json.dumps(code(RUST_CODE_2), indent=4), "id": "call_r2"},
        {"variant": "CodeOutput", "content": "", "id": "call_r2"},
        {"variant": "CodeError", "content": RUST_ERROR, "id": "call_r2"},
        {"variant": "OpenAIError", "content": "Rate limit reached for requests"},
    ],
    history=[
        ("user", "Make an annual mean temperature map for 2023"),
        ("assistant", "Let me load the ERA5 data and plot it.", (("call_r1", "code_interpreter", code(RUST_CODE_1)),)),
        ("tool", "call_r1", RUST_OUT_1),
        ("assistant", "The map above shows the annual mean temperature.", ()),
        ("user", "Now the Zonal Mean, please"),
        ("assistant", "", (("call_r2", "code_interpreter", code(RUST_CODE_2)),)),
        ("tool", "call_r2", RUST_ERROR),
    ],
)


# -- a Rust thread continued by the first Python backend, which rewrote it in its own shapes -----------------

PY1_ID = "PyOneThreadHamburgJuly0000000002"
PY1_CODE_1 = "t = ds.tas.sel(time='2023-07').mean()\nprint(f'{float(t) - 273.15:.1f} °C')"
PY1_CODE_2 = "import matplotlib.pyplot as plt\nds.tas.sel(time='2023-07').plot()\nplt.show()"
PY1_ERROR = "The kernel died while running the code."
PY1 = LegacyThread(
    name="python-first",
    document={
        "user_id": "alice",
        "thread_id": PY1_ID,
        "date": datetime(2025, 3, 4, 10, 20, 30, 123000, tzinfo=UTC),
        "topic": "Juli 2023 in Hamburg",
        "content": [
            {"variant": "Prompt", "content": RUST_PROMPT},
            {"variant": "ServerHint", "content": json.dumps({"thread_id": PY1_ID}, ensure_ascii=False)},
            {"variant": "User", "content": "Wie warm war der Juli 2023 in Hamburg?"},
            {
                "variant": "Code",
                "content": [json.dumps(code(PY1_CODE_1), ensure_ascii=False), "call_p1"],
            },
            {"variant": "CodeOutput", "content": ["19.4 °C\n", "call_p1"]},
            # an image of the Rust era: read without id, written back with "id": null
            {"variant": "Image", "content": PNG, "id": None},
            {"variant": "Assistant", "content": "Im Juli 2023 waren es im Mittel 19,4 °C."},
            {"variant": "StreamEnd", "content": "Generation complete"},
            {"variant": "ServerHint", "content": json.dumps({"thread_id": PY1_ID}, ensure_ascii=False)},
            {"variant": "User", "content": "Zeig es als Karte"},
            {"variant": "Code", "content": [json.dumps(code(PY1_CODE_2), ensure_ascii=False), "call_p2"]},
            {"variant": "CodeOutput", "content": ["", "call_p2"]},
            {"variant": "Image", "content": PNG, "id": "call_p2_0"},
            {"variant": "CodeError", "content": [PY1_ERROR]},
            {"variant": "StreamEnd", "content": "Stream ended."},
        ],
    },
    date=datetime(2025, 3, 4, 10, 20, 30, 123000, tzinfo=UTC),
    expected=[
        {"variant": "User", "content": "Wie warm war der Juli 2023 in Hamburg?"},
        {"variant": "Code", "content": json.dumps(code(PY1_CODE_1), ensure_ascii=False), "id": "call_p1"},
        {"variant": "CodeOutput", "content": "19.4 °C\n", "id": "call_p1"},
        {"variant": "Image", "content": PNG},
        {"variant": "Assistant", "content": "Im Juli 2023 waren es im Mittel 19,4 °C."},
        {"variant": "User", "content": "Zeig es als Karte"},
        {"variant": "Code", "content": json.dumps(code(PY1_CODE_2), ensure_ascii=False), "id": "call_p2"},
        {"variant": "CodeOutput", "content": "", "id": "call_p2"},
        {"variant": "Image", "content": PNG, "id": "call_p2_0"},
        {"variant": "CodeError", "content": PY1_ERROR, "id": "call_p2"},
    ],
    history=[
        ("user", "Wie warm war der Juli 2023 in Hamburg?"),
        ("assistant", "", (("call_p1", "code_interpreter", code(PY1_CODE_1)),)),
        ("tool", "call_p1", "19.4 °C\n"),
        ("assistant", "Im Juli 2023 waren es im Mittel 19,4 °C.", ()),
        ("user", "Zeig es als Karte"),
        ("assistant", "", (("call_p2", "code_interpreter", code(PY1_CODE_2)),)),
        ("tool", "call_p2", f"{FIGURE_NOTE}\n{PY1_ERROR}"),
    ],
)


# -- the current Python backend: code with an image, a non-code tool, feedback ---------------------------

PY2_ID = "PyTwoThreadPlotAndSearch00000003"
PY2_CODE_1 = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()"
PY2_OUT_1 = "\n[<matplotlib.lines.Line2D object at 0x7f00>]"
PY2_TOOL_ARGS = json.dumps({"question": "How do I search the databrowser?"})
PY2_TOOL_OUT = "freva.databrowser(project=..., variable=...) lists the files of a search."
PY2_OUT_3 = "\nZeroDivisionError: division by zero"
PY2 = LegacyThread(
    name="python-current",
    document={
        "user_id": "alice",
        "thread_id": PY2_ID,
        "date": datetime(2025, 9, 20, 16, 45, 1, 500000, tzinfo=UTC),
        "topic": "Line plot and databrowser",
        "content": [
            {"variant": "ServerHint", "content": {"thread_id": PY2_ID}},
            {"variant": "User", "content": "Plot a line"},
            {"variant": "Assistant", "content": "Here is a simple line plot.", "feedback": "up"},
            # "call_1": the id a provider that numbers its calls gives; a new call must not reuse it
            {"variant": "Code", "content": json.dumps(code(PY2_CODE_1)), "id": "call_1"},
            {"variant": "CodeOutput", "content": PY2_OUT_1, "id": "call_1"},
            {"variant": "Image", "content": PNG, "id": "call_1_0"},
            {"variant": "Assistant", "content": "Done: a line through three points."},
            {"variant": "StreamEnd", "content": "Stream ended."},
            {"variant": "ServerHint", "content": {"thread_id": PY2_ID}},
            {"variant": "User", "content": "How do I find DATASETS?"},
            {
                "variant": "ToolCall",
                "content": PY2_TOOL_ARGS,
                "tool_name": "get_context_from_resources",
                "id": "call_2",
            },
            {
                "variant": "ToolOutput",
                "content": PY2_TOOL_OUT,
                "tool_name": "get_context_from_resources",
                "id": "call_2",
            },
            {"variant": "Assistant", "content": "Use the databrowser. Let me also try a division."},
            {"variant": "Code", "content": json.dumps(code("1/0")), "id": "call_3"},
            {"variant": "CodeOutput", "content": PY2_OUT_3, "id": "call_3"},
            {"variant": "Assistant", "content": "Dividing by zero fails, as expected."},
            {"variant": "StreamEnd", "content": "Stream ended."},
        ],
    },
    date=datetime(2025, 9, 20, 16, 45, 1, 500000, tzinfo=UTC),
    expected=[
        {"variant": "User", "content": "Plot a line"},
        {"variant": "Assistant", "content": "Here is a simple line plot.", "feedback": "up"},
        {"variant": "Code", "content": json.dumps(code(PY2_CODE_1)), "id": "call_1"},
        {"variant": "CodeOutput", "content": PY2_OUT_1, "id": "call_1"},
        {"variant": "Image", "content": PNG, "id": "call_1_0"},
        {"variant": "Assistant", "content": "Done: a line through three points."},
        {"variant": "User", "content": "How do I find DATASETS?"},
        {
            "variant": "ToolCall",
            "content": PY2_TOOL_ARGS,
            "id": "call_2",
            "tool_name": "get_context_from_resources",
        },
        {
            "variant": "ToolOutput",
            "content": PY2_TOOL_OUT,
            "id": "call_2",
            "tool_name": "get_context_from_resources",
        },
        {"variant": "Assistant", "content": "Use the databrowser. Let me also try a division."},
        {"variant": "Code", "content": json.dumps(code("1/0")), "id": "call_3"},
        {"variant": "CodeOutput", "content": PY2_OUT_3, "id": "call_3"},
        {"variant": "Assistant", "content": "Dividing by zero fails, as expected."},
    ],
    history=[
        ("user", "Plot a line"),
        ("assistant", "Here is a simple line plot.", (("call_1", "code_interpreter", code(PY2_CODE_1)),)),
        ("tool", "call_1", f"{PY2_OUT_1}\n{FIGURE_NOTE}"),
        ("assistant", "Done: a line through three points.", ()),
        ("user", "How do I find DATASETS?"),
        ("assistant", "", (("call_2", "get_context_from_resources", json.loads(PY2_TOOL_ARGS)),)),
        ("tool", "call_2", PY2_TOOL_OUT),
        (
            "assistant",
            "Use the databrowser. Let me also try a division.",
            (("call_3", "code_interpreter", code("1/0")),),
        ),
        ("tool", "call_3", PY2_OUT_3),
        ("assistant", "Dividing by zero fails, as expected.", ()),
    ],
)


# -- bob's thread, newer than all of alice's: listings are per owner -----------------------------------------

BOB = LegacyThread(
    name="bob",
    document={
        "user_id": "bob",
        "thread_id": "BobThreadNewestOfAll000000000004",
        "date": datetime(2025, 10, 1, 9, 0, 0, tzinfo=UTC),
        "topic": "Bob's precipitation question",
        "content": [
            {"variant": "ServerHint", "content": {"thread_id": "BobThreadNewestOfAll000000000004"}},
            {"variant": "User", "content": "Where does it rain most?"},
            {"variant": "Assistant", "content": "In the tropics."},
            {"variant": "StreamEnd", "content": "Stream ended."},
        ],
    },
    date=datetime(2025, 10, 1, 9, 0, 0, tzinfo=UTC),
    expected=[
        {"variant": "User", "content": "Where does it rain most?"},
        {"variant": "Assistant", "content": "In the tropics."},
    ],
    history=[("user", "Where does it rain most?"), ("assistant", "In the tropics.", ())],
)


# -- shapes the upstream's reader accepts that its writers rarely produce ---------------------------------

ODD_ID = "OddShapesThread00000000000000005"
ODD = LegacyThread(
    name="odd",
    document={
        # no `topic`: the upstream lists such a document with `d.get("topic", "")`
        "user_id": "alice",
        "thread_id": ODD_ID,
        "date": datetime(2024, 12, 24, 18, 0, 0, tzinfo=UTC),
        "content": [
            {"variant": "User", "content": "Odd shapes ahead"},
            # `from_json_to_sv` reads a string `Code` / `CodeOutput` with `obj.get("id")`: absent here
            {"variant": "Code", "content": json.dumps(code("x = 1")), "extra": "ignored"},
            {"variant": "CodeOutput", "content": ""},
            # `from_json_to_sv` accepts the arguments of a `[payload, id]` Code as an object
            {"variant": "Code", "content": [code("print({'a': 1})"), "call_o2"]},
            {"variant": "CodeOutput", "content": "{'a': 1}\n", "id": "call_o2"},
            # JSON display data: a second CodeOutput of the call, id `<call id>:json`
            {"variant": "CodeOutput", "content": '{"a": 1}', "id": "call_o2:json"},
            # `from_json_to_sv` maps a null content to ""
            {"variant": "Assistant", "content": None},
            {"variant": "ServerError", "content": "The LLM did not answer."},
            {"variant": "StreamEnd", "content": "Stream ended with an error."},
        ],
    },
    date=datetime(2024, 12, 24, 18, 0, 0, tzinfo=UTC),
    expected=[],  # checked property by property: which id an id-less call gets is the product's choice
)

ALICE_THREADS = (RUST, PY1, PY2, ODD)
ALL_THREADS = (*ALICE_THREADS, BOB)
