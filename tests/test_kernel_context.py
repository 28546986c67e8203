"""The notebook as context (issue 14): what the user's kernel holds, and the cell a question is about.

Real jupyter_server, real ipykernel kernels started through the REST API (as JupyterLab starts them), the fake LLM;
what the LLM was told is read from the fake LLM's log of requests.
"""

from __future__ import annotations

import asyncio
import json
import time
from queue import Empty
from typing import Any

import pytest

from freva_gpt_ext.tools.kernel_context import INTROSPECTION
from tests.conftest import body_json, parse_lines
from tests.fake_llm import FakeLLM
from tests.test_kernel import UserKernel, code_turn, outputs, thread_of, wait_until

pytestmark = pytest.mark.timeout(240)

SECRET = "sk-very-secret-0123456789"
SETUP = f"""
import numpy as np, pandas as pd, xarray as xr
arr = np.zeros((30, 40), dtype="float32")
df = pd.DataFrame({{"station": ["a", "b", "c"], "tas": [1.0, 2.0, 3.0]}})
ds = xr.Dataset(
    {{"tas": (("time", "lat"), np.zeros((12, 5)), {{"units": "K", "long_name": "Near-Surface Air Temperature",
                                                   "comment": "an attribute never sent"}})}},
    coords={{"time": pd.date_range("1990-01-01", periods=12, freq="MS"), "lat": np.linspace(-60, 60, 5)}},
)
api_key = "{SECRET}"
threshold = 273.15
_calls = []

class Trap:
    def __repr__(self):
        _calls.append("repr")
        raise RuntimeError("repr was called")

    def __len__(self):
        _calls.append("len")
        raise RuntimeError("len was called")

    def __getattr__(self, name):
        _calls.append(name)
        raise RuntimeError("an attribute was asked for")

trap = Trap()

def helper():
    pass
"""
VARIABLES = "THE NOTEBOOK'S VARIABLES"


@pytest.fixture
def freva_config() -> dict[str, Any]:
    # A budget no loaded test machine misses; the tests of the budget set their own.
    return {"execution_timeout": 30.0, "kernel_idle_timeout": 0.0, "kernel_context_timeout": 10.0}


def last_messages(fake_llm: FakeLLM) -> list[dict[str, Any]]:
    """The messages of the fake LLM's last request (the turns here have inputs too short to get a title)."""
    return fake_llm.requests[-1]["body"]["messages"]


def told_variables(fake_llm: FakeLLM) -> str | None:
    """The summary of the kernel's variables the last request told the LLM, if any."""
    told = [m["content"] for m in last_messages(fake_llm) if VARIABLES in str(m.get("content"))]
    assert len(told) <= 1
    if not told:
        return None
    message = next(m for m in last_messages(fake_llm) if m.get("content") == told[0])
    assert message["role"] == "system"
    # Right before the user's message.
    assert last_messages(fake_llm).index(message) == len(last_messages(fake_llm)) - 2
    return told[0].split(":\n", 1)[1]


