"""`exportthread` (issue 14): a thread as a notebook that nbformat accepts and nbclient runs, written through the
contents manager or downloaded, under the read rule of `getthread`."""

from __future__ import annotations

import copy
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import nbformat
import pytest
from nbclient import NotebookClient

from freva_gpt_ext.core.notebook_export import NOTEBOOK_MIME, ExportedThread, build_notebook
from freva_gpt_ext.variants import Variant
from tests.conftest import body_json, serving
from tests.fake_auth import FakeAuth
from tests.test_kernel import AUTH, UserKernel, code_turn, thread_of
from tests.test_mcp import QUESTION, call, started

pytestmark = pytest.mark.timeout(180)
CONFIG_FILE = "/etc/freva/evaluation_system.conf"
PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [2, 4, 1])\nplt.show()"
FAILING = "print('before the error')\n1 / 0"
DISPOSITION = re.compile(r"^attachment; filename=\"(?P<ascii>[^\"]*)\"; filename\*=UTF-8''(?P<encoded>\S+)$")


@pytest.fixture
def freva_config() -> dict[str, Any]:
    return {
        "execution_timeout": 30.0,
        "kernel_idle_timeout": 0.0,
        "evaluation_system_config_file": CONFIG_FILE,
        # A loaded test machine must not miss the notebook kernel's summary (what records its variables).
        "kernel_context_timeout": 10.0,
    }


async def text_thread(api: Any, user: str = "alice", **params: Any) -> str:
    """A thread of one question and its text answer (no kernel)."""
    response = await api("streamresponse", user=user, method="POST", input="Say hi", chatbot="fake-text", **params)
    return json.loads(response.body.decode().splitlines()[0])["content"]["thread_id"]


def notebook_of(response: Any) -> nbformat.NotebookNode:
    assert response.code == 200, response.body
    assert response.headers["Content-Type"] == NOTEBOOK_MIME
    notebook = nbformat.reads(response.body.decode("utf-8"), as_version=4)
    nbformat.validate(notebook)
    return notebook


def code_cells(notebook: nbformat.NotebookNode) -> list[Any]:
    return [c for c in notebook.cells if c.cell_type == "code"]


def markdown(notebook: nbformat.NotebookNode) -> list[str]:
    return [c.source for c in notebook.cells if c.cell_type == "markdown"]


def stdout(cell: Any) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def assert_detail(response: Any, status: int, part: str) -> None:
    assert response.code == status, (response.code, response.body)
    assert part.lower() in body_json(response)["detail"].lower(), body_json(response)


# ---------------------------------------------------------------------------------------------------------------
# The notebook
# ---------------------------------------------------------------------------------------------------------------


