"""The built-in code_interpreter end to end: the fake LLM asks for code, real ipykernel kernels run it.

Nothing of jupyter_client is mocked: per-thread kernels are started by the server's kernel manager, user
kernels through the REST API, and the tests inspect them with clients of their own.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from jupyter_client.asynchronous import AsyncKernelClient

from freva_gpt_ext.app import FrevaGPT
from freva_gpt_ext.paths import data_folder
from freva_gpt_ext.tools.base import ToolContext
from freva_gpt_ext.tools.kernel import KernelTool
from freva_gpt_ext.tools.kernel_output import OutputCollector, html_to_text
from freva_gpt_ext.tools.kernel_pool import CONFIG_ENV
from tests.conftest import body_json
from tests.fake_llm import FakeLLM, catalogue_yaml
from tests.mongo_server import MongoServer, unique_database
from tests.test_turns import LiveStream

pytestmark = pytest.mark.timeout(180)
AUTH = {"Authorization": "token alice"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def freva_config(request: pytest.FixtureRequest, tmp_path: Path, fake_llm: FakeLLM) -> dict[str, Any]:
    # Kernels live as long as the test unless a test asks for an idle shutdown.
    config: dict[str, Any] = {"execution_timeout": 30.0, "kernel_idle_timeout": 0.0}
    if getattr(request, "param", None) == "vision":
        # The test catalogue plus one model that sees images.
        catalogue = yaml.safe_load(catalogue_yaml(fake_llm.base_url))
        vision = {**catalogue["model_list"][0], "model_name": "fake-vision"}
        vision["model_info"] = {**vision["model_info"], "supports_vision": True}
        catalogue["model_list"].append(vision)
        path = tmp_path / "vision.yaml"
        path.write_text(yaml.safe_dump(catalogue))
        config["litellm_config"] = str(path)
    return config


def directive(code: str) -> str:
    """The fake LLM's directive that makes it call code_interpreter with `code` (quotes escaped for shlex)."""
    escaped = code.replace("\\", "\\\\").replace('"', '\\"')
    return f'[[fake:code code="{escaped}"]]'


async def code_turn(api: Callable[..., Any], code: str, **params: Any) -> list[dict[str, Any]]:
    response = await api("streamresponse", method="POST", input=directive(code), **params)
    return [json.loads(x) for x in response.body.decode().splitlines()]


def outputs(lines: list[dict[str, Any]]) -> list[str]:
    return [x["content"] for x in lines if x["variant"] == "CodeOutput"]


def errors(lines: list[dict[str, Any]]) -> list[str]:
    return [x["content"] for x in lines if x["variant"] == "CodeError"]


def statuses(lines: list[dict[str, Any]]) -> list[Any]:
    return [x["content"].get("status") for x in lines if x["variant"] == "ServerHint"]


def hints(lines: list[dict[str, Any]], key: str) -> list[Any]:
    return [x["content"][key] for x in lines if x["variant"] == "ServerHint" and key in x["content"]]


def messages_of(lines: list[dict[str, Any]]) -> list[str]:
    """Variant names without hints, adjacent fragments of one message merged (as the web frontend does)."""
    merged: list[str] = []
    for x in lines:
        if x["variant"] != "ServerHint" and (not merged or merged[-1] != x["variant"]):
            merged.append(x["variant"])
    return merged


def thread_of(lines: list[dict[str, Any]]) -> str:
    return lines[0]["content"]["thread_id"]


def kernel_tool(serverapp: Any) -> KernelTool:
    for apps in serverapp.extension_manager.extension_apps.values():
        for app in apps:
            if isinstance(app, FrevaGPT):
                tool = app.tool_registry["code_interpreter"]
                assert isinstance(tool, KernelTool)
                return tool
    raise AssertionError("the extension is not loaded")


async def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what or predicate}"
        await asyncio.sleep(0.05)


