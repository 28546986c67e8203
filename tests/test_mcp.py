"""The MCP client (freva_gpt_ext/tools/mcp.py) through the real server: discovery and names, calls and their
failures, stop, sessions, identity, the built-in retrieval, and the doctor's listing.

The MCP servers are real (tests/mcp_servers.py): over streamable HTTP in child processes started once per session,
over stdio as the extension starts them, and the built-in retrieval server in-process.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mcp
import pytest
import yaml
from traitlets import TraitError

from freva_gpt_ext.app import FrevaGPT
from freva_gpt_ext.tools.base import ToolContext
from freva_gpt_ext.tools.mcp import BUILTIN_NAME, DOWN, UP, McpConnection, McpTools, sanitise
from freva_gpt_ext.tools.mcp_config import McpConfigError, parse_mcp_servers
from tests.conftest import body_json, serving
from tests.fake_auth import FakeAuth
from tests.fake_llm import FakeLLM, catalogue_yaml
from tests.mcp_servers import PNG, McpServerProcess
from tests.server_process import REPO, clean_env
from tests.test_identity import _base_config
from tests.test_kernel import wait_until
from tests.test_science import freva_app
from tests.test_tools import kinds, messages_of, turn, turn_requests
from tests.test_turns import LiveStream

pytestmark = pytest.mark.timeout(120)
STDIO = {
    "name": "local",
    "command": sys.executable,
    "args": ["-m", "tests.mcp_servers", "kit", "--stdio"],
    "env": {"PYTHONPATH": str(REPO)},
}
PNG_B64 = base64.b64encode(PNG).decode()
QUESTION = {"question": "How do I find ERA5 data with freva?", "resources_to_retrieve_from": "freva"}


@pytest.fixture
def catalogue(tmp_path: Path, fake_llm: FakeLLM) -> Path:
    """The models streamed on the lean path only: no test here waits for litellm's import at the server's start."""
    models = yaml.safe_load(catalogue_yaml(fake_llm.base_url))["model_list"]
    path = tmp_path / "models.yaml"
    lean = [m for m in models if "stream_via" not in m["model_info"]]
    path.write_text(yaml.safe_dump({"model_list": lean}, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def mcp_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mcp-servers")


@pytest.fixture(scope="session")
def kit_server(mcp_logs: Path) -> Iterator[McpServerProcess]:
    with McpServerProcess("kit", mcp_logs) as server:
        yield server


@pytest.fixture(scope="session")
def clash_server(mcp_logs: Path) -> Iterator[McpServerProcess]:
    with McpServerProcess("clash", mcp_logs) as server:
        yield server


@pytest.fixture(scope="session")
def legacy_server(mcp_logs: Path) -> Iterator[McpServerProcess]:
    with McpServerProcess("kit", mcp_logs, legacy=True) as server:
        yield server


async def started(serverapp: Any, timeout: float = 30.0) -> FrevaGPT:
    """The extension after its start hook (pytest-jupyter's server does not run it), once every MCP server has
    answered or failed once."""
    await serverapp.extension_manager.start_all_extensions()
    app = freva_app(serverapp)
    await app.mcp_tools.discovered(timeout)
    return app


def server(app: FrevaGPT, name: str) -> McpConnection:
    (found,) = [c for c in app.mcp_tools.connections if c.config.name == name]
    return found


def call(tool: str, **arguments: Any) -> str:
    return f"x [[fake:tool tool={tool} args='{json.dumps(arguments)}']]"


def tool_outputs(lines: list[dict[str, Any]]) -> list[str]:
    """The ToolOutput messages of a stream (a client merges adjacent lines of one variant and id)."""
    merged: list[dict[str, Any]] = []
    for x in lines:
        if (
            x["variant"] == "ToolOutput"
            and merged
            and (merged[-1]["variant"], merged[-1].get("id")) == ("ToolOutput", x["id"])
        ):
            merged[-1] = {**merged[-1], "content": merged[-1]["content"] + x["content"]}
        else:
            merged.append(x)
    return [x["content"] for x in merged if x["variant"] == "ToolOutput"]


def offered(fake_llm: Any) -> list[str]:
    """The tool names the last turn offered the LLM."""
    return [t["function"]["name"] for t in turn_requests(fake_llm)[-1]["body"]["tools"]]


async def cancelled_calls(url: str) -> int:
    """How many `hang` calls the kit server at `url` saw cancelled."""
    async with mcp.Client(url) as client:
        result = await client.call_tool("cancelled", {})
    return int(result.content[0].text)


# ---------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"name": "a", "url": "http://x/mcp"}, "must be a list"),
        ([{"url": "http://x/mcp"}], "'name' must be"),
        ([{"name": "a b", "url": "http://x/mcp"}], "'name' must be"),
        ([{"name": "a"}], "either 'url'"),
        ([{"name": "a", "url": "http://x/mcp", "command": "x"}], "either 'url'"),
        ([{"name": "a", "url": "ftp://x"}], "http:// or https://"),
        ([{"name": "a", "url": "http://x:port/mcp"}], "http:// or https://"),
        ([{"name": "a", "url": "http:///mcp"}], "http:// or https://"),
        ([{"name": "a", "url": "http://x/mcp", "secret": 1}], "unknown keys secret"),
        ([{"name": "a", "command": "x", "forward_token": True}], "HTTP servers ('url') only"),
        ([{"name": "a", "url": "http://x/mcp", "per_user": True}], "stdio servers ('command') only"),
        ([{"name": "a", "url": "http://x/mcp", "timeout": 0}], "'timeout' must be"),
        ([{"name": "a", "command": "x", "args": "-m y"}], "'args' must be a list"),
        ([{"name": "a", "command": "x", "env": {"A": 1}}], "'env' must be an object of strings"),
        ([{"name": "a", "url": "http://x/mcp"}, {"name": "a", "command": "x"}], "two servers are named 'a'"),
    ],
)
def test_bad_entries_are_refused_with_the_reason(entries: Any, message: str) -> None:
    with pytest.raises(McpConfigError) as info:
        parse_mcp_servers(entries)
    assert message in str(info.value)
    # The setting refuses it too (a value of the wrong shape already by its type).
    with pytest.raises(TraitError, match="mcp_servers"):
        FrevaGPT(mcp_servers=entries)


def test_names_are_made_safe_for_function_calling() -> None:
    assert sanitise("get.data v2") == "get_data_v2"
    assert sanitise("x" * 80) == "x" * 64
    with pytest.raises(TraitError, match="mcp_refresh_interval must be greater than 0"):
        FrevaGPT(mcp_refresh_interval=0)


def test_a_server_is_shown_without_its_credentials() -> None:
    (entry,) = parse_mcp_servers([{"name": "a", "url": "https://user:pw@host:8443/mcp?key=k", "headers": {"X": "y"}}])
    assert entry.where == "https://host:8443/mcp?key=***"
    assert "pw" not in repr(entry) and "'y'" not in repr(entry)


# ---------------------------------------------------------------------------------------------------------------
# Discovery, names, calls
# ---------------------------------------------------------------------------------------------------------------


class TestServers:
    @pytest.fixture
    def freva_config(self, kit_server: McpServerProcess, clash_server: McpServerProcess) -> dict[str, Any]:
        return {
            "tools": ["tests.tools:EchoTool"],
            "mcp_servers": [
                {"name": "kit", "url": kit_server.url, "forward_token": True},
                {"name": "clash", "url": clash_server.url},
                STDIO,
            ],
        }

    async def test_tools_are_offered_by_stable_names(self, jp_serverapp, api, fake_llm):
        app = await started(jp_serverapp)
        assert {c.config.name: c.state for c in app.mcp_tools.connections} == {
            "kit": UP,
            "clash": UP,
            "local": UP,
            BUILTIN_NAME: UP,
        }
        lines = await turn(api, input=call("whoami"))
        names = offered(fake_llm)
        # The built-in tools first, then the servers' in mcp_servers order; a name that is taken gets its server's.
        assert names[:2] == ["code_interpreter", "echo"]
        kit = ["kit__echo", "fail", "hang", "cancelled", "whoami", "plot", "environment"]
        clash = ["clash__echo", "clash__code_interpreter", "get_context_from_resources"]
        local = [f"local__{name}" for name in ("echo", "fail", "hang", "cancelled", "whoami", "plot", "environment")]
        # The built-in retrieval steps aside for the site's own get_context_from_resources.
        assert names[2:] == kit + clash + local
        spec = next(
            t["function"] for t in turn_requests(fake_llm)[-1]["body"]["tools"] if t["function"]["name"] == "kit__echo"
        )
        assert spec["description"] == "Repeat the text."
        assert spec["parameters"]["properties"]["text"]["type"] == "string"
        assert spec["parameters"]["required"] == ["text"]
        assert "Hello" not in json.dumps(lines)  # the turn called the tool
        lines = await turn(api, input=call("clash__echo", text="hi"), show_tools=True)
        assert tool_outputs(lines) == ["clash echo: hi"]
        lines = await turn(api, input=call("get_context_from_resources", **QUESTION), show_tools=True)
        assert tool_outputs(lines) == ["site documentation on 'How do I find ERA5 data with freva?' from freva"]

    async def test_a_stdio_server_gets_the_allow_listed_environment_and_its_own(self, jp_serverapp, api, monkeypatch):
        monkeypatch.setenv("FREVAGPT_TEST_SETTING", "x")
        monkeypatch.setenv("SITE_API_TOKEN", "x")
        monkeypatch.setenv("LC_TEST_LOCALE", "x")
        await started(jp_serverapp)
        (names,) = tool_outputs(await turn(api, input=call("local__environment"), show_tools=True))
        names = names.split()
        assert "PYTHONPATH" in names and "LC_TEST_LOCALE" in names and "PATH" in names
        assert "FREVAGPT_TEST_SETTING" not in names and "SITE_API_TOKEN" not in names
        (echoed,) = tool_outputs(await turn(api, input=call("local__echo", text="over stdio"), show_tools=True))
        assert echoed == "kit echo: over stdio"

    async def test_streams_without_show_tools_carry_no_tool_variants(self, jp_serverapp, api):
        await started(jp_serverapp)
        lines = await turn(api, input=call("plot"))
        assert not {"ToolCall", "ToolOutput", "Image"} & set(kinds(lines))
        assert "The result was: a plot" in "".join(x["content"] for x in lines if x["variant"] == "Assistant")
        thread_id = lines[0]["content"]["thread_id"]
        assert kinds(body_json(await api("getthread", thread_id=thread_id))) == ["User", "Assistant"]
        stored = body_json(await api("getthread", thread_id=thread_id, show_tools=True))
        assert kinds(stored) == ["User", "ToolCall", "ToolOutput", "Image", "Assistant"]
        assert stored[3]["tool_name"] == "plot" and stored[3]["content"] == PNG_B64

    async def test_images_of_a_tool_are_streamed_with_show_tools(self, jp_serverapp, api):
        await started(jp_serverapp)
        lines = await turn(api, input=call("plot"), show_tools=True)
        (image,) = [x for x in lines if x["variant"] == "Image"]
        call_id = next(x for x in lines if x["variant"] == "ToolCall")["id"]
        assert image == {"variant": "Image", "content": PNG_B64, "id": f"{call_id}_0", "tool_name": "plot"}

    async def test_a_tool_error_is_text_for_the_llm(self, jp_serverapp, api, fake_llm):
        await started(jp_serverapp)
        lines = await turn(api, input=call("fail"), show_tools=True)
        (output,) = tool_outputs(lines)
        assert output.startswith("The tool 'fail' reported an error.") and "the disk is on fire" in output
        assert kinds(lines)[-2:] == ["Assistant", "StreamEnd"]
        assert turn_requests(fake_llm)[-1]["body"]["messages"][-1]["content"] == output

    async def test_only_a_bearer_token_is_forwarded(self, jp_serverapp, api):
        """Inside Jupyter a request's token is Jupyter's: never forwarded, even to a forward_token server."""
        await started(jp_serverapp)
        (seen,) = tool_outputs(await turn(api, input=call("whoami"), show_tools=True))
        assert json.loads(seen)["authorization"] is None

    async def test_stop_during_a_call(self, jp_serverapp, jp_fetch, api, kit_server):
        await started(jp_serverapp)
        before = await cancelled_calls(kit_server.url)
        live = LiveStream(jp_fetch, input=call("hang", seconds=60), show_tools=True)
        await live.wait_for(lambda lines: "ToolCall" in kinds(lines))
        await asyncio.sleep(0.3)
        asked = time.monotonic()
        await api("stop", thread_id=live.thread_id)
        lines = await live.finish()
        assert time.monotonic() - asked < 3
        assert lines[-1]["content"] == "Stream is stopped by user."
        stored = body_json(await api("getthread", thread_id=live.thread_id, show_tools=True))
        assert kinds(stored) == ["User", "ToolCall", "ToolOutput"]
        assert stored[-1]["content"] == "Stopped by user."
        # The server was told: its call was cancelled, not left to run.
        await wait_until_async(lambda: cancelled_calls(kit_server.url), lambda n: n == before + 1)
        # The thread goes on.
        lines = await turn(api, input=call("kit__echo", text="again"), thread_id=live.thread_id, show_tools=True)
        assert tool_outputs(lines) == ["kit echo: again"]


async def wait_until_async(ask: Any, ok: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok(value := await ask()):
        assert time.monotonic() < deadline, f"timed out; last {value!r}"
        await asyncio.sleep(0.1)


class TestTimeouts:
    @pytest.fixture
    def freva_config(self, kit_server: McpServerProcess) -> dict[str, Any]:
        return {"mcp_servers": [{"name": "kit", "url": kit_server.url, "timeout": 1}]}

    async def test_a_tool_that_hangs_past_its_timeout_is_cancelled(self, jp_serverapp, api, kit_server):
        await started(jp_serverapp)
        before = await cancelled_calls(kit_server.url)
        begun = time.monotonic()
        lines = await turn(api, input=call("hang", seconds=60), show_tools=True)
        assert time.monotonic() - begun < 10
        assert tool_outputs(lines) == [
            "The tool 'hang' of the MCP server 'kit' gave no result within 1 s; the call was cancelled."
        ]
        assert kinds(lines)[-2:] == ["Assistant", "StreamEnd"]
        await wait_until_async(lambda: cancelled_calls(kit_server.url), lambda n: n == before + 1)
        # The client survives its abandoned call.
        assert tool_outputs(await turn(api, input=call("echo", text="after"), show_tools=True)) == ["kit echo: after"]


@pytest.fixture
def late_server(mcp_logs: Path) -> Iterator[McpServerProcess]:
    """A kit server on a port of its own, not started yet."""
    process = McpServerProcess("kit", mcp_logs)
    yield process
    process.stop()


class TestDownAndBack:
    @pytest.fixture
    def freva_config(self, late_server: McpServerProcess) -> dict[str, Any]:
        return {"mcp_servers": [{"name": "late", "url": late_server.url, "timeout": 5}], "mcp_refresh_interval": 0.3}

    async def test_a_server_down_at_start_is_picked_up_when_it_comes(
        self, jp_serverapp, jp_fetch, api, fake_llm, late_server, caplog
    ):
        caplog.set_level(logging.DEBUG)
        app = await started(jp_serverapp)
        late = server(app, "late")
        assert late.state == DOWN and "ConnectError" in late.problem
        # Turns go on without its tools (the LLM that calls one anyway is told it is unknown).
        lines = await turn(api, input=call("echo", text="hi"), show_tools=True)
        assert "echo" not in offered(fake_llm)
        assert tool_outputs(lines) == ["Unknown tool 'echo'."]
        assert kinds(lines)[-2:] == ["Assistant", "StreamEnd"]
        await asyncio.sleep(1)  # retries, quietly
        late_server.start()
        await wait_until(lambda: late.state == UP, what="the server to be picked up")
        lines = await turn(api, input=call("echo", text="hi"), show_tools=True)
        assert tool_outputs(lines) == ["kit echo: hi"]
        # It goes away: a call in flight reads why, and its tools leave the next turns.
        live = LiveStream(jp_fetch, input=call("hang", seconds=60), show_tools=True)
        await live.wait_for(lambda lines: "ToolCall" in kinds(lines))
        await asyncio.sleep(0.3)
        late_server.kill()
        dropped = time.monotonic()
        lines = await live.finish()
        assert time.monotonic() - dropped < 5
        (output,) = tool_outputs(lines)
        assert output.startswith("The MCP server 'late' cannot be reached (")
        assert output.endswith("its tool 'hang' did not run.")
        assert kinds(lines)[-2:] == ["Assistant", "StreamEnd"]
        await wait_until(lambda: late.state == DOWN, what="the server to be seen down")
        await turn(api, input="anything")
        assert "echo" not in offered(fake_llm)
        warnings = [
            r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "'late'" in r.getMessage()
        ]
        # Once per outage (two here), with where it is; the retries in between are quiet.
        assert len(warnings) == 2, warnings
        assert all(f"({late_server.url})" in w and "does not answer" in w for w in warnings)


@pytest.fixture
def silent_url() -> Iterator[str]:
    """An endpoint that takes connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"


class TestNothingWaits:
    @pytest.fixture
    def freva_config(self, silent_url: str) -> dict[str, Any]:
        return {"mcp_servers": [{"name": "silent", "url": silent_url, "timeout": 60}], "rag": False}

    async def test_start_up_and_turns_do_not_wait_for_discovery(self, jp_serverapp, api, fake_llm):
        begun = time.monotonic()
        await jp_serverapp.extension_manager.start_all_extensions()
        assert body_json(await api("availablechatbots"))
        lines = await turn(api, input="hello")
        assert time.monotonic() - begun < 5
        assert kinds(lines)[-1] == "StreamEnd"
        assert offered(fake_llm) == ["code_interpreter"]
        assert server(freva_app(jp_serverapp), "silent").state == "starting"


# ---------------------------------------------------------------------------------------------------------------
# Sessions: servers of the handshake protocol, stdio per user
# ---------------------------------------------------------------------------------------------------------------


class TestSessions:
    @pytest.fixture
    def freva_config(self, legacy_server: McpServerProcess) -> dict[str, Any]:
        per_user = {**STDIO, "name": "mine", "per_user": True}
        return {"mcp_servers": [{"name": "old", "url": legacy_server.url}, per_user], "rag": False}

    async def test_a_handshake_server_keeps_a_session_per_thread(self, jp_serverapp, api):
        app = await started(jp_serverapp)
        old = server(app, "old")
        assert old.protocol == "2025-11-25"

        async def session(**params: Any) -> tuple[str, str]:
            lines = await turn(api, input=call("whoami"), show_tools=True, **params)
            return lines[0]["content"]["thread_id"], json.loads(tool_outputs(lines)[0])["session"]

        first, one = await session()
        assert one
        assert await session(thread_id=first) == (first, one)
        _, other = await session()
        assert other and other != one
        assert old.sessions == 2
        await api("deletethread", method="POST", thread_id=first)
        assert old.sessions == 1

    async def test_sessions_of_idle_threads_are_closed(self, legacy_server):
        servers = parse_mcp_servers([{"name": "old", "url": legacy_server.url}])
        log = logging.getLogger("tests.mcp")
        tools = McpTools(servers, reserved=(), builtin=None, refresh_interval=0.1, log=log, session_idle=0.5)
        tools.start()
        try:
            await tools.discovered(20)
            (old,) = tools.connections
            outputs = [v async for v in tools.offered["whoami"].run("c1", {}, ToolContext(thread_id="t", owner="a"))]
            assert json.loads(outputs[0].content)["session"]
            assert old.sessions == 1
            await wait_until(lambda: old.sessions == 0, timeout=5, what="the idle session to close")
        finally:
            await tools.aclose()

    async def test_per_user_stdio_servers_run_one_process_per_user(self, jp_serverapp, api):
        await started(jp_serverapp)

        async def pid(user: str) -> int:
            lines = await turn(api, user=user, input=call("mine__whoami"), show_tools=True)
            return json.loads(tool_outputs(lines)[0])["pid"]

        alice = await pid("alice")
        assert await pid("bob") != alice
        assert await pid("alice") == alice


# ---------------------------------------------------------------------------------------------------------------
# A code interpreter from an MCP server
# ---------------------------------------------------------------------------------------------------------------


class TestCodeInterpreterFromMcp:
    @pytest.fixture
    def freva_config(self, clash_server: McpServerProcess) -> dict[str, Any]:
        return {"code_interpreter": False, "rag": False, "mcp_servers": [{"name": "clash", "url": clash_server.url}]}

    async def test_it_streams_as_code(self, jp_serverapp, api):
        await started(jp_serverapp)
        lines = await turn(api, input="compute", chatbot="fake-code")
        assert [m for m in messages_of(lines) if m != "ServerHint"] == ["Code", "CodeOutput", "Assistant", "StreamEnd"]
        code = "".join(x["content"] for x in lines if x["variant"] == "Code")
        assert json.loads(code) == {"code": "print(6*7)"}
        (output,) = [x for x in lines if x["variant"] == "CodeOutput"]
        assert output["content"] == "ran: print(6*7)"
        stored = body_json(await api("getthread", thread_id=lines[0]["content"]["thread_id"]))
        assert kinds(stored) == ["User", "Code", "CodeOutput", "Assistant"]


# ---------------------------------------------------------------------------------------------------------------
# The built-in retrieval
# ---------------------------------------------------------------------------------------------------------------


class TestBuiltinRetrieval:
    @pytest.fixture
    def site_docs(self, tmp_path: Path) -> Path:
        library = tmp_path / "site-docs" / "cluster"
        library.mkdir(parents=True)
        (library / "queues.md").write_text("# Batch queues\n\nSubmit long jobs to the compute partition with sbatch.\n")
        return tmp_path / "site-docs"

    @pytest.fixture
    def freva_config(self, site_docs: Path) -> dict[str, Any]:
        return {"rag_resources": [str(site_docs)]}

    async def test_a_turn_cites_the_freva_documentation(self, jp_serverapp, api, fake_llm):
        app = await started(jp_serverapp)
        assert server(app, BUILTIN_NAME).state == UP
        lines = await turn(api, input=call("get_context_from_resources", **QUESTION), show_tools=True)
        (output,) = tool_outputs(lines)
        assert "resources/freva/" in output
        assert "resources/freva/" in turn_requests(fake_llm)[-1]["body"]["messages"][-1]["content"]
        assert offered(fake_llm) == ["code_interpreter", "get_context_from_resources"]
        # Without show_tools the answer still uses it; the stream carries no tool lines.
        lines = await turn(api, input=call("get_context_from_resources", **QUESTION))
        assert not {"ToolCall", "ToolOutput"} & set(kinds(lines))
        assert "resources/freva/" in "".join(x["content"] for x in lines if x["variant"] == "Assistant")

    async def test_rag_resources_add_a_library(self, jp_serverapp, api):
        await started(jp_serverapp)
        question = {"question": "How do I submit a long job?", "resources_to_retrieve_from": "cluster"}
        (output,) = tool_outputs(await turn(api, input=call("get_context_from_resources", **question), show_tools=True))
        assert "site-docs/cluster/queues.md" in output


# ---------------------------------------------------------------------------------------------------------------
# Identity: the bearer token of a standalone request
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def auth_server(jp_asyncio_loop) -> Iterator[FakeAuth]:
    yield from serving(jp_asyncio_loop, FakeAuth())


class TestBearerForwarding:
    @pytest.fixture
    def jp_server_config(self, tmp_path: Path, catalogue: Path, auth_server: FakeAuth, kit_server: McpServerProcess):
        config = _base_config(tmp_path, catalogue)
        config["ServerApp"]["identity_provider_class"] = "freva_gpt_ext.auth.FrevaRestIdentityProvider"
        config["ServerApp"]["authorizer_class"] = "freva_gpt_ext.authorizer.ChatbotOnlyAuthorizer"
        servers = [
            {"name": "kit", "url": kit_server.url, "forward_token": True},
            {"name": "plain", "url": kit_server.url},
        ]
        config["FrevaGPT"].update({"rest_url": auth_server.url, "mcp_servers": servers, "rag": False})
        return config

    async def test_the_token_reaches_only_forward_token_servers(self, jp_serverapp, http_server_client, jp_base_url):
        await started(jp_serverapp)

        async def seen(tool: str, headers: dict[str, str]) -> Any:
            body = {"input": call(tool), "chatbot": "fake-text", "show_tools": True}
            response = await http_server_client.fetch(
                f"{jp_base_url}api/chatbot/streamresponse", method="POST", headers=headers, body=json.dumps(body)
            )
            lines = [json.loads(line) for line in response.body.decode().splitlines()]
            return json.loads(tool_outputs(lines)[0])["authorization"]

        assert await seen("whoami", {"Authorization": "Bearer good-token"}) == "Bearer good-token"
        assert await seen("whoami", {"X-Freva-User-Token": "Bearer pw-token"}) == "Bearer pw-token"
        assert await seen("plain__whoami", {"Authorization": "Bearer good-token"}) is None


# ---------------------------------------------------------------------------------------------------------------
# The doctor
# ---------------------------------------------------------------------------------------------------------------


def test_the_doctor_lists_the_servers_their_state_and_tools(tmp_path: Path, kit_server, clash_server) -> None:
    servers = [
        {"name": "kit", "url": kit_server.url},
        {"name": "clash", "url": clash_server.url},
        {"name": "gone", "url": "http://127.0.0.1:9/mcp", "timeout": 2},
    ]
    env = clean_env(tmp_path / "jupyter", FREVAGPT_MCP_SERVERS=json.dumps(servers), FREVAGPT_DATA_DIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "jupyter", "freva-gpt", "doctor", "--FrevaGPT.code_interpreter=False"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    lines = [line for line in result.stdout.splitlines() if line[6:].startswith("mcp server")]
    assert lines == [
        f"ok    mcp server 'kit': {kit_server.url} answers; tools: echo, fail, hang, cancelled, whoami, plot, "
        "environment",
        f"ok    mcp server 'clash': {clash_server.url} answers; tools: clash__echo (echo), code_interpreter, "
        "get_context_from_resources",
        "WARN  mcp server 'gone': http://127.0.0.1:9/mcp does not answer (ConnectError: All connection attempts "
        "failed)",
        f"ok    mcp server '{BUILTIN_NAME}': in-process (built in) answers; a server of mcp_servers provides its "
        "tools instead",
    ], result.stdout + result.stderr