async def test_a_thread_becomes_a_notebook_that_runs(api, jp_serverapp, jp_root_dir):
    await started(jp_serverapp)  # the built-in documentation search
    tid = thread_of(await code_turn(api, "greeting = 'hello'\nprint(greeting)"))
    await api("streamresponse", method="POST", input="Say hi", thread_id=tid)
    await code_turn(api, PLOT, thread_id=tid)
    await code_turn(api, FAILING, thread_id=tid)
    await api("streamresponse", method="POST", input=call("get_context_from_resources", **QUESTION), thread_id=tid)
    await code_turn(api, "print(greeting.upper())", thread_id=tid)
    stored = body_json(await api("getthread", thread_id=tid, show_tools=True))
    (listed,) = body_json(await api("getuserthreads"))[0]

    response = await api("exportthread", thread_id=tid)
    notebook = notebook_of(response)
    assert response.headers["Content-Disposition"].startswith("attachment; filename=")

    intro, *rest = markdown(notebook)
    assert intro.startswith(f"# {listed['topic']}\n") and "written by an AI assistant" in intro
    questions = [s for s in rest if s.startswith("**Question**")]
    assert len(questions) == sum(v["variant"] == "User" for v in stored) == 6
    assert "> Say hi" in questions[1]
    answers = [v["content"] for v in stored if v["variant"] == "Assistant"]
    assert [s for s in rest if s in answers] == answers
    (tool,) = [s for s in rest if s.startswith("<details>")]
    assert "get_context_from_resources" in tool and "resources/freva/" in tool and QUESTION["question"] in tool

    cells = code_cells(notebook)
    assert [c.source for c in cells] == [json.loads(v["content"])["code"] for v in stored if v["variant"] == "Code"]
    assert [c.execution_count for c in cells] == [1, 2, 3, 4]
    hello, plot, failing, upper = cells
    assert stdout(hello) == "hello\n" and stdout(upper) == "HELLO\n"
    (image,) = [v["content"] for v in stored if v["variant"] == "Image"]
    assert [o.data["image/png"] for o in plot.outputs if o.output_type == "display_data"] == [image]
    assert stdout(failing) == "before the error\n"
    (error,) = [o for o in failing.outputs if o.output_type == "error"]
    assert (error.ename, error.evalue) == ("ZeroDivisionError", "division by zero")
    assert [c.metadata.get("tags", []) for c in cells] == [[], [], ["raises-exception"], []]

    about = notebook.metadata["freva_gpt"]
    assert about["thread_id"] == tid and about["models"] == ["fake-text"] and about["freva_config"] == CONFIG_FILE
    assert about["date"] == listed["date"]
    assert notebook.metadata["kernelspec"]["name"] == "python3"

    # It runs from the first cell to the last (the failing one may fail), where the thread's kernel ran.
    executed = copy.deepcopy(notebook)
    folder = jp_root_dir / "freva-gpt" / tid
    client = NotebookClient(executed, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(folder)}})
    await client.async_execute()
    assert [stdout(c) for c in code_cells(executed)] == [stdout(c) for c in cells]
    ran_plot, ran_failing = code_cells(executed)[1:3]
    assert [o.output_type for o in ran_plot.outputs] == ["display_data"]
    assert [o.ename for o in ran_failing.outputs if o.output_type == "error"] == ["ZeroDivisionError"]

    # show_tools=false leaves the documentation search out, nothing else.
    without = notebook_of(await api("exportthread", thread_id=tid, show_tools=False))
    assert not [s for s in markdown(without) if "<details>" in s]
    assert [c.source for c in code_cells(without)] == [c.source for c in cells]


async def test_a_thread_in_the_notebook_kernel_asks_for_its_data(api, jp_fetch, jp_serverapp, jp_root_dir):
    kernel = await UserKernel.start(jp_fetch, jp_serverapp)
    try:
        await kernel.run("readings = [3, 1, 2]")
        cell = {"source": "readings = [3, 1, 2]", "outputs": "", "notebook_path": "analysis.ipynb"}
        lines = await code_turn(api, "print(sorted(readings))", kernel_id=kernel.kernel_id, cell_context=cell)
    finally:
        kernel.close()
    tid = thread_of(lines)
    notebook = notebook_of(await api("exportthread", thread_id=tid))
    intro, load, question = notebook.cells[:3]
    assert "`readings`" in intro.source
    assert (load.cell_type, load.source, load.outputs) == ("code", "# load your data here", [])
    assert "About this cell of `analysis.ipynb`:\n\n```python\nreadings = [3, 1, 2]\n```" in question.source
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    (answer,) = code_cells(notebook)[1:]
    assert stdout(answer) == "[1, 2, 3]\n"

    # Run after the researcher's own loading cell, it gives what the conversation got.
    load.source = "readings = [3, 1, 2]"
    client = NotebookClient(notebook, timeout=60, resources={"metadata": {"path": str(jp_root_dir)}})
    await client.async_execute()
    assert stdout(code_cells(notebook)[1]) == "[1, 2, 3]\n"