class UserKernel:
    """A kernel started like JupyterLab starts one (REST API), with a client of the test's own."""

    def __init__(self, serverapp: Any, kernel_id: str) -> None:
        self.kernel_id = kernel_id
        self.km = serverapp.kernel_manager
        self.client = AsyncKernelClient()
        self.client.load_connection_info(self.km.get_kernel(kernel_id).get_connection_info())
        # No heartbeat: on a loaded machine a missed beat reads as a dead kernel in wait_for_ready.
        self.client.start_channels(hb=False)

    @classmethod
    async def start(cls, jp_fetch: Any, serverapp: Any) -> UserKernel:
        response = await jp_fetch("api", "kernels", method="POST", body="{}", headers=AUTH)
        kernel = cls(serverapp, json.loads(response.body)["id"])
        await kernel.client.wait_for_ready(timeout=60)
        return kernel

    async def run(self, code: str, timeout: float = 30) -> tuple[dict[str, Any], str]:
        """Execute as the user does (history stored); (reply, what it printed)."""
        printed: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream":
                printed.append(msg["content"]["text"])
            elif msg["msg_type"] == "execute_result":
                printed.append(msg["content"]["data"]["text/plain"] + "\n")

        reply = await self.client.execute_interactive(code, timeout=timeout, output_hook=hook)
        return reply, "".join(printed)

    def close(self) -> None:
        self.client.stop_channels()


# -- per-thread kernels ---------------------------------------------------------------------------------------
async def test_thread_keeps_its_kernel_and_variables(api, jp_serverapp, jp_root_dir):
    km = jp_serverapp.kernel_manager
    lines = await code_turn(api, "x = 41")
    tid = thread_of(lines)
    assert outputs(lines) == [""] and errors(lines) == []
    assert lines[-1] == {"variant": "StreamEnd", "content": "Stream ended."}
    (kernel_id,) = km.list_kernel_ids()  # a kernel of the server, listed by JupyterLab
    lines = await code_turn(api, "print(x + 1)", thread_id=tid)
    assert outputs(lines) == ["42\n"]
    assert km.list_kernel_ids() == [kernel_id]
    text = "".join(x["content"] for x in lines if x["variant"] == "Assistant")
    assert text == "The result was: 42\n"
    # an expression's value is output too
    assert outputs(await code_turn(api, "x * 2", thread_id=tid)) == ["82"]
    # another thread has a kernel of its own
    other = await code_turn(api, "print('x' in dir())")
    assert outputs(other) == ["False\n"]
    assert len(km.list_kernel_ids()) == 2
    stored = body_json(await api("getthread", thread_id=tid))
    assert [v["variant"] for v in stored].count("CodeOutput") == 3


class TestBehindTheProxy:
    """`trust_proxy_headers`: the proxy's headers reach the kernels. Behind the proxy threads live in MongoDB (no
    embedded store there), here the configured one."""

    @pytest.fixture
    def freva_config(self, mongo_server: MongoServer) -> dict[str, Any]:
        return {
            "evaluation_system_config_file": "/etc/freva/evaluation_system.conf",
            "trust_proxy_headers": True,
            "mongodb_uri": mongo_server.uri,
            "mongodb_database_name": unique_database(),
        }

    async def test_thread_kernel_folder_and_environment(self, api, jp_fetch, jp_root_dir):
        code = f"import os\nprint(os.getcwd())\nprint(os.environ['THREAD_ID'])\nprint(os.environ[{CONFIG_ENV!r}])"
        lines = await code_turn(api, code)
        tid = thread_of(lines)
        cwd, thread_env, config = outputs(lines)[0].splitlines()
        assert cwd == str(jp_root_dir / "freva-gpt" / tid)  # visible in JupyterLab's file browser
        assert thread_env == tid and config == "/etc/freva/evaluation_system.conf"
        # a trusted proxy's header names another configuration file
        response = await jp_fetch(
            "api",
            "chatbot",
            "streamresponse",
            method="POST",
            body=json.dumps({"input": directive(code)}),
            headers={**AUTH, "X-Freva-Config-Path": "/other/freva.conf"},
        )
        lines = [json.loads(x) for x in response.body.decode().splitlines()]
        assert outputs(lines)[0].splitlines()[2] == "/other/freva.conf"
        # the kernels got it in their own environment; the server's is untouched
        assert "THREAD_ID" not in os.environ and "EVALUATION_SYSTEM_CONFIG_FILE" not in os.environ


