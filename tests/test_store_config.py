"""Choosing the thread store: the MongoDB settings and their environment names (the upstream backend's too), the
log line that says which name gave the URI, a server that starts while MongoDB is down, `doctor`'s store lines, and
routes with a trailing slash (real servers: in-process for the routes, processes for start-up and doctor)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from traitlets import TraitError

from freva_gpt_ext.app import FrevaGPT
from tests.conftest import body_json, parse_lines
from tests.fake_llm import catalogue_yaml
from tests.mongo_server import MongoServer, unique_database
from tests.server_process import FakeLLMProcess, ServerProcess, clean_env, free_port

ALICE = {"Authorization": "token alice"}
PASSWORD = "s3cret-pw-4711"


# -- settings -----------------------------------------------------------------------------------------------------
def configured() -> FrevaGPT:
    """FrevaGPT's settings as the server reads them from the environment (no Jupyter configuration)."""
    app = FrevaGPT()
    app._apply_environment()
    return app


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """The test's process environment without FrevaGPT variables of its own."""
    for name in [n for n in os.environ if n.startswith("FREVAGPT_")]:
        monkeypatch.delenv(name)
    yield monkeypatch


def test_mongodb_settings_default_to_the_upstream_names(environment: pytest.MonkeyPatch) -> None:
    app = configured()
    assert (app.mongodb_uri, app.mongodb_database_name, app.mongodb_collection_name) == ("", "chatbot", "threads")
    assert (app.mongodb_write_concern, app.mongodb_image_threshold, app.vault_cache_ttl) == ("1", 262144, 300.0)


@pytest.mark.parametrize("var", ["FREVAGPT_MONGODB_URI", "FREVAGPT_MONGO_DB_URI", "FREVAGPT_MONGODB_URI_DEV"])
def test_each_name_of_the_uri_is_read_and_named_as_its_source(environment: pytest.MonkeyPatch, var: str) -> None:
    environment.setenv(var, "mongodb://db.example:27017/")
    app = configured()
    assert app.mongodb_uri == "mongodb://db.example:27017/"
    assert app._source("mongodb_uri") == f"${var}"


def test_our_own_names_win_over_the_upstream_ones(environment: pytest.MonkeyPatch) -> None:
    environment.setenv("FREVAGPT_MONGO_DB_URI", "mongodb://upstream/")
    environment.setenv("FREVAGPT_MONGODB_URI", "mongodb://ours/")
    environment.setenv("FREVAGPT_MONGO_DB_DATABASE_NAME", "upstream_db")
    environment.setenv("FREVAGPT_MONGO_DB_COLLECTION_NAME", "upstream_threads")
    app = configured()
    assert app.mongodb_uri == "mongodb://ours/"
    assert (app.mongodb_database_name, app.mongodb_collection_name) == ("upstream_db", "upstream_threads")
    environment.setenv("FREVAGPT_MONGODB_DATABASE_NAME", "ours_db")
    assert configured().mongodb_database_name == "ours_db"


@pytest.mark.parametrize(("given", "kept"), [("1", "1"), (" 2 ", "2"), ("majority", "majority")])
def test_write_concern_takes_a_count_or_a_tag(given: str, kept: str) -> None:
    assert FrevaGPT(mongodb_write_concern=given).mongodb_write_concern == kept


@pytest.mark.parametrize("given", ["0", "-1", " "])
def test_write_concern_never_lets_a_line_out_before_it_is_stored(given: str) -> None:
    with pytest.raises(TraitError, match="mongodb_write_concern must be a number of members, 1 or more"):
        FrevaGPT(mongodb_write_concern=given)


def test_vault_cache_ttl_is_bounded() -> None:
    with pytest.raises(TraitError, match="vault_cache_ttl must be 0 or more"):
        FrevaGPT(vault_cache_ttl=-1.0)
    assert FrevaGPT(vault_cache_ttl=0.0).vault_cache_ttl == 0.0


def test_a_uri_is_shown_without_any_of_its_credentials() -> None:
    """Also a replica set's list of hosts, and a secret in the query (the log and doctor show `shown_uri`)."""
    uri = "mongodb://freva:pw-4711@db1:27017,db2:27017/?tlsCertificateKeyFilePassword=keypw-0815&replicaSet=rs0"
    store = FrevaGPT().mongodb_store(uri)
    assert store.shown_uri == "mongodb://db1:27017,db2:27017/?tlsCertificateKeyFilePassword=***&replicaSet=rs0"