def stored_user(stored: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [v for v in stored if v["variant"] == "User"]


async def iopub_types(kernel: UserKernel) -> list[str]:
    """The types of the IOPub messages a client of the kernel (JupyterLab's, say) received since the last call."""
    found = []
    while True:
        try:
            msg = await kernel.client.get_iopub_msg(timeout=0.5)
        except Empty:
            return found
        found.append(msg["msg_type"])


async def test_the_llm_sees_the_kernels_variables_never_their_values(api, jp_fetch, jp_serverapp, fake_llm):
    user = await UserKernel.start(jp_fetch, jp_serverapp)
    try:
        reply, _ = await user.run(SETUP)
        assert reply["content"]["status"] == "ok", reply
        count = reply["content"]["execution_count"]
        await iopub_types(user)
        response = await api("streamresponse", method="POST", input="describe ds", kernel_id=user.kernel_id)
        lines = parse_lines(response.body)
        assert [x["variant"] for x in lines if x["variant"] in ("ServerError", "CodeError")] == []
        assert lines[-1] == {"variant": "StreamEnd", "content": "Stream ended."}
        summary = told_variables(fake_llm)
        assert summary is not None
        for expected in (
            "arr: numpy.ndarray shape (30, 40) dtype float32",
            "df: pandas.DataFrame 3 rows; columns: station ",
            "tas float64",
            "ds: xarray.Dataset dims {time: 12, lat: 5}",
            "coordinate time (time): 1990-01-01T00:00:00 .. 1990-12-01T00:00:00",
            "coordinate lat (lat): -60.0 .. 60.0",
            "variable tas (time, lat) float64 [units: K; long_name: Near-Surface Air Temperature]",
            "threshold: float = 273.15",
            "api_key: str",
            "trap: __main__.Trap",
        ):
            assert expected in summary, (expected, summary)
        # Biggest first: the array (4800 bytes) before the dataset, the frame, the numbers.
        names = [line.split(":")[0] for line in summary.splitlines() if not line.startswith(" ")]
        assert names[:2] == ["arr", "ds"] and names.index("threshold") < names.index("api_key")
        # Never a value but numbers, nor modules, functions, classes, private names or other attributes.
        request = json.dumps(fake_llm.requests[-1]["body"])
        assert SECRET not in request
        for absent in ("an attribute never sent", "helper", "Trap:", "np:", "_calls", "In:", "Out:"):
            assert absent not in summary, absent
        # Silently: nothing of the trap ran, the notebook saw no output, and its counter is where it was.
        seen = await iopub_types(user)
        assert seen and set(seen) <= {"status"}, seen
        reply, printed = await user.run("print(_calls)")
        assert printed == "[]\n"
        assert reply["content"]["execution_count"] == count + 1

        # Stored: the names sent and the kernel, never the summary.
        stored = body_json(await api("getthread", thread_id=thread_of(lines)))
        (question,) = stored_user(stored)
        assert question["kernel"]["kind"] == "notebook" and question["kernel"]["spec"] == "python3"
        assert set(question["kernel"]["variables"]) == {"arr", "df", "ds", "api_key", "threshold", "trap"}
        assert "numpy.ndarray" not in json.dumps(stored)

        # The panel's preview: the same summary, for the caller's own kernel only.
        preview = body_json(await api("kernelcontext", kernel_id=user.kernel_id))
        assert preview == {
            "kernel_id": user.kernel_id,
            "spec": "python3",
            "language": "python",
            "summary": summary,
            "variables": question["kernel"]["variables"],
            "state": "ok",
            "code": INTROSPECTION.strip(),  # what runs in the kernel, for the panel to show
        }
        for params in ({"user": "bob", "kernel_id": user.kernel_id}, {"kernel_id": "no-such-kernel"}):
            response = await api("kernelcontext", raise_error=False, **params)
            assert response.code == 404, response.body
            assert "no running kernel" in body_json(response)["detail"].lower()
        assert (await api("kernelcontext", raise_error=False)).code == 422

        # Switched off by the request: nothing told, no names recorded.
        response = await api(
            "streamresponse", method="POST", input="again", kernel_id=user.kernel_id, kernel_context=False
        )
        assert told_variables(fake_llm) is None
        stored = body_json(await api("getthread", thread_id=thread_of(parse_lines(response.body))))
        assert stored_user(stored)[0]["kernel"] == {"kind": "notebook", "spec": "python3", "variables": []}
        reply, _ = await user.run("1")
        assert reply["content"]["execution_count"] == count + 2
    finally:
        user.close()


class TestBudget:
    @pytest.fixture
    def freva_config(self) -> dict[str, Any]:
        return {"execution_timeout": 30.0, "kernel_idle_timeout": 0.0}  # the default budget, 0.3 s

    async def test_a_busy_kernel_gives_no_summary_and_is_not_waited_for(self, api, jp_fetch, jp_serverapp, fake_llm):
        user = await UserKernel.start(jp_fetch, jp_serverapp)
        try:
            await user.run("x = 1")
            running = asyncio.ensure_future(user.run("import time\ntime.sleep(15)"))
            kernel = jp_serverapp.kernel_manager.get_kernel(user.kernel_id)
            await wait_until(lambda: kernel.execution_state == "busy", what="the user's cell to run")
            started = time.monotonic()
            response = await api("streamresponse", method="POST", input="hello", kernel_id=user.kernel_id)
            preview = body_json(await api("kernelcontext", kernel_id=user.kernel_id))
            # Far less than the cell's 15 s: the turn never waited for the kernel.
            assert time.monotonic() - started < 5
            assert not running.done()
            assert told_variables(fake_llm) is None
            assert parse_lines(response.body)[-1] == {"variant": "StreamEnd", "content": "Stream ended."}
            assert (preview["state"], preview["summary"], preview["variables"]) == ("busy", "", [])
            user.client.shell_channel.send(user.client.session.msg("interrupt_request", {}))
            await asyncio.wait({running}, timeout=30)
        finally:
            user.close()


class TestSlowKernel:
    @pytest.fixture
    def freva_config(self) -> dict[str, Any]:
        return {"execution_timeout": 30.0, "kernel_idle_timeout": 0.0, "kernel_context_timeout": 0.001}

    async def test_an_answer_too_late_is_left_out_and_disturbs_nothing(self, api, jp_fetch, jp_serverapp, fake_llm):
        user = await UserKernel.start(jp_fetch, jp_serverapp)
        try:
            await user.run("x = 20")
            for _ in range(3):  # the first connects (in time for the turn's code), the later ones ask
                preview = body_json(await api("kernelcontext", kernel_id=user.kernel_id))
                # Too late, or the kernel still busy with the previous late question: no summary either way.
                assert preview["state"] in ("timeout", "busy") and preview["summary"] == "", preview
            lines = await code_turn(api, "print(x + 22)", kernel_id=user.kernel_id)
            assert told_variables(fake_llm) is None
            # The kernel's late answers never pass for the code's.
            assert outputs(lines) == ["42\n"]
            assert outputs(await code_turn(api, "print(x * 2)", kernel_id=user.kernel_id)) == ["40\n"]
        finally:
            user.close()


class TestSwitchedOff:
    @pytest.fixture
    def freva_config(self) -> dict[str, Any]:
        return {"execution_timeout": 30.0, "kernel_idle_timeout": 0.0, "kernel_context": False}

    async def test_the_setting_switches_it_off(self, api, jp_fetch, jp_serverapp, fake_llm):
        user = await UserKernel.start(jp_fetch, jp_serverapp)
        try:
            await user.run("x = 1")
            await api("streamresponse", method="POST", input="hello", kernel_id=user.kernel_id)
            assert told_variables(fake_llm) is None
            preview = body_json(await api("kernelcontext", kernel_id=user.kernel_id))
            assert (preview["state"], preview["summary"], preview["spec"]) == ("off", "", "python3")
        finally:
            user.close()


# -- the cell a question is about ------------------------------------------------------------------------------
CELL = {
    "source": "ds.tas.plot()\n# a ``` fence inside",
    "outputs": "KeyError: 'tas'",
    "notebook_path": "work/era5.ipynb",
}


async def test_the_cell_is_sent_stored_and_kept_in_the_history(api, fake_llm):
    response = await api("streamresponse", method="POST", input="why?", cell_context=CELL)
    thread_id = thread_of(parse_lines(response.body))
    sent = last_messages(fake_llm)[-1]["content"]
    # A fence longer than any run of backticks inside it.
    block = "````\nds.tas.plot()\n# a ``` fence inside\n````"
    output = "```\nKeyError: 'tas'\n```"
    assert sent == f"why?\n\nThe question is about this cell of work/era5.ipynb:\n{block}\n\nIts output:\n{output}"
    stored = body_json(await api("getthread", thread_id=thread_id))
    (question,) = stored_user(stored)
    assert question["cell_context"] == CELL
    assert "kernel" not in question  # no kernel named: the code would run in the thread's own
    # In a GET, as JSON text; later turns send the earlier question with its cell.
    await api("streamresponse", input="and?", thread_id=thread_id, cell_context=json.dumps({"source": "x = 1"}))
    users = [m["content"] for m in last_messages(fake_llm) if m["role"] == "user"]
    assert users[-2:] == [sent, "and?\n\nThe question is about this cell of the notebook:\n```\nx = 1\n```"]
    stored = body_json(await api("getthread", thread_id=thread_id))
    assert [q.get("cell_context") for q in stored_user(stored)] == [
        CELL,
        {"source": "x = 1", "outputs": "", "notebook_path": ""},
    ]


@pytest.mark.parametrize("freva_config", [{"max_input_chars": 100}])
async def test_the_cell_counts_towards_the_input_limit(api, fake_llm):
    cell = {"source": "x" * 60, "outputs": "y" * 30, "notebook_path": "n.ipynb"}
    response = await api("streamresponse", method="POST", raise_error=False, input="z" * 10, cell_context=cell)
    assert response.code == 413, response.body
    assert "cell context" in body_json(response)["detail"]
    assert fake_llm.requests == []
    response = await api("streamresponse", method="POST", input="z" * 3, cell_context=cell)
    assert parse_lines(response.body)[-1]["content"] == "Stream ended."


@pytest.mark.parametrize(
    ("cell_context", "problem"),
    [
        ([1], "must be an object"),
        ("{not json", "not valid JSON"),
        ('"text"', "must be an object"),
        ({"outputs": "only"}, "needs 'source'"),
        ({"source": 1}, "needs 'source'"),
        ({"source": "x", "outputs": ["a"]}, "'outputs' must be a string"),
        ({"source": "x", "notebook_path": None}, "'notebook_path' must be a string"),
        ({"source": "x", "extra": "y"}, "unknown keys ['extra']"),
        ('{"source": "\\ud800"}', "lone surrogate"),
    ],
)
async def test_a_malformed_cell_is_refused(api, fake_llm, cell_context, problem):
    for method in ("GET", "POST"):
        value = cell_context if method == "POST" or isinstance(cell_context, str) else json.dumps(cell_context)
        response = await api("streamresponse", method=method, raise_error=False, input="hi", cell_context=value)
        assert response.code == 422, (method, response.body)
        assert problem in body_json(response)["detail"], body_json(response)
    assert fake_llm.requests == []


async def test_the_description_lists_the_new_parameters(api):
    spec = body_json(await api("openapi.json"))
    stream = spec["paths"]["/api/chatbot/streamresponse"]["get"]["parameters"]
    by_name = {p["name"]: p for p in stream}
    assert by_name["kernel_context"]["schema"] == {"type": "boolean"}
    assert by_name["cell_context"]["content"] == {"application/json": {"schema": {"type": "object"}}}
    body = spec["paths"]["/api/chatbot/streamresponse"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["properties"]["cell_context"]["type"] == "object"
    kernel = spec["paths"]["/api/chatbot/kernelcontext"]["get"]["parameters"]
    assert [(p["name"], p["required"]) for p in kernel] == [("kernel_id", True)]


async def test_a_thread_kernel_named_by_its_id_is_recorded_as_one(api, jp_serverapp, fake_llm):
    await code_turn(api, "made = 6 * 7")
    (kernel_id,) = jp_serverapp.kernel_manager.list_kernel_ids()
    response = await api("streamresponse", method="POST", input="hello", kernel_id=kernel_id)
    assert "made: int = 42" in (told_variables(fake_llm) or "")
    stored = body_json(await api("getthread", thread_id=thread_of(parse_lines(response.body))))
    assert stored_user(stored)[0]["kernel"] == {"kind": "thread", "spec": "python3", "variables": ["made"]}
