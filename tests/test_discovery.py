"""Models without a catalogue: OpenAI-compatible servers asked for `GET /models`, their sockets' owners checked."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import httpx
import pytest
from tornado.httpclient import HTTPClientError

from freva_gpt_ext.core.catalogue import NO_MODEL_HINT
from freva_gpt_ext.core.discovery import (
    DEFAULT_ENDPOINTS,
    Listener,
    Refusal,
    SocketOwners,
    default_endpoints,
    is_loopback,
    parse_proc_net,
    parse_uid_min,
    port_owners,
    read_uid_min,
)
from tests.conftest import body_json, parse_lines, serving
from tests.fake_llm import FakeLLM
from tests.server_process import REPO, FakeLLMProcess, ServerProcess, clean_env, free_port

DETAIL = "X-FrevaGPT-Detail"
DEFAULT_KEY = "server-default-key-4711"
ANSWER = "Hello from the fake LLM."
pytestmark = pytest.mark.timeout(180)

# Sample /proc/net files as a little-endian Linux writes them.
TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2CAA 00000000:0000 0A 00000000:00000000 00:00000000 00000000   996        0 101 1 0 100 0 0 10 0
   1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1001        0 102 1 0 100 0 0 10 0
   2: 0100007F:1F40 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1003        0 103 1 0 20 4 30 10 -1
   3: 0200000A:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1004        0 104 1 0 100 0 0 10 0
   4: garbage line
"""
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when \
retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F40 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 \
00000000  1002        0 105 1 0 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:22B8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 \
00000000  1005        0 106 1 0 100 0 0 10 0
   2: 00000000000000000000000000000000:1F41 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 \