# -- start-up and doctor: real processes ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLMProcess]:
    with FakeLLMProcess() as process:
        yield process


@pytest.fixture
def catalogue_file(tmp_path: Path, llm: FakeLLMProcess) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(catalogue_yaml(llm.base_url))
    return path


def down_uri() -> str:
    """A MongoDB URI with credentials at a port where nothing listens."""
    return f"mongodb://frevauser:{PASSWORD}@127.0.0.1:{free_port()}/"


@pytest.mark.timeout(300)
def test_the_server_starts_while_mongodb_is_down_and_says_where_the_uri_came_from(
    tmp_path: Path, catalogue_file: Path
) -> None:
    server = ServerProcess(
        tmp_path,
        args=["--FrevaGPT.dev=True"],
        env={"FREVAGPT_LITELLM_CONFIG": str(catalogue_file), "FREVAGPT_MONGO_DB_URI": down_uri()},
        standalone=True,
    )
    with server, server.client(token=False) as http:
        assert http.get("api/chatbot/ping").json()["status"] == "ok"
        assert http.get("api/chatbot/availablechatbots").status_code == 200
        listing = http.get("api/chatbot/getuserthreads")
        assert listing.status_code == 503, listing.text
        detail = listing.json()["detail"]
        assert detail.startswith("The thread store failed"), detail
        assert PASSWORD not in detail
    log = server.log(200_000)
    assert re.search(r"threads in MongoDB at mongodb://127\.0\.0\.1:\d+/, database 'chatbot'", log), log
    assert "(the URI from $FREVAGPT_MONGO_DB_URI)" in log, log
    assert PASSWORD not in log
    # Nothing went to the embedded store instead.
    assert not list(tmp_path.rglob("threads.sqlite3"))


@pytest.mark.timeout(300)
def test_a_server_started_before_mongodb_makes_its_indexes_once_mongodb_answers(
    tmp_path: Path, catalogue_file: Path
) -> None:
    """The indexes are made in the background from the start (in-process test servers never run that hook)."""
    mongo = MongoServer()  # its port, not started yet
    database = unique_database()
    server = ServerProcess(
        tmp_path,
        args=["--FrevaGPT.dev=True", f"--FrevaGPT.mongodb_database_name={database}"],
        env={"FREVAGPT_LITELLM_CONFIG": str(catalogue_file), "FREVAGPT_MONGODB_URI": mongo.uri},
        standalone=True,
    )
    try:
        with server, server.client(token=False) as http:
            deadline = time.monotonic() + 120
            while "indexes not created" not in server.log(200_000):
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.2)
            mongo.start()
            with MongoClient(mongo.uri, serverSelectionTimeoutMS=5000) as client:
                while "thread_id_1" not in client[database]["threads"].index_information():
                    assert time.monotonic() < deadline, server.log()
                    time.sleep(0.2)
                assert {"thread_id_1", "user_id_1_date_-1"} <= set(client[database]["threads"].index_information())
            turn = {"input": "now with MongoDB", "chatbot": "fake-text"}
            response = http.post("api/chatbot/streamresponse", json=turn)
            assert parse_lines(response.content)[-1] == {"variant": "StreamEnd", "content": "Stream ended."}
    finally:
        mongo.stop()


def doctor(tmp_path: Path, catalogue: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    options = [f"--FrevaGPT.data_dir={tmp_path / 'data'}", f"--FrevaGPT.kernel_root={tmp_path / 'kernels'}"]
    return subprocess.run(
        [sys.executable, "-m", "jupyter", "freva-gpt", "doctor", *options, *args],
        cwd=tmp_path,
        env=clean_env(tmp_path / "jupyter", FREVAGPT_LITELLM_CONFIG=str(catalogue), **env),
        capture_output=True,
        text=True,
        timeout=240,
    )


def store_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stdout.splitlines() if re.match(r"\S+\s+store", line)]