def test_failures_figures_of_tools_and_odd_content():
    """What a short thread rarely holds: a call that failed as a whole, code that did not compile, a tool's figure,
    arguments that are no JSON object, backticks in a cell the question was about."""
    syntax_error = "  Cell In[2], line 1\n    1 +\n       ^\nSyntaxError: invalid syntax\n"
    variants = [
        Variant("User", "why?", cell_context={"source": "x = ```", "notebook_path": "a `b`.ipynb"}),
        Variant("Code", '{"code":"import time\\ntime.sleep(999)"}', id="c1"),
        Variant("CodeOutput", "waiting\n", id="c1"),
        Variant("CodeError", "The code ran longer than 30 s and was interrupted.", id="c1"),
        Variant("Code", '{"code":"1 +"}', id="c2"),
        Variant("CodeOutput", syntax_error, id="c2"),
        Variant("Code", "print(1)", id="legacy_7"),
        Variant("CodeOutput", "1\n", id="legacy_7"),
        Variant("ToolCall", '{"region": "europe"}', id="t1", tool_name="plot"),
        Variant("ToolOutput", "a map", id="t1", tool_name="plot"),
        Variant("Image", "iVBORw0KGgo=", id="t1_0", tool_name="plot"),
        Variant("Assistant", "Done.", model="m"),
    ]
    thread = ExportedThread("t", "topic", "2026-01-01T00:00:00Z", {"name": "python3", "display_name": "Python 3"})
    notebook = build_notebook(variants, thread, show_tools=True)
    nbformat.validate(notebook)
    question = notebook.cells[1].source
    assert "About this cell of ``a `b`.ipynb``:\n\n````python\nx = ```\n````" in question
    timeout, syntax, legacy = code_cells(notebook)
    assert stdout(timeout) == "waiting\n" and timeout.metadata.tags == ["raises-exception"]
    assert [(o.ename, o.evalue) for o in timeout.outputs[1:]] == [("CodeError", variants[3].content)]
    assert [o.output_type for o in syntax.outputs] == ["error"] and syntax.metadata.tags == ["raises-exception"]
    assert (syntax.outputs[0].ename, syntax.outputs[0].evalue) == ("SyntaxError", "invalid syntax")
    assert (legacy.source, stdout(legacy), legacy.metadata) == ("print(1)", "1\n", {})
    tool = notebook.cells[-2]
    assert tool.attachments == {"image-0.png": {"image/png": "iVBORw0KGgo="}}
    assert "![image-0.png](attachment:image-0.png)" in tool.source and "a map" in tool.source
    # Without show_tools neither the call nor its figure.
    hidden = build_notebook(variants, thread, show_tools=False)
    assert [c.cell_type for c in hidden.cells] == ["markdown", "markdown", "code", "code", "code", "markdown"]
    assert not [c for c in hidden.cells if c.get("attachments")]


async def test_the_file_name_comes_from_the_topic(api):
    tid = await text_thread(api)
    topic = 'Say "hi"\nto Müller\'s ☃ data/set: 50% done'
    await api("setthreadtopic", thread_id=tid, topic=topic)
    response = await api("exportthread", thread_id=tid)
    match = DISPOSITION.match(response.headers["Content-Disposition"])
    assert match, response.headers["Content-Disposition"]
    assert match["ascii"] == "Say hi to Muller's data set 50% done.ipynb"
    assert unquote(match["encoded"], errors="strict") == "Say hi to Müller's ☃ data set 50% done.ipynb"
    assert match["encoded"].isascii() and "'" not in match["encoded"]
    assert notebook_of(response).cells[0].source.startswith('# Say "hi" to Müller\'s ☃ data/set: 50% done\n')

    await api("setthreadtopic", thread_id=tid, topic="Ä" * 300)
    match = DISPOSITION.match((await api("exportthread", thread_id=tid)).headers["Content-Disposition"])
    assert match and unquote(match["encoded"]) == "Ä" * 94 + ".ipynb"
    assert match["ascii"] == "A" * 94 + ".ipynb"


