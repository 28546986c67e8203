"""Real server processes (TESTING.md: `jp_serverapp` cannot be restarted): restart, the standalone command,
the JUPYTERHUB_USER owner rule and configuration from the environment.

Each server is `python -m jupyter server` / `python -m jupyter freva-gpt` on a free port with a random token and
private Jupyter dirs; the LLM is `python -m tests.fake_llm` as a child process too. Clients are httpx.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from freva_gpt_ext import __version__
from tests.conftest import parse_lines
from tests.fake_llm import catalogue_yaml
from tests.server_process import FakeLLMProcess, ServerProcess, free_port

# A server boots in a few seconds here (most of it imports); allow for a loaded machine.
pytestmark = pytest.mark.timeout(300)
READY_TIMEOUT = 90.0


@pytest.fixture(scope="module")
def llm_process() -> Iterator[FakeLLMProcess]:
    with FakeLLMProcess() as llm:
        yield llm


@pytest.fixture(scope="module")
def catalogue_file(tmp_path_factory: pytest.TempPathFactory, llm_process: FakeLLMProcess) -> Path:
    path = tmp_path_factory.mktemp("catalogue") / "models.yaml"
    path.write_text(catalogue_yaml(llm_process.base_url))
    return path


def chat_models(catalogue: Path) -> list[str]:
    entries = yaml.safe_load(catalogue.read_text())["model_list"]
    return [e["model_name"] for e in entries if (e.get("model_info") or {}).get("mode") != "embedding"]


def options(catalogue: Path | None = None, data_dir: Path | None = None, *extra: str) -> list[str]:
    args = ["--FrevaGPT.heartbeat_interval=0.5", "--FrevaGPT.llm_read_timeout=20"]
    if catalogue is not None:
        args.append(f"--FrevaGPT.litellm_config={catalogue}")
    if data_dir is not None:
        args.append(f"--FrevaGPT.data_dir={data_dir}")
    return [*args, *extra]


def server(workdir: Path, args: list[str], **kwargs: Any) -> ServerProcess:
    return ServerProcess(workdir, args=args, ready_timeout=READY_TIMEOUT, **kwargs)


def stream(client: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    response = client.post("api/chatbot/streamresponse", json=params)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/x-ndjson"
    lines = parse_lines(response.content)
    assert lines[0]["variant"] == "ServerHint", lines
    assert lines[-1]["variant"] == "StreamEnd", lines
    assert not [line for line in lines if line["variant"] == "ServerError"], lines
    return lines


def assistant_text(lines: list[dict[str, Any]]) -> str:
    return "".join(line["content"] for line in lines if line["variant"] == "Assistant")


def listing(client: httpx.Client) -> list[dict[str, Any]]:
    response = client.get("api/chatbot/getuserthreads")
    assert response.status_code == 200, response.text
    threads, total = response.json()
    assert total == len(threads)
    return threads


def assert_detail(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"detail"}, body
    return body["detail"]


def test_threads_survive_a_restart(tmp_path: Path, catalogue_file: Path) -> None:
    data = tmp_path / "shared-data"
    args = options(catalogue_file, data, "--FrevaGPT.owner=tester")
    first = server(tmp_path / "first", args, base_url="/jh/")
    with first, first.client() as client:
        lines = stream(client, input="Where is ERA5 stored?", chatbot="fake-text")
        thread_id = lines[0]["content"]["thread_id"]
        answer = assistant_text(lines)
        assert answer.endswith("Where is ERA5 stored?")
    assert first.returncode == 0, first.log()

    # A new process with other Jupyter dirs and another port, on the same data dir.
    second = server(tmp_path / "second", args, base_url="/jh/")
    with second, second.client() as client:
        threads = listing(client)
        assert [(t["thread_id"], t["user_id"]) for t in threads] == [(thread_id, "tester")]
        assert threads[0]["topic"]
        stored = client.get("api/chatbot/getthread", params={"thread_id": thread_id})
        assert stored.status_code == 200, stored.text
        assert stored.json() == [
            {"variant": "User", "content": "Where is ERA5 stored?"},
            {"variant": "Assistant", "content": answer, "model": "fake-text"},
        ]
        # The conversation goes on in the new process.
        more = stream(client, input="And CMIP6?", thread_id=thread_id, chatbot="fake-text")
        assert more[0]["content"]["thread_id"] == thread_id
        stored = client.get("api/chatbot/getthread", params={"thread_id": thread_id}).json()
        assert [v["variant"] for v in stored] == ["User", "Assistant", "User", "Assistant"]
    assert second.returncode == 0, second.log()


def test_standalone_command(tmp_path: Path, catalogue_file: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    prod_options = options(catalogue_file, tmp_path / "prod-data", f"--FrevaGPT.rest_url={closed}")
    prod = server(tmp_path / "prod", prod_options, standalone=True)
    dev = server(
        tmp_path / "dev", options(catalogue_file, tmp_path / "dev-data", "--FrevaGPT.dev=True"), standalone=True
    )
    with contextlib.ExitStack() as stack:
        for proc in (prod, dev):  # boot side by side; both are stopped whatever happens
            stack.callback(proc.stop)
            proc.start()
        prod.wait_ready()
        dev.wait_ready()

        with prod.client(token=False) as anonymous:
            ping = anonymous.get("api/chatbot/ping")
            assert ping.status_code == 200
            assert ping.json() == {"status": "ok", "version": __version__}
            refused = anonymous.get("api/chatbot/availablechatbots")
            assert_detail(refused, 401)
            assert refused.headers.get("WWW-Authenticate", "").lower().startswith("bearer")
            assert_detail(anonymous.post("api/chatbot/streamresponse", json={"input": "hi"}), 401)
            # The Jupyter token is no credential here: only freva-rest bearer tokens are.
            assert_detail(
                anonymous.get("api/chatbot/availablechatbots", headers={"Authorization": f"token {prod.token}"}), 422
            )
            # A bearer token is checked against the (unreachable) auth server.
            assert_detail(anonymous.get("api/chatbot/availablechatbots", headers={"Authorization": "Bearer abc"}), 503)

        with dev.client(token=False) as anonymous:
            assert anonymous.get("api/chatbot/ping").status_code == 200
            models = anonymous.get("api/chatbot/availablechatbots")
            assert models.status_code == 200, models.text
            assert models.json() == chat_models(catalogue_file)
            spec = anonymous.get("api/chatbot/openapi.json")
            assert spec.status_code == 200, spec.text
            assert spec.json()["info"]["version"] == __version__
            assert {"/api/chatbot/streamresponse", "/api/chatbot/getuserthreads"} <= set(spec.json()["paths"])
            lines = stream(anonymous, input="hello", chatbot="fake-text")
            assert [(t["thread_id"], t["user_id"]) for t in listing(anonymous)] == [
                (lines[0]["content"]["thread_id"], "dev")
            ]

        with prod.client(token=False) as anonymous:
            # The server's root leads to the API docs (there is no JupyterLab in the standalone server).
            home = anonymous.get("", follow_redirects=False)
            assert home.status_code in (301, 302), home.text
            assert urlsplit(home.headers["Location"]).path.endswith("/api/chatbot/docs"), home.headers["Location"]
    assert prod.returncode == 0, prod.log()
    assert dev.returncode == 0, dev.log()


def test_standalone_accepts_the_options_it_presets(tmp_path: Path, catalogue_file: Path) -> None:
    """`jupyter freva-gpt` presets some ServerApp options; giving one again on its command line must work,
    as it does for `jupyter server`: people and scripts pass `--ServerApp.open_browser=False` by habit."""
    args = options(catalogue_file, tmp_path / "data", "--ServerApp.open_browser=False")
    standalone = server(tmp_path / "opts", args, standalone=True)
    with standalone, standalone.client(token=False) as anonymous:
        # Still the standalone bearer identity.
        assert_detail(anonymous.get("api/chatbot/availablechatbots"), 401)
    assert standalone.returncode == 0, standalone.log()


def test_jupyterhub_user_owns_the_threads(tmp_path: Path, catalogue_file: Path) -> None:
    hub = server(
        tmp_path / "hub",
        options(catalogue_file, tmp_path / "data", "--FrevaGPT.owner=other"),
        env={"JUPYTERHUB_USER": "hubuser"},
    )
    with hub, hub.client() as client:
        lines = stream(client, input="whose thread?", chatbot="fake-text")
        thread_id = lines[0]["content"]["thread_id"]
        # A second token request (another random jupyter user) sees it as its own.
        assert [(t["thread_id"], t["user_id"]) for t in listing(client)] == [(thread_id, "hubuser")]


def test_configuration_from_the_environment(tmp_path: Path, catalogue_file: Path) -> None:
    data = tmp_path / "env-data"
    env = {
        "FREVAGPT_LITELLM_CONFIG": str(catalogue_file),
        "FREVAGPT_DATA_DIR": str(data),
        "FREVAGPT_DEFAULT_MODEL": "fake-text",
    }
    # Explicit configuration beats the environment.
    configured = server(tmp_path / "env", options(None, None, "--FrevaGPT.default_model=fake-slow"), env=env)
    with configured, configured.client() as client:
        models = client.get("api/chatbot/availablechatbots")
        assert models.status_code == 200, models.text
        assert models.json() == chat_models(catalogue_file)  # catalogue order, whatever the default
        lines = stream(client, input="which model?")
        assert lines[0]["content"]["model"] == "fake-slow"
        assert assistant_text(lines).endswith("which model?")
        assert [f for f in data.iterdir() if f.is_file()], "the thread database lives in FREVAGPT_DATA_DIR"
        assert not (tmp_path / "env" / "jupyter" / "data" / "freva_gpt").exists(), "not in the default data dir"