00000000  1006        0 107 1 0 100 0 0 10 0
"""


# -- units: the default list, login.defs, /proc/net ---------------------------------------------------------
def test_the_default_list_is_only_for_a_machine_of_one_user() -> None:
    assert default_endpoints({}, standalone=False) == list(DEFAULT_ENDPOINTS)
    assert default_endpoints({"HOME": "/home/ann"}, standalone=False) == [
        "http://127.0.0.1:11434/v1",
        "http://127.0.0.1:8080/v1",
        "http://127.0.0.1:8000/v1",
    ]
    assert default_endpoints({"JUPYTERHUB_USER": "ann"}, standalone=False) == []
    assert default_endpoints({"JUPYTERHUB_USER": ""}, standalone=False) == [], "set is enough"
    assert default_endpoints({}, standalone=True) == []


def test_uid_min_from_login_defs(tmp_path: Path) -> None:
    text = "# UID_MIN 5\nUID_MAX 60000\n  UID_MIN\t\t 1000  # login users\nSYS_UID_MIN 101\n"
    assert parse_uid_min(text) == 1000
    assert parse_uid_min("UID_MIN 500\nUID_MIN 2000\n") == 2000, "the last one counts"
    assert parse_uid_min("UID_MIN 0x3E8\n") == 1000
    assert parse_uid_min("UID_MIN lots\n") == 1000
    assert parse_uid_min("") == 1000
    defs = tmp_path / "login.defs"
    defs.write_text("UID_MIN 5000\n")
    assert read_uid_min(defs) == 5000
    assert read_uid_min(tmp_path / "missing") == 1000


def test_proc_net_parser_keeps_listening_sockets() -> None:
    found = parse_proc_net(TCP, "little")
    assert [(str(s.address), s.port, s.uid) for s in found] == [
        ("127.0.0.1", 11434, 996),
        ("0.0.0.0", 8080, 1001),
        ("10.0.0.2", 8000, 1004),
    ]
    six = parse_proc_net(TCP6, "little")
    assert [(s.address, s.port, s.uid) for s in six] == [
        (ip_address("::1"), 8000, 1002),
        (ip_address("::ffff:127.0.0.1"), 8888, 1005),
        (ip_address("::"), 8001, 1006),
    ]
    big = "  sl  local_address ...\n   0: 7F000001:2CAA 00000000:0000 0A 0:0 0:0 0  1000  0 1\n"
    assert parse_proc_net(big, "big") == [Listener(parse_proc_net(TCP, "little")[0].address, 11434, 1000)]
    assert parse_proc_net("", "little") == []


def test_port_owners_reads_both_files(tmp_path: Path) -> None:
    (tmp_path / "tcp").write_text(TCP)
    (tmp_path / "tcp6").write_text(TCP6)
    assert port_owners(11434, tmp_path) == {996}
    assert port_owners(8080, tmp_path) == {1001}
    # 10.0.0.2 is no loopback and the established socket listens on nothing: only ::1 counts.
    assert port_owners(8000, tmp_path) == {1002}
    assert port_owners(8888, tmp_path) == {1005}, "an IPv4-mapped loopback address"
    assert port_owners(8001, tmp_path) == {1006}, "the IPv6 wildcard takes IPv4 too"
    assert port_owners(9, tmp_path) == set()
    (tmp_path / "tcp6").unlink()
    assert port_owners(11434, tmp_path) == {996}, "no IPv6: tcp alone"
    assert port_owners(11434, tmp_path / "missing") is None


def test_loopback_hosts() -> None:
    for host in ("127.0.0.1", "127.1.2.3", "localhost", "LOCALHOST", "::1", "[::1]", "::ffff:127.0.0.1", "0.0.0.0"):
        assert is_loopback(host), host
    for host in ("10.0.0.1", "example.org", "::ffff:10.0.0.1", "2001:db8::1", ""):
        assert not is_loopback(host), host


def test_socket_owner_rule(tmp_path: Path) -> None:
    (tmp_path / "tcp").write_text(TCP)
    (tmp_path / "tcp6").write_text(TCP6)
    owners = SocketOwners(single_user=False, own_uid=1002, uid_min=1000, proc_net=tmp_path)
    assert owners.refusal("http://127.0.0.1:11434/v1") is None, "a system account (the ollama user)"
    assert owners.refusal("http://[::1]:8000/v1") is None, "the server's own user"
    assert owners.refusal("http://localhost:8080/v1") == Refusal("localhost:8080", 1001)
    assert owners.refusal("http://127.0.0.1:8888/v1") == Refusal("127.0.0.1:8888", 1005)
    assert owners.refusal("http://127.0.0.1:9/v1") is None, "nobody listens: nothing to refuse"
    assert owners.refusal("http://10.1.2.3:8080/v1") is None, "an admin listed an endpoint off the loopback"
    assert owners.refusal("http://127.0.0.1/v1") is None, "port 80, nobody listens"
    higher = SocketOwners(single_user=False, own_uid=1002, uid_min=1006, proc_net=tmp_path)
    assert higher.refusal("http://localhost:8080/v1") is None, "below UID_MIN of login.defs: a system account"

    # No /proc/net (macOS): trusted only where no other user works.
    gone = tmp_path / "missing"
    assert (
        SocketOwners(single_user=True, own_uid=1002, uid_min=1000, proc_net=gone).refusal("http://127.0.0.1:11434/v1")
        is None
    )
    refused = SocketOwners(single_user=False, own_uid=1002, uid_min=1000, proc_net=gone).refusal(
        "http://127.0.0.1:11434/v1"
    )
    assert refused == Refusal("127.0.0.1:11434", None)
    assert "cannot be checked" in refused.sentence()


def test_refusals_name_the_owner() -> None:
    name = pwd.getpwuid(0).pw_name
    assert Refusal("127.0.0.1:11434", 0).sentence() == (
        f"Not used: the model server at 127.0.0.1:11434 runs as user '{name}' (another login user could read "
        "your prompts)."
    )
    unnamed = next(uid for uid in range(4242, 65000) if not _has_name(uid))
    assert f"runs as uid {unnamed} " in Refusal("127.0.0.1:8080", unnamed).sentence()


def _has_name(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


# -- helpers for the servers -------------------------------------------------------------------------------
async def until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 30.0) -> Any:
    """Poll `check` until it returns something true (the state, never a guessed time)."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.05)


def discovering(*urls: str, **more: Any) -> dict[str, Any]:
    return {
        "litellm_config": "",
        "model_discovery": list(urls),
        "model_discovery_interval": 0.2,
        "model_discovery_timeout": 2.0,
        "openai_api_key": DEFAULT_KEY,
        **more,
    }


async def offered(api) -> list[str]:
    return body_json(await api("availablechatbots"))


async def stream_text(api, chatbot: str, text: str = "hi", **params: Any) -> list[dict[str, Any]]:
    response = await api("streamresponse", method="POST", input=text, chatbot=chatbot, **params)
    return parse_lines(response.body)


def answer_of(lines: list[dict[str, Any]]) -> str:
    return "".join(line["content"] for line in lines if line["variant"] == "Assistant")