async def test_matplotlib_plot_arrives_as_png(api):
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('three points')\nplt.show()"
    lines = await code_turn(api, code)
    call_id = next(x["id"] for x in lines if x["variant"] == "Code")
    kinds = [x["variant"] for x in lines if x["variant"] not in ("ServerHint", "Code")]
    assert kinds[0] == "CodeOutput" and kinds[1] == "Image"
    parts = [x for x in lines if x["variant"] == "Image"]
    assert {x["id"] for x in parts} == {f"{call_id}_0"}
    assert all(len(x["content"]) <= 16384 for x in parts)  # split on the wire
    png = base64.b64decode("".join(x["content"] for x in parts), validate=True)
    assert png.startswith(PNG_MAGIC) and png[12:16] == b"IHDR"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width > 100 and height > 100
    stored = body_json(await api("getthread", thread_id=thread_of(lines)))
    image = next(v for v in stored if v["variant"] == "Image")
    assert base64.b64decode(image["content"]) == png and image["id"] == f"{call_id}_0"
    # two figures: two images, separated on the wire
    code = "import matplotlib.pyplot as plt\nfor i in range(2):\n    plt.figure()\n    plt.plot([i, 1])\nplt.show()"
    lines = await code_turn(api, code)
    ids = [x["id"] for x in lines if x["variant"] == "Image"]
    assert sorted(set(ids)) == [f"{ids[0][:-2]}_0", f"{ids[0][:-2]}_1"]
    assert any(x["variant"] == "ServerHint" and "image" in x["content"] for x in lines)


@pytest.mark.parametrize("freva_config", ["vision"], indirect=True)
async def test_plots_reach_the_llm_only_when_it_has_vision(api, fake_llm):
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()"
    for model, sees in (("fake-vision", True), ("fake-text", False)):
        fake_llm.clear()
        lines = await code_turn(api, code, chatbot=model)
        image = "".join(x["content"] for x in lines if x["variant"] == "Image")
        assert image
        after_tool = [r["body"]["messages"] for r in fake_llm.requests if "tools" in r["body"]][-1]
        urls = [
            part["image_url"]["url"]
            for m in after_tool
            if isinstance(m.get("content"), list)
            for part in m["content"]
            if part.get("type") == "image_url"
        ]
        assert urls == ([f"data:image/png;base64,{image}"] if sees else []), model
        tool_text = next(m["content"] for m in reversed(after_tool) if m["role"] == "tool")
        assert tool_text == "[figure]"  # the LLM learns a figure was shown
        assert outputs(lines) == [""]  # the figure is the output: no placeholder text is stored or shown


async def test_exception_is_readable_output(api, fake_llm):
    lines = await code_turn(api, "print('before')\n1 / 0")
    (output,) = outputs(lines)
    assert output.startswith("before\n")
    assert "ZeroDivisionError" in output and "division by zero" in output and "1 / 0" in output
    assert "\x1b" not in output  # no terminal colours
    assert errors(lines) == []  # the code failed, not the tool: the LLM reads the traceback
    assert lines[-1]["content"] == "Stream ended."
    tool_message = [m for r in fake_llm.requests for m in r["body"].get("messages", []) if m.get("role") == "tool"]
    assert "ZeroDivisionError" in tool_message[-1]["content"]


async def test_rich_outputs_become_text(api):
    code = (
        "from IPython.display import HTML, JSON, Markdown, display\n"
        "display(HTML('<table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>2</td></tr></table>'))\n"
        "display(JSON({'k': [1, 2]}))\n"
        "display(Markdown('**bold**'))\n"
        "display({'application/x-custom': 'zzz'}, raw=True)\n"
        "import sys\n"
        "print('to stderr', file=sys.stderr)\n"
        "print('progress 10%', end='\\r')\n"
        "print('progress 100%')"
    )
    (output,) = outputs(await code_turn(api, code))
    assert "a | b\n1 | 2" in output
    assert '{"k": [1, 2]}' in output
    assert "**bold**" in output
    assert "[application/x-custom output]" in output
    assert "to stderr\n" in output
    assert "progress 100%" in output and "progress 10%" not in output  # as a terminal shows it