# ---------------------------------------------------------------------------------------------------------------
# Written through the contents manager
# ---------------------------------------------------------------------------------------------------------------


async def test_written_through_the_contents_manager(api, jp_fetch, jp_root_dir):
    tid = await text_thread(api)
    download = notebook_of(await api("exportthread", thread_id=tid))

    async def write(path: str, **params: Any) -> Any:
        return await api("exportthread", method="POST", raise_error=False, thread_id=tid, path=path, **params)

    assert_detail(await write("exports/chat.ipynb"), 404, "'exports' does not exist")
    await jp_fetch("api", "contents", "exports", method="PUT", body='{"type": "directory"}', headers=AUTH)
    response = await write("/exports/chat.ipynb")
    assert response.code == 200, response.body
    assert body_json(response) == {"path": "exports/chat.ipynb"}
    listing = body_json(await jp_fetch("api", "contents", "exports", headers=AUTH))
    assert [(f["name"], f["type"]) for f in listing["content"]] == [("chat.ipynb", "notebook")]
    written = body_json(await jp_fetch("api", "contents", "exports", "chat.ipynb", headers=AUTH))["content"]
    assert [c["source"] for c in written["cells"]] == [c.source for c in download.cells]
    assert written["metadata"]["freva_gpt"]["thread_id"] == tid

    assert_detail(await write("exports/chat.ipynb"), 409, "overwrite")
    await api("setthreadtopic", thread_id=tid, topic="Renamed")
    assert (await write("exports/chat.ipynb", overwrite=True)).code == 200
    assert nbformat.read(jp_root_dir / "exports" / "chat.ipynb", as_version=4).cells[0].source.startswith("# Renamed")
    assert_detail(await write("exports"), 422, ".ipynb")
    (jp_root_dir / "folder.ipynb").mkdir()
    assert_detail(await write("folder.ipynb", overwrite=True), 409, "is a folder")

    # Refused before anything is written.
    for path in ("exports/chat.txt", "exports/chat.ipynb/", "exports/.ipynb", "", "../outside.ipynb", "a/../b.ipynb"):
        assert_detail(await write(path), 422, "path")
    assert_detail(await api("exportthread", raise_error=False, thread_id=tid, path="x.ipynb"), 422, "only in a POST")
    assert not (jp_root_dir.parent / "outside.ipynb").exists()
    listing = body_json(await jp_fetch("api", "contents", "exports", headers=AUTH))
    assert [f["name"] for f in listing["content"]] == ["chat.ipynb"]


# ---------------------------------------------------------------------------------------------------------------
# Who may export
# ---------------------------------------------------------------------------------------------------------------


async def test_shared_thread_ids_are_readable(api):
    tid = await text_thread(api)
    assert notebook_of(await api("exportthread", user="bob", thread_id=tid)).metadata["freva_gpt"]["thread_id"] == tid
    assert_detail(await api("exportthread", raise_error=False, thread_id="nosuchthread"), 404, "Thread not found")
    memory_only = await text_thread(api, store_thread=False)
    assert_detail(await api("exportthread", raise_error=False, thread_id=memory_only), 404, "Thread not found")


@pytest.mark.parametrize("freva_config", [{"thread_sharing": False}])
async def test_without_sharing_another_users_thread_is_not_there(api):
    tid = await text_thread(api)
    for method in ("GET", "POST"):
        response = await api("exportthread", user="bob", method=method, raise_error=False, thread_id=tid)
        assert_detail(response, 404, "Thread not found")
    response = await api("exportthread", user="bob", method="POST", raise_error=False, thread_id=tid, path="b.ipynb")
    assert_detail(response, 404, "Thread not found")
    assert notebook_of(await api("exportthread", thread_id=tid)).metadata["freva_gpt"]["thread_id"] == tid