# -- discovered models, offered and streamed -----------------------------------------------------------------
class TestOffered:
    @pytest.fixture
    def freva_config(self, fake_llm: FakeLLM) -> dict[str, Any]:
        fake_llm.models = ["fake-text", "nomic-embed-text", "mxbai-EMBED-large", "fake-slow"]
        return discovering(fake_llm.base_url)

    async def test_chat_models_are_offered_and_stream_on_the_lean_path(self, api, jp_fetch, fake_llm):
        names = await until(lambda: offered(api), "the discovered models are offered")
        assert names == ["fake-text", "fake-slow"], "embedding models are skipped, the order kept"
        assert body_json(await jp_fetch("api", "chatbot", "ping"))["status"] == "ok"
        assert "X-FrevaGPT-Detail" not in (await api("availablechatbots")).headers

        lines = await stream_text(api, "fake-text", "hello there")
        assert answer_of(lines) == f"{ANSWER} You said: hello there"
        (request,) = fake_llm.requests
        assert request.path == "/v1/chat/completions" and request.body["model"] == "fake-text"
        assert "authorization" not in request.headers, "the server's default key is not sent to a discovered model"
        assert "openai" not in request.headers.get("user-agent", "").lower(), "the lean reader, not litellm's SDK"
        assert request.body["tools"], "discovered models start with tools"
        assert all("authorization" not in listing.headers for listing in fake_llm.listings)
        # The default model is the first one found.
        assert answer_of(parse_lines((await api("streamresponse", method="POST", input="x")).body)).startswith(ANSWER)
        assert fake_llm.requests[-1].body["model"] == "fake-text"

    async def test_no_more_rounds_once_models_are_known(self, api, fake_llm):
        await until(lambda: offered(api), "the discovered models are offered")
        asked = len(fake_llm.listings)
        for _ in range(3):
            await asyncio.sleep(0.25)  # longer than the interval: a round would be due if one were wanted
            assert await offered(api) == ["fake-text", "fake-slow"]
        assert len(fake_llm.listings) == asked


@pytest.fixture
def second_llm(jp_asyncio_loop) -> Iterator[FakeLLM]:
    yield from serving(jp_asyncio_loop, FakeLLM(models=["fake-text"]))


class TestClash:
    @pytest.fixture
    def freva_config(self, fake_llm: FakeLLM, second_llm: FakeLLM) -> dict[str, Any]:
        fake_llm.models = ["fake-text", "fake-slow"]
        return discovering(fake_llm.base_url, second_llm.base_url)

    async def test_an_id_of_two_servers_is_prefixed_by_host_and_port(self, api, fake_llm, second_llm):
        names = await until(lambda: offered(api), "the discovered models are offered")
        first, second = f"127.0.0.1:{fake_llm.port}", f"127.0.0.1:{second_llm.port}"
        assert names == [f"{first}/fake-text", "fake-slow", f"{second}/fake-text"]
        lines = await stream_text(api, f"{second}/fake-text")
        assert answer_of(lines).startswith(ANSWER)
        assert [r.body["model"] for r in second_llm.requests] == ["fake-text"]
        assert fake_llm.requests == []


# -- nothing at first, found later ----------------------------------------------------------------------------
class TestFoundLater:
    @pytest.fixture
    def late_port(self) -> int:
        return free_port()

    @pytest.fixture
    def freva_config(self, late_port: int) -> dict[str, Any]:
        return discovering(f"http://127.0.0.1:{late_port}/v1")

    async def test_models_appear_once_a_server_answers(self, api, jp_fetch, late_port):
        where = f"127.0.0.1:{late_port}"

        async def empty_round_done() -> str | None:
            response = await api("availablechatbots")
            assert body_json(response) == []
            header = response.headers[DETAIL]
            assert header.startswith("No model configured;") and where in header, header
            return header if "none found at" in header else None

        header = await until(empty_round_done, "a round that found nothing")
        assert header == f"No model configured; none found at {where}."
        assert body_json(await jp_fetch("api", "chatbot", "ping"))["status"] == "ok", "no model is no breakage"
        with pytest.raises(HTTPClientError) as refused:
            await api("streamresponse", method="POST", input="hello")
        assert refused.value.code == 503
        assert body_json(refused.value.response) == {"detail": header}

        async with FakeLLM(port=late_port, models=["fake-text"]) as late:
            names = await until(lambda: offered(api), "the models of a server started later")
            assert names == ["fake-text"]
            assert answer_of(await stream_text(api, "fake-text")).startswith(ANSWER)
            assert len(late.requests) == 1