@pytest.mark.parametrize("freva_config", [{"execution_timeout": 1.5, "kernel_idle_timeout": 0.0}])
async def test_timeout_interrupts_and_the_turn_goes_on(api, jp_serverapp):
    lines = await code_turn(api, "y = 5\nprint('started', flush=True)\nimport time\ntime.sleep(30)")
    tid = thread_of(lines)
    (output,) = outputs(lines)
    assert output.startswith("started\n") and "KeyboardInterrupt" not in output
    (error,) = errors(lines)
    assert "1.5 s" in error and "interrupted" in error
    assert messages_of(lines)[-4:] == ["CodeOutput", "CodeError", "Assistant", "StreamEnd"]
    assert lines[-1]["content"] == "Stream ended."
    # the same kernel goes on, with its variables
    started = time.monotonic()
    assert outputs(await code_turn(api, "print(y)", thread_id=tid)) == ["5\n"]
    assert time.monotonic() - started < 10
    assert len(jp_serverapp.kernel_manager.list_kernel_ids()) == 1


async def test_stop_interrupts_running_code(jp_fetch, api, jp_serverapp, jp_root_dir):
    km = jp_serverapp.kernel_manager
    code = "y = 5\nopen('sleeping', 'w').close()\nimport time\ntime.sleep(60)"
    live = LiveStream(jp_fetch, input=directive(code))
    await live.wait_for(lambda lines: any(x["variant"] == "Code" for x in lines), timeout=30)
    marker = jp_root_dir / "freva-gpt" / live.thread_id / "sleeping"
    await wait_until(marker.exists, what="the code to run")
    (kernel_id,) = km.list_kernel_ids()
    asked = time.monotonic()
    await api("stop", thread_id=live.thread_id)
    lines = await live.finish(timeout=20)
    assert time.monotonic() - asked < 5
    assert lines[-1] == {"variant": "StreamEnd", "content": "Stream is stopped by user."}
    stored = body_json(await api("getthread", thread_id=live.thread_id))
    assert [v["variant"] for v in stored] == ["User", "Code", "CodeOutput", "CodeError"]
    # the kernel was interrupted, not killed: it answers at once and kept its variables
    started = time.monotonic()
    lines = await code_turn(api, "print(y)", thread_id=live.thread_id)
    assert outputs(lines) == ["5\n"] and errors(lines) == []
    assert time.monotonic() - started < 10
    assert km.list_kernel_ids() == [kernel_id]


async def test_kernel_death_fails_the_call_and_the_next_call_gets_a_fresh_kernel(api, jp_serverapp):
    km = jp_serverapp.kernel_manager
    tid = thread_of(await code_turn(api, "x = 41"))
    (first,) = km.list_kernel_ids()
    lines = await code_turn(api, "import os\nos._exit(1)", thread_id=tid)
    assert len(outputs(lines)) == 1
    (error,) = errors(lines)
    assert "died" in error
    assert lines[-1]["content"] == "Stream ended."  # the turn went on
    await wait_until(lambda: first not in km, what="the dead kernel to be shut down")
    # the fresh kernel replays the thread's code that succeeded (not the call that killed the kernel)
    lines = await code_turn(api, "print(x + 1)", thread_id=tid)
    assert outputs(lines) == ["42\n"]
    assert hints(lines, "replayed") == [1]
    assert first not in km.list_kernel_ids() and len(km.list_kernel_ids()) == 1