@pytest.mark.timeout(300)
def test_doctor_checks_the_mongodb_store(tmp_path: Path, catalogue_file: Path, mongo_server: MongoServer) -> None:
    database = unique_database()
    result = doctor(
        tmp_path, catalogue_file, f"--FrevaGPT.mongodb_database_name={database}", FREVAGPT_MONGODB_URI=mongo_server.uri
    )
    lines = store_lines(result)
    assert lines[0] == (
        f"ok    store: MongoDB at {mongo_server.uri} (from $FREVAGPT_MONGODB_URI), database {database!r}, "
        "collection 'threads': reachable"
    ), result.stdout
    assert any(line.startswith(("ok    store indexes:", "WARN  store indexes:")) for line in lines), lines
    assert "ok    store write test: a test document was written and removed" in lines, lines
    assert not (tmp_path / "data" / "threads.sqlite3").exists()


@pytest.mark.timeout(300)
def test_doctor_fails_a_mongodb_it_cannot_reach_without_showing_the_password(
    tmp_path: Path, catalogue_file: Path
) -> None:
    result = doctor(tmp_path, catalogue_file, FREVAGPT_MONGO_DB_URI=down_uri())
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = [line for line in store_lines(result) if line.startswith("FAIL")]
    assert line.startswith("FAIL  store: MongoDB at mongodb://127.0.0.1:"), line
    assert "(from $FREVAGPT_MONGO_DB_URI)" in line and ": unreachable: " in line, line
    assert PASSWORD not in result.stdout + result.stderr


@pytest.mark.timeout(300)
def test_doctor_names_the_vault_when_the_proxy_chooses_the_store(tmp_path: Path, catalogue_file: Path) -> None:
    result = doctor(tmp_path, catalogue_file, FREVAGPT_TRUST_PROXY_HEADERS="true")
    (line,) = store_lines(result)
    assert line.startswith("ok    store: MongoDB, per request where the proxy's X-Freva-Vault-URL header points"), line


# -- trailing slashes: the real server's routing ----------------------------------------------------------------------
@pytest.fixture
def fetch(http_server_client, jp_base_url, jp_serverapp):
    """A request to exactly this path under the chatbot API, redirects not followed."""

    async def call(path: str, *, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None):
        return await http_server_client.fetch(
            f"{jp_base_url}api/chatbot/{path}",
            method=method,
            body=None if body is None else json.dumps(body),
            headers={**ALICE, **(headers or {})},
            follow_redirects=False,
            raise_error=False,
            request_timeout=60,
        )

    return call


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("route", ["ping", "help", "openapi.json", "availablechatbots", "newthread", "getuserthreads"])
async def test_a_route_with_a_trailing_slash_answers_like_without_it(fetch, route: str, method: str) -> None:
    body = {} if method == "POST" else None
    plain = await fetch(route, method=method, body=body)
    slashed = await fetch(route + "/", method=method, body=body)
    assert plain.code == 200, plain.body
    assert slashed.code == 200, (slashed.code, slashed.headers.get("Location"), slashed.body)
    assert slashed.headers["Content-Type"] == plain.headers["Content-Type"]
    if route != "newthread":  # a fresh id each time
        assert body_json(slashed) == body_json(plain)


async def test_a_post_with_a_trailing_slash_keeps_its_body(fetch) -> None:
    response = await fetch("streamresponse/", method="POST", body={"input": "slash and body", "chatbot": "fake-text"})
    assert response.code == 200, response.body
    lines = parse_lines(response.body)
    assert lines[-1] == {"variant": "StreamEnd", "content": "Stream ended."}
    thread_id = lines[0]["content"]["thread_id"]
    stored = await fetch("getthread/", method="POST", body={"thread_id": thread_id})
    assert [v["content"] for v in body_json(stored) if v["variant"] == "User"] == ["slash and body"]
    topic = await fetch("setthreadtopic/", method="POST", body={"thread_id": thread_id, "topic": "slashed"})
    assert body_json(topic) == {"detail": "Topic updated."}
    [threads, _] = body_json(await fetch("getuserthreads/"))
    assert [t["topic"] for t in threads if t["thread_id"] == thread_id] == ["slashed"]


async def test_unknown_routes_stay_unknown_with_or_without_a_slash(fetch) -> None:
    for path in ("nosuchroute", "nosuchroute/", "ping//", "ping/x"):
        response = await fetch(path)
        assert response.code == 404, (path, response.code)
        assert body_json(response)["detail"].startswith("Unknown route"), path