class TestReadOnlyUser:
    @pytest.fixture
    def jp_server_config(self, jp_server_config: dict[str, Any]) -> dict[str, Any]:
        config = copy.deepcopy(jp_server_config)
        config["ServerApp"]["authorizer_class"] = "tests.authorizers.ReadOnlyBobAuthorizer"
        return config

    async def test_downloads_but_writes_nothing(self, api, jp_root_dir):
        tid = await text_thread(api)
        assert notebook_of(await api("exportthread", user="bob", method="POST", thread_id=tid)).cells
        params = {"thread_id": tid, "path": "b.ipynb"}
        response = await api("exportthread", user="bob", method="POST", raise_error=False, **params)
        assert_detail(response, 403, "may not write")
        assert not (jp_root_dir / "b.ipynb").exists()


class TestNoContentsWrites:
    @pytest.fixture
    def jp_server_config(self, jp_server_config: dict[str, Any]) -> dict[str, Any]:
        config = copy.deepcopy(jp_server_config)
        config["ServerApp"]["authorizer_class"] = "tests.authorizers.NoContentsWritesAuthorizer"
        return config

    async def test_the_chatbot_writes_no_file_the_user_may_not_write(self, api, jp_root_dir):
        tid = await text_thread(api)
        assert notebook_of(await api("exportthread", thread_id=tid)).cells
        response = await api("exportthread", method="POST", raise_error=False, thread_id=tid, path="a.ipynb")
        assert_detail(response, 403, "may not write files")
        assert not (jp_root_dir / "a.ipynb").exists()


# ---------------------------------------------------------------------------------------------------------------
# Standalone: no files to write into
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def auth_server(jp_asyncio_loop) -> Iterator[FakeAuth]:
    yield from serving(jp_asyncio_loop, FakeAuth())


class TestStandalone:
    BEARER = {"Authorization": "Bearer good-token"}

    @pytest.fixture
    def jp_server_config(self, jp_server_config: dict[str, Any], auth_server: FakeAuth) -> dict[str, Any]:
        config = copy.deepcopy(jp_server_config)
        config["ServerApp"]["identity_provider_class"] = "freva_gpt_ext.auth.FrevaRestIdentityProvider"
        config["ServerApp"]["authorizer_class"] = "freva_gpt_ext.authorizer.ChatbotOnlyAuthorizer"
        config["FrevaGPT"]["rest_url"] = auth_server.url
        return config

    async def test_download_only(self, http_server_client, jp_base_url, jp_root_dir):
        async def fetch(route: str, **body: Any) -> Any:
            return await http_server_client.fetch(
                f"{jp_base_url}api/chatbot/{route}",
                method="POST",
                body=json.dumps(body),
                headers=self.BEARER,
                raise_error=False,
                request_timeout=20,
            )

        response = await fetch("streamresponse", input="Say hi", chatbot="fake-text")
        tid = json.loads(response.body.decode().splitlines()[0])["content"]["thread_id"]
        assert notebook_of(await fetch("exportthread", thread_id=tid)).metadata["freva_gpt"]["thread_id"] == tid
        assert_detail(await fetch("exportthread", thread_id=tid, path="b.ipynb"), 422, "not available on this server")
        assert not (jp_root_dir / "b.ipynb").exists()


class TestConfiguredKernelSpec:
    """A thread whose code ran in its own kernels names the spec those kernels have (`kernel_spec`)."""

    @pytest.fixture
    def freva_config(self, jp_data_dir: Path) -> dict[str, Any]:
        spec = jp_data_dir / "kernels" / "climate"
        spec.mkdir(parents=True)
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        spec.joinpath("kernel.json").write_text(
            json.dumps({"argv": argv, "display_name": "Climate (Python)", "language": "python"})
        )
        return {"kernel_spec": "climate"}

    async def test_the_kernelspec_is_the_threads_kernels(self, api):
        tid = await text_thread(api)
        kernelspec = notebook_of(await api("exportthread", thread_id=tid)).metadata["kernelspec"]
        assert kernelspec == {"name": "climate", "display_name": "Climate (Python)", "language": "python"}