# -- the user's notebook kernel ---------------------------------------------------------------------------------
async def test_code_runs_in_the_users_kernel_and_leaves_their_history_alone(api, jp_fetch, jp_serverapp):
    km = jp_serverapp.kernel_manager
    user = await UserKernel.start(jp_fetch, jp_serverapp)
    try:
        reply, printed = await user.run("x = 41\nx")
        count = reply["content"]["execution_count"]
        assert printed == "41\n"
        lines = await code_turn(api, "print(x + 1)\nz = 'assistant'\nx * 2", kernel_id=user.kernel_id)
        assert outputs(lines) == ["42\n82"] and errors(lines) == []
        assert km.list_kernel_ids() == [user.kernel_id]  # no kernel of its own
        # the assistant's variables are the notebook's; its counter, Out and _ are untouched
        reply, printed = await user.run("print(z, Out, _)")
        assert reply["content"]["execution_count"] == count + 1
        assert printed == "assistant {1: 41} 41\n"
        # by notebook path, through the server's sessions
        session = await jp_fetch(
            "api",
            "sessions",
            method="POST",
            headers=AUTH,
            body=json.dumps({"path": "nb.ipynb", "type": "notebook", "kernel": {"id": user.kernel_id}}),
        )
        assert json.loads(session.body)["kernel"]["id"] == user.kernel_id
        lines = await code_turn(api, "print(z)", notebook_path="nb.ipynb")
        assert outputs(lines) == ["assistant\n"]
    finally:
        user.close()
    # an unknown kernel is refused before the stream starts
    response = await api("streamresponse", input=directive("1"), kernel_id="nope", raise_error=False)
    assert response.code == 404
    response = await api("streamresponse", input=directive("1"), notebook_path="none.ipynb", raise_error=False)
    assert response.code == 404


async def test_users_running_cell_is_not_interleaved(api, jp_fetch, jp_serverapp):
    user = await UserKernel.start(jp_fetch, jp_serverapp)
    try:
        cell = "import time\nfor i in range(15):\n    print('user', i, flush=True)\n    time.sleep(0.2)"
        running = asyncio.ensure_future(user.run(cell))
        kernel = jp_serverapp.kernel_manager.get_kernel(user.kernel_id)
        await wait_until(lambda: kernel.execution_state == "busy", what="the user's cell to run")
        lines = await code_turn(api, "print('assistant')", kernel_id=user.kernel_id)
        reply, printed = await running
        assert outputs(lines) == ["assistant\n"]  # none of the user's lines
        assert "waiting_for_kernel" in statuses(lines)
        assert statuses(lines).index("waiting_for_kernel") < len(statuses(lines)) - 1
        assert printed == "".join(f"user {i}\n" for i in range(15))  # none of ours
        assert reply["content"]["status"] == "ok"
    finally:
        user.close()


async def test_stop_while_waiting_for_the_users_cell_does_not_interrupt_it(jp_fetch, api, jp_serverapp):
    user = await UserKernel.start(jp_fetch, jp_serverapp)
    try:
        running = asyncio.ensure_future(user.run("import time\ntime.sleep(4)\nprint('user done')"))
        kernel = jp_serverapp.kernel_manager.get_kernel(user.kernel_id)
        await wait_until(lambda: kernel.execution_state == "busy", what="the user's cell to run")
        live = LiveStream(jp_fetch, input=directive("print('assistant')"), kernel_id=user.kernel_id)
        await live.wait_for(lambda lines: "waiting_for_kernel" in statuses(lines), timeout=20)
        await api("stop", thread_id=live.thread_id)
        lines = await live.finish(timeout=20)
        assert lines[-1]["content"] == "Stream is stopped by user."
        reply, printed = await running
        assert reply["content"]["status"] == "ok" and printed == "user done\n"
    finally:
        user.close()


async def test_stop_while_queued_behind_a_console_interrupts_ours_once_it_starts(
    jp_fetch, api, jp_serverapp, jp_root_dir
):
    km = jp_serverapp.kernel_manager
    tid = thread_of(await code_turn(api, "x = 1"))
    (kernel_id,) = km.list_kernel_ids()
    console = UserKernel(jp_serverapp, kernel_id)  # a console attached to the thread's kernel
    try:
        await console.client.wait_for_ready(timeout=60)
        running = asyncio.ensure_future(console.run("import time\ntime.sleep(3)\nprint('console done')"))
        await wait_until(lambda: km.get_kernel(kernel_id).execution_state == "busy", what="the console's cell")
        code = "import time\ntime.sleep(1)\nopen('ran', 'w').close()"
        live = LiveStream(jp_fetch, input=directive(code), thread_id=tid)
        await live.wait_for(lambda lines: "waiting_for_kernel" in statuses(lines), timeout=20)
        await api("stop", thread_id=live.thread_id)
        lines = await live.finish(timeout=10)
        assert lines[-1]["content"] == "Stream is stopped by user."
        reply, printed = await running
        assert reply["content"]["status"] == "ok" and printed == "console done\n"  # theirs was not interrupted
        # ours started after the console's cell and was interrupted before it could finish
        lines = await code_turn(api, "print(x)", thread_id=tid)
        assert outputs(lines) == ["1\n"]
        assert not (jp_root_dir / "freva-gpt" / tid / "ran").exists()
    finally:
        console.close()