class TestOff:
    @pytest.fixture
    def freva_config(self) -> dict[str, Any]:
        return {"litellm_config": "", "model_discovery": []}

    async def test_without_endpoints_the_hint_stays(self, api):
        response = await api("availablechatbots")
        assert body_json(response) == []
        assert response.headers[DETAIL] == NO_MODEL_HINT


class TestBadSettings:
    @pytest.fixture
    def freva_config(self) -> dict[str, Any]:
        return {"litellm_config": "", "model_discovery": ["127.0.0.1:11434"], "model_discovery_interval": 0}

    async def test_are_reported_like_a_broken_catalogue(self, api, jp_fetch):
        ping = body_json(await jp_fetch("api", "chatbot", "ping"))
        assert ping["status"] == "degraded", ping
        assert "'http://127.0.0.1:11434/v1', not '127.0.0.1:11434'" in ping["detail"], ping
        assert "FrevaGPT.model_discovery_interval must be greater than 0" in ping["detail"], ping
        response = await api("availablechatbots")
        assert body_json(response) == [] and response.headers[DETAIL].startswith("FrevaGPT configuration error")


# -- tools refused ----------------------------------------------------------------------------------------
class TestToolsRefused:
    @pytest.fixture
    def freva_config(self, fake_llm: FakeLLM) -> dict[str, Any]:
        fake_llm.models = ["fake-notools"]
        return discovering(fake_llm.base_url)

    async def test_retried_without_tools_and_marked(self, api, fake_llm, caplog):
        caplog.set_level(logging.INFO)
        await until(lambda: offered(api), "the discovered model is offered")
        lines = await stream_text(api, "fake-notools", "first")
        assert answer_of(lines) == f"{ANSWER} You said: first"
        assert not [line for line in lines if line["variant"] == "ServerError"], lines
        first, second = fake_llm.requests
        assert first.body.get("tools") and "tools" not in second.body
        assert first.body["messages"] == second.body["messages"]

        thread_id = lines[0]["content"]["thread_id"]
        lines = await stream_text(api, "fake-notools", "second", thread_id=thread_id)
        assert answer_of(lines) == f"{ANSWER} You said: second"
        assert len(fake_llm.requests) == 3, "the next turn sends no tools at once"
        assert "tools" not in fake_llm.requests[2].body
        assert caplog.text.count("does not take tools") == 1, caplog.text


# -- the default list, end to end --------------------------------------------------------------------------
OLLAMA_PORT = 11434


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _names(server: ServerProcess) -> tuple[list[str], str]:
    with server.client() as client:
        response = client.get("api/chatbot/availablechatbots")
    response.raise_for_status()
    return response.json(), response.headers.get(DETAIL, "")


def test_the_default_list_finds_ollama_only_without_a_hub(tmp_path: Path) -> None:
    if _port_taken(OLLAMA_PORT):
        pytest.skip(f"port {OLLAMA_PORT} is taken here (a real Ollama?): the fake cannot stand in for it")
    # Unset: the default list. A small interval, so that rounds would come quickly if any were made.
    env: dict[str, str | None] = {"FREVAGPT_MODEL_DISCOVERY": None, "FREVAGPT_MODEL_DISCOVERY_INTERVAL": "0.2"}
    with FakeLLMProcess(port=OLLAMA_PORT, models=["fake-text"]):
        alone = ServerProcess(tmp_path / "alone", env=env).start()
        hub = ServerProcess(tmp_path / "hub", env={**env, "JUPYTERHUB_USER": "someone"}).start()
        with alone, hub:
            deadline = time.monotonic() + 30
            while "fake-text" not in _names(alone)[0]:
                assert time.monotonic() < deadline, f"no model found without a hub:\n{alone.log()}"
                time.sleep(0.05)
            # Under JupyterHub: no round at all, over several intervals of asking.
            for _ in range(8):
                # The hint, not what discovery saw: under a hub it is off.
                assert _names(hub) == ([], NO_MODEL_HINT)
                time.sleep(0.2)


