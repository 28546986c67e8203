from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fake_llm import FakeLLM, catalogue_yaml
from tests.fake_vault import FakeVault
from tests.frontend import as_stored, read_stream, stored_tail
from tests.local_server import LocalServer
from tests.mongo_server import MongoServer

# tests.hub: the session fixture `hub`, a real JupyterHub.
pytest_plugins = ("pytest_jupyter.jupyter_server", "tests.hub")


def serving(loop: Any, server: LocalServer) -> Iterator[Any]:
    """Run a fake upstream server on the test's event loop for the life of a fixture."""
    loop.run_until_complete(server.start())
    yield server
    loop.run_until_complete(server.stop())


@pytest.fixture(scope="session")
def mongo_session() -> Iterator[MongoServer]:
    with MongoServer() as server:
        yield server


@pytest.fixture
def mongo_server(mongo_session: MongoServer) -> MongoServer:
    """One secantusdb for the session, started again when it stopped answering; each test takes a database of its
    own (`unique_database()`)."""
    return mongo_session.ensure_answering()


@pytest.fixture
def vault(jp_asyncio_loop, mongo_server: MongoServer) -> Iterator[FakeVault]:
    """A fake Freva vault: `vault.url("ok")` gives out the session's MongoDB (as X-Freva-Vault-URL names it)."""
    yield from serving(jp_asyncio_loop, FakeVault({"ok": (200, {"mongodb.url": mongo_server.uri})}))


@pytest.fixture
def fake_llm(jp_asyncio_loop) -> Iterator[FakeLLM]:
    yield from serving(jp_asyncio_loop, FakeLLM())


@pytest.fixture
def catalogue(tmp_path: Path, fake_llm: FakeLLM) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(catalogue_yaml(fake_llm.base_url))
    return path


@pytest.fixture
def freva_config() -> dict[str, Any]:
    """Per-test overrides of c.FrevaGPT (a test changes it before the server starts)."""
    return {}


@pytest.fixture
def jp_server_config(tmp_path: Path, catalogue: Path, freva_config: dict[str, Any]) -> dict[str, Any]:
    return {
        "ServerApp": {
            "jpserver_extensions": {"freva_gpt_ext": True},
            "allow_unauthenticated_access": False,
            "identity_provider_class": "tests.identity.TwoUsersIdentityProvider",
        },
        "FrevaGPT": {
            "litellm_config": str(catalogue),
            "data_dir": str(tmp_path / "data"),
            "heartbeat_interval": 0.2,
            "stop_poll_interval": 0.05,
            "lease_ttl": 5.0,
            "llm_read_timeout": 10.0,
            # No probe kernel beside each test's server; the tests of the probe turn it on.
            "kernel_probe": False,
            # The server's owner: the notebook kernels (started through api/kernels) are alice's, not bob's.
            "owner": "alice",
            # No model discovery (its default asks this machine's ports 11434, 8080, 8000); its tests turn it on.
            "model_discovery": [],
            **freva_config,
        },
    }


def parse_lines(body: bytes) -> list[dict[str, Any]]:
    text = body.decode("ascii")  # the stream escapes everything non-ASCII
    assert text == "" or text.endswith("\n"), "every line ends with a newline"
    return [json.loads(line) for line in text.split("\n") if line]


@pytest.fixture
def api(jp_fetch) -> Callable[..., Any]:
    """Call a chatbot route as a user: `await api("getthread", user="bob", thread_id=...)`.

    Every stream it receives is read as the web frontend and climateclaw-client read it (tests/frontend.py) and
    compared with what the thread stored.
    """

    async def call(route: str, *, user: str = "alice", method: str = "GET", raise_error: bool = True, **params: Any):
        headers = {"Authorization": f"token {user}"} if user else {}
        if method == "POST":
            response = await jp_fetch(
                "api",
                "chatbot",
                route,
                method="POST",
                body=json.dumps(params),
                headers=headers,
                raise_error=raise_error,
            )
        else:
            query = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items()}
            response = await jp_fetch("api", "chatbot", route, params=query, headers=headers, raise_error=raise_error)
        if route == "streamresponse" and response.code == 200:
            await check_against_store(call, response.body, user=user, params=params)
        return response

    return call


async def check_against_store(call, body: bytes, *, user: str, params: dict[str, Any]) -> None:
    """The frontend's merged messages of a finished stream are exactly what getthread returns for the turn."""
    thread_id, messages, _ = read_stream(body)
    if str(params.get("store_thread", True)).lower() in ("false", "0"):
        return
    show_tools = str(params.get("show_tools", False)).lower() in ("true", "1")
    stored = json.loads((await call("getthread", user=user, thread_id=thread_id, show_tools=show_tools)).body)
    assert as_stored(messages) == stored_tail(stored)


def body_json(response: Any) -> Any:
    return json.loads(response.body)