# -- lifecycle ----------------------------------------------------------------------------------------------------
async def test_deleting_a_thread_shuts_its_kernel_down(api, jp_serverapp, jp_root_dir):
    km = jp_serverapp.kernel_manager
    lines = await code_turn(api, "open('result.txt', 'w').write('kept')")
    tid = thread_of(lines)
    (kernel_id,) = km.list_kernel_ids()
    await api("deletethread", thread_id=tid)
    assert kernel_id not in km
    assert (jp_root_dir / "freva-gpt" / tid / "result.txt").read_text() == "kept"  # the user's file stays


@pytest.mark.parametrize("freva_config", [{"execution_timeout": 30.0, "kernel_idle_timeout": 1.0}])
async def test_idle_kernel_is_shut_down_and_replayed(api, jp_serverapp):
    km = jp_serverapp.kernel_manager
    lines = await code_turn(api, "a = 1")
    tid = thread_of(lines)
    await code_turn(api, "print(undefined_name)", thread_id=tid)  # raised then: raises again, replay goes on
    code = "import os\nassert not os.path.exists('marker')\nopen('marker', 'w').close()"
    assert errors(await code_turn(api, code, thread_id=tid)) == []
    await code_turn(api, "b = 2", thread_id=tid)
    await wait_until(lambda: not km.list_kernel_ids(), what="the idle kernel to be shut down")
    lines = await code_turn(api, "print(a, 'b' in dir())", thread_id=tid)
    # the marker file exists now: call 3 fails in the replay, which stops there
    assert outputs(lines) == ["1 False\n"]
    (replayed,) = hints(lines, "replayed")
    (message,) = hints(lines, "replay_error")
    assert replayed == 2 and "call 3 of 4" in message and "AssertionError" in message


async def test_extension_stop_shuts_thread_kernels_down_but_not_user_kernels(api, jp_fetch, jp_serverapp):
    km = jp_serverapp.kernel_manager
    user = await UserKernel.start(jp_fetch, jp_serverapp)
    try:
        await code_turn(api, "x = 1", kernel_id=user.kernel_id)
        await code_turn(api, "x = 1")
        assert len(km.list_kernel_ids()) == 2
        await kernel_tool(jp_serverapp).aclose()
        assert km.list_kernel_ids() == [user.kernel_id]
        _, printed = await user.run("print(x)")
        assert printed == "1\n"
    finally:
        user.close()


@pytest.mark.parametrize("freva_config", [{"kernel_spec": "no-such-spec"}])
async def test_a_kernel_that_cannot_start_fails_the_call(api, jp_serverapp):
    lines = await code_turn(api, "print(1)")
    assert outputs(lines) == [""]
    assert errors(lines)[0].startswith("Could not start a kernel (no-such-spec): NoSuchKernel")
    assert lines[-1]["content"] == "Stream ended."
    assert not jp_serverapp.kernel_manager.list_kernel_ids()


@pytest.mark.parametrize("freva_config", [{"code_interpreter": False}])
async def test_code_interpreter_can_be_switched_off(api, fake_llm, jp_serverapp):
    lines = await code_turn(api, "print(1)")
    assert "Unknown tool 'code_interpreter'" in errors(lines)[0]
    assert not jp_serverapp.kernel_manager.list_kernel_ids()
    bodies = [r["body"] for r in fake_llm.requests if "messages" in r["body"]]
    assert all("tools" not in b for b in bodies)