# -- sockets of other users (as root: setpriv runs the fake LLM as them) ---------------------------------------
def run_as(uid: int) -> list[str]:
    """The command prefix that runs a fake LLM as `uid`; skips the test where that cannot be done."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to run a fake model server as another user (CI runs as root)")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("needs setpriv (util-linux)")
    prefix = [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    check = subprocess.run(
        [*prefix, sys.executable, "-c", "import tests.fake_llm"], cwd=REPO, capture_output=True, text=True
    )
    if check.returncode != 0:
        pytest.skip(f"uid {uid} cannot run {sys.executable} on this checkout: {check.stderr[-300:]}")
    return prefix


def owner_of(uid: int) -> str:
    try:
        return f"user '{pwd.getpwuid(uid).pw_name}'"
    except KeyError:
        return f"uid {uid}"


@pytest.fixture
def foreign_llm(request) -> Iterator[FakeLLMProcess]:
    with FakeLLMProcess(models=["fake-text"], prefix=run_as(request.param)) as process:
        yield process


class TestOwners:
    @pytest.fixture
    def freva_config(self, foreign_llm: FakeLLMProcess) -> dict[str, Any]:
        return discovering(foreign_llm.base_url)

    @pytest.mark.parametrize("foreign_llm", [1000], indirect=True)
    async def test_a_login_users_socket_is_refused_and_named(self, api, foreign_llm, caplog):
        where = foreign_llm.base_url.split("/")[2]

        async def refused() -> str | None:
            response = await api("availablechatbots")
            assert body_json(response) == []
            return response.headers[DETAIL] if "Not used" in response.headers[DETAIL] else None

        header = await until(refused, "the refusal is reported")
        assert header.startswith(f"Not used: the model server at {where} runs as {owner_of(1000)} ("), header
        assert header.endswith("No model configured."), header
        for _ in range(3):  # later rounds refuse it again
            await asyncio.sleep(0.25)
            assert await offered(api) == []
        assert caplog.text.count(f"does not use the model server at {foreign_llm.base_url}") == 1, caplog.text

    @pytest.mark.parametrize("foreign_llm", [999], indirect=True)
    async def test_a_system_accounts_socket_is_used(self, api, foreign_llm):
        assert await until(lambda: offered(api), "the system account's models") == ["fake-text"]
        assert answer_of(await stream_text(api, "fake-text")).startswith(ANSWER)


class TestOwnerChanged:
    @pytest.fixture
    def freva_config(self, fake_llm: FakeLLM) -> dict[str, Any]:
        fake_llm.models = ["fake-text"]
        return discovering(fake_llm.base_url)

    async def test_a_turn_is_refused_when_another_user_took_the_port(self, api, fake_llm):
        prefix = run_as(1000)
        assert await until(lambda: offered(api), "the model of the server's own fake") == ["fake-text"]
        assert answer_of(await stream_text(api, "fake-text")).startswith(ANSWER)
        await fake_llm.stop()  # the user's model server stopped; another user binds its port
        with FakeLLMProcess(port=fake_llm.port, models=["fake-text"], prefix=prefix) as other:
            with pytest.raises(HTTPClientError) as refused:
                await api("streamresponse", method="POST", input="secret plans", chatbot="fake-text")
            assert refused.value.code == 503
            detail = body_json(refused.value.response)["detail"]
            assert f"127.0.0.1:{fake_llm.port} runs as {owner_of(1000)}" in detail, detail
            async with httpx.AsyncClient(trust_env=False) as client:  # it answers: only the check kept it away
                assert (await client.get(f"{other.base_url}/models")).status_code == 200


# -- doctor ------------------------------------------------------------------------------------------------
def test_doctor_says_what_discovery_found(tmp_path: Path) -> None:
    with FakeLLMProcess(models=["fake-text", "nomic-embed-text"]) as llm:
        missing = f"http://127.0.0.1:{free_port()}/v1"
        endpoints = json.dumps([llm.base_url, missing])
        result = subprocess.run(
            [sys.executable, "-m", "jupyter", "freva-gpt", "doctor", "--FrevaGPT.code_interpreter=False"],
            cwd=tmp_path,
            env=clean_env(tmp_path / "jupyter", FREVAGPT_MODEL_DISCOVERY=endpoints, FREVAGPT_DATA_DIR=str(tmp_path)),
            capture_output=True,
            text=True,
            timeout=120,
        )
    asked = f"{llm.base_url.split('/')[2]}, {missing.split('/')[2]}"
    assert f"ok    model discovery: no catalogue; asked {asked}: found fake-text\n" in result.stdout, result.stdout
    assert "FAIL  catalogue" not in result.stdout