async def test_few_shot_examples_are_sent_before_the_thread(api, fake_llm):
    await code_turn(api, "1")
    messages = next(r["body"]["messages"] for r in fake_llm.requests if "tools" in r["body"])
    assert messages[0]["role"] == "system"
    calls = [m for m in messages if m.get("tool_calls")]
    assert calls and all(c["tool_calls"][0]["function"]["name"] == "code_interpreter" for c in calls)
    results = [m for m in messages if m["role"] == "tool"]
    assert len(results) == len(calls)
    assert messages[-1]["role"] == "user"


async def test_few_shot_examples_are_genuine(jp_serverapp):
    """Each example conversation's code, run in a fresh kernel, prints what the example says it printed."""
    tool = kernel_tool(jp_serverapp)
    rows = [json.loads(line) for line in (data_folder("prompt_library") / "baseline" / "examples.jsonl").open()]
    conversation = 0
    for row in rows:
        if row["variant"] == "User":
            conversation += 1
        elif row["variant"] == "Code":
            ctx = ToolContext(thread_id=f"example{conversation}", owner="alice")
            arguments = json.loads(row["content"])
            assert list(arguments) == ["code"]
            produced = [v async for v in tool.run(row["id"], arguments, ctx)]
            expected = next(r["content"] for r in rows if r["variant"] == "CodeOutput" and r["id"] == row["id"])
            output = produced[0].content
            assert produced[0].variant == "CodeOutput" and not [v for v in produced if v.variant == "CodeError"]
            if "Traceback" in expected:  # the frames' layout may change with IPython; the error may not
                assert output.splitlines()[-1] == expected.splitlines()[-1] and output.startswith("---")
            else:
                assert output == expected, row["id"]


# -- output formatting, without a kernel -------------------------------------------------------------------------
def test_long_output_keeps_its_beginning_and_its_end():
    out = OutputCollector(limit=1000)
    out.add({"msg_type": "stream", "content": {"name": "stdout", "text": "first line\n"}})
    for i in range(5000):
        out.add({"msg_type": "stream", "content": {"name": "stdout", "text": f"line {i}\n"}})
    tb = ["\x1b[0;31m---------\x1b[0m", "\x1b[0;31mValueError\x1b[0m: bad value"]
    out.add({"msg_type": "error", "content": {"ename": "ValueError", "evalue": "bad value", "traceback": tb}})
    text = out.text()
    assert len(text) < 1100
    assert text.startswith("first line\n") and text.endswith("line 4999\n---------\nValueError: bad value")
    assert "characters of output left out" in text
    assert out.errors == ["ValueError"]


def test_output_order_and_odd_messages():
    out = OutputCollector(limit=10_000)
    out.add({"msg_type": "stream", "content": {"name": "stdout", "text": "a"}})
    out.add({"msg_type": "execute_result", "content": {"data": {"text/plain": "5"}}})
    out.add({"msg_type": "stream", "content": {"name": "stderr", "text": "warn\n"}})
    out.add({"msg_type": "display_data", "content": {"data": "not a dict"}})
    out.add({"msg_type": "display_data", "content": {"data": {"image/png": "iVBO\nRw==\n", "text/plain": "<Figure>"}}})
    out.add({"msg_type": "comm_msg", "content": {}})
    assert out.text() == "a\n5\nwarn\n"  # a figure's `<Figure ...>` text is no output
    out.add({"msg_type": "display_data", "content": {"data": {"image/png": "iVBORw==", "text/plain": "a caption"}}})
    assert out.text() == "a\n5\nwarn\na caption"
    assert out.images == ["iVBORw==", "iVBORw=="]
    out.add({"msg_type": "clear_output", "content": {"wait": False}})
    assert out.text() == "" and out.images == []
    reply = {"content": {"status": "ok", "payload": [{"source": "page", "data": {"text/plain": "Docstring"}}]}}
    out.add_reply(reply)
    assert out.text() == "Docstring"


def test_html_to_text():
    html = "<style>p {}</style><h1>Title</h1><table><tr><th>a</th><th>b</th></tr>"
    html += "<tr><td>1&nbsp;</td><td>2</td></tr></table>"
    assert html_to_text(html) == "Title\na | b\n1 | 2"
    assert html_to_text("<p>unclosed <b>bold") == "unclosed bold"
