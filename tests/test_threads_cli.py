"""`jupyter freva-gpt threads export|import` as an admin runs it: subprocesses on a real SQLite file and a real
MongoDB wire-protocol server (secantusdb), configured like the server (options and FREVAGPT_* variables)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from freva_gpt_ext import threads_cli
from freva_gpt_ext.storage import SQLiteThreadStore, ThreadInfo
from freva_gpt_ext.storage.mongo import MongoThreadStore
from freva_gpt_ext.variants import Variant
from tests.fake_vault import FakeVault
from tests.mongo_server import MongoServer, unique_database
from tests.server_process import clean_env, free_port

pytestmark = pytest.mark.timeout(300)

# alice's first thread, with the store-only fields (model, feedback, cell_context, kernel) and a code run.
FIRST = [
    Variant(
        "User",
        "plot the ERA5 mean",
        cell_context={"source": "ds = xr.open_dataset(p)", "outputs": "", "notebook_path": "era5.ipynb"},
        kernel={"kind": "notebook", "spec": "python3", "variables": ["ds"]},
    ),
    Variant("Assistant", "Here is the code.", model="fake-text", feedback="good"),
    Variant("Code", '{"code":"print(6*7)"}', id="call_1"),
    Variant("CodeOutput", "42", id="call_1"),
    # Beyond the MongoDB store's image threshold: kept in GridFS there, in line in the file.
    Variant("Image", "iVBORw0KGgo" + "A" * 300_000),
    Variant("Assistant", "The answer is 42. Grüße", model="fake-text"),
]
SECOND = [Variant("User", "hello"), Variant("Assistant", "hi", model="fake-text")]
FORKED = [*SECOND, Variant("User", "and more"), Variant("Assistant", "more", model="fake-text", feedback="bad")]


def threads_command(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jupyter", "freva-gpt", "threads", *args],
        cwd=cwd,
        env=clean_env(cwd / "jupyter", **(env or {})),
        capture_output=True,
        text=True,
        timeout=120,
    )


async def threads(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The command, run while the test's own stores stay usable."""
    return await asyncio.to_thread(threads_command, cwd, *args, env=env)


def sqlite_option(data: Path) -> str:
    return f"--FrevaGPT.data_dir={data}"


def mongo_options(mongo: MongoServer, database: str) -> list[str]:
    return [f"--FrevaGPT.mongodb_uri={mongo.uri}", f"--FrevaGPT.mongodb_database_name={database}"]


async def fill(store: SQLiteThreadStore | MongoThreadStore) -> None:
    """alice: a thread and a fork of bob's; bob: one thread."""
    await store.restore(ThreadInfo("alice1", "alice", "ERA5 mean", 1_700_000_000.25), FIRST)
    await store.restore(ThreadInfo("bob1", "bob", "greeting", 1_700_000_100.5), SECOND)
    await store.restore(ThreadInfo("alice2", "alice", "greeting", 1_700_000_200.75, fork_from_index=2), FORKED)


def records(path: Path) -> dict[str, dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    out = {}
    for line in lines:
        record = json.loads(line)
        out[record["thread_id"]] = record
    assert len(out) == len(lines), "one line per thread"
    return out


def comparable(record: dict[str, Any]) -> dict[str, Any]:
    """A record with its date in milliseconds: MongoDB keeps no finer time."""
    return {**record, "date": round(datetime.fromisoformat(record["date"]).timestamp(), 3)}


async def snapshot(store: SQLiteThreadStore | MongoThreadStore, user: str) -> list[tuple[ThreadInfo, list[Variant]]]:
    infos, _ = await store.list_threads(user, 100, 0)
    return [(info, await store.read(info.thread_id)) for info in infos]


@pytest.fixture
def mongo_database(mongo_server: MongoServer) -> str:
    return unique_database()


async def test_sqlite_to_mongodb_and_back(tmp_path: Path, mongo_server: MongoServer, mongo_database: str) -> None:
    source = SQLiteThreadStore(tmp_path / "laptop" / "threads.sqlite3")
    await fill(source)
    await source.aclose()
    exported = tmp_path / "all.jsonl"
    result = await threads(tmp_path, "export", "--to", str(exported), sqlite_option(tmp_path / "laptop"))
    assert result.returncode == 0, result.stderr
    assert "Exported 3 thread(s) of 2 user(s) from SQLite" in result.stdout
    written = records(exported)
    assert written["alice1"] == {
        "thread_id": "alice1",
        "user_id": "alice",
        "topic": "ERA5 mean",
        "date": "2023-11-14T22:13:20.250000Z",
        "content": [v.to_dict() for v in FIRST],
    }
    assert written["alice2"]["fork_from_index"] == 2
    assert "fork_from_index" not in written["bob1"]

    # Into the hub's MongoDB, configured by the environment as a container would be.
    env = {"FREVAGPT_MONGODB_URI": mongo_server.uri, "FREVAGPT_MONGODB_DATABASE_NAME": mongo_database}
    result = await threads(tmp_path, "import", str(exported), env=env)
    assert result.returncode == 0, result.stderr
    assert "Imported 3 thread(s) into MongoDB" in result.stdout
    hub = MongoThreadStore(mongo_server.uri, mongo_database)
    try:
        alice = await snapshot(hub, "alice")
        assert [(i.thread_id, i.topic, i.fork_from_index) for i, _ in alice] == [
            ("alice2", "greeting", 2),
            ("alice1", "ERA5 mean", None),
        ]
        assert [round(i.updated, 3) for i, _ in alice] == [1_700_000_200.75, 1_700_000_000.25]
        assert [v for _, v in alice] == [FORKED, FIRST]
    finally:
        await hub.aclose()
    # The feedback is where the upstream backend keeps it too.
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_server.uri)
    try:
        feedback = await client[mongo_database]["userfeedback"].find({}, {"_id": 0}).to_list()
        images = await client[mongo_database]["threads.images.files"].count_documents({"metadata.thread_id": "alice1"})
    finally:
        await client.close()
    assert sorted((f["thread_id"], f["user_id"], f["feedback"]) for f in feedback) == [
        ("alice1", "alice", "good"),
        ("alice2", "alice", "bad"),
    ]
    assert images == 1

    # And back to a fresh SQLite store: the same threads as they left.
    back = tmp_path / "back.jsonl"
    result = await threads(tmp_path, "export", "--to", str(back), *mongo_options(mongo_server, mongo_database))
    assert result.returncode == 0, result.stderr
    result = await threads(tmp_path, "import", str(back), sqlite_option(tmp_path / "again"))
    assert result.returncode == 0, result.stderr
    again = tmp_path / "again.jsonl"
    result = await threads(tmp_path, "export", f"--to={again}", sqlite_option(tmp_path / "again"))
    assert result.returncode == 0, result.stderr
    assert {k: comparable(v) for k, v in records(again).items()} == {k: comparable(v) for k, v in written.items()}


async def test_one_user_to_another_name(tmp_path: Path) -> None:
    source = SQLiteThreadStore(tmp_path / "laptop" / "threads.sqlite3")
    await fill(source)
    await source.aclose()
    result = await threads(tmp_path, "export", "--to", "-", "--user", "alice", sqlite_option(tmp_path / "laptop"))
    assert result.returncode == 0, result.stderr
    assert "Exported 2 thread(s) of user 'alice' from SQLite" in result.stderr
    exported = tmp_path / "alice.jsonl"
    exported.write_text(result.stdout, encoding="utf-8")
    assert set(records(exported)) == {"alice1", "alice2"}

    result = await threads(tmp_path, "import", str(exported), "--as-user", "adoe", sqlite_option(tmp_path / "hub"))
    assert result.returncode == 0, result.stderr
    target = SQLiteThreadStore(tmp_path / "hub" / "threads.sqlite3")
    try:
        assert [(i.thread_id, i.user_id) for i, _ in await snapshot(target, "adoe")] == [
            ("alice2", "adoe"),
            ("alice1", "adoe"),
        ]
        assert await target.owners() == ["adoe"]
    finally:
        await target.aclose()


async def test_import_is_idempotent_and_never_takes_another_users_thread(
    tmp_path: Path, mongo_server: MongoServer, mongo_database: str
) -> None:
    source = SQLiteThreadStore(tmp_path / "laptop" / "threads.sqlite3")
    await fill(source)
    await source.aclose()
    exported = tmp_path / "all.jsonl"
    assert (await threads(tmp_path, "export", f"--to={exported}", sqlite_option(tmp_path / "laptop"))).returncode == 0
    options = mongo_options(mongo_server, mongo_database)
    hub = MongoThreadStore(mongo_server.uri, mongo_database)
    try:
        # The hub already has a thread of carol's under one of the file's ids.
        carols = [Variant("User", "carol's own"), Variant("Assistant", "kept")]
        assert await hub.restore(ThreadInfo("alice2", "carol", "mine", 1_800_000_000.0), carols)

        result = await threads(tmp_path, "import", str(exported), *options)
        assert result.returncode == 3, result.stdout + result.stderr
        assert "Imported 2 thread(s) into MongoDB" in result.stdout
        assert "1 skipped (held by another user)" in result.stdout
        assert f"skipped alice2 ({exported}:" in result.stderr
        assert "another user" in result.stderr

        again = await threads(tmp_path, "import", str(exported), *options)
        assert again.returncode == 3, again.stdout + again.stderr
        assert "Imported 0 thread(s)" in again.stdout
        assert "2 already there; 1 skipped" in again.stdout

        assert [(i.thread_id, v) for i, v in await snapshot(hub, "carol")] == [("alice2", carols)]
        assert [(i.thread_id, v) for i, v in await snapshot(hub, "alice")] == [("alice1", FIRST)]
        assert [(i.thread_id, v) for i, v in await snapshot(hub, "bob")] == [("bob1", SECOND)]

        # Given to carol, her id is there already and the others are alice's and bob's.
        mine = await threads(tmp_path, "import", str(exported), "--as-user=carol", *options)
        assert mine.returncode == 3, mine.stdout + mine.stderr
        assert "Imported 0 thread(s) into MongoDB" in mine.stdout
        assert "1 already there; 2 skipped" in mine.stdout
        assert [(i.thread_id, v) for i, v in await snapshot(hub, "carol")] == [("alice2", carols)]
    finally:
        await hub.aclose()


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"user_id": "a", "date": "2024-01-01T00:00:00Z", "content": []}', "'thread_id' must be a non-empty string"),
        (
            '{"thread_id": "a/b", "user_id": "a", "date": "2024-01-01", "content": []}',
            "'thread_id' 'a/b' is not a thread id",
        ),
        ('{"thread_id": "t", "user_id": "a", "date": "yesterday", "content": []}', "'date' is not an RFC 3339 date"),
        ('{"thread_id": "t", "user_id": "a", "date": "2024-01-01", "content": {}}', "'content' must be a list"),
        (
            '{"thread_id": "t", "user_id": "a", "date": "2024-01-01", "content": [{"variant": "Shout", "content": 1}]}',
            "content[0] has an unknown variant 'Shout'",
        ),
        (
            '{"thread_id": "t", "user_id": "a", "date": "2024-01-01", '
            '"content": [{"variant": "User", "content": NaN}]}',
            "NaN is not a JSON number",
        ),
        (
            '{"thread_id": "t", "user_id": "a", "date": "2024-01-01", "fork_from_index": -1, "content": []}',
            "'fork_from_index' must be a whole number, 0 or more",
        ),
        (
            '{"thread_id": "t", "user_id": "a", "date": "2024-01-01", '
            '"content": [{"variant": "User", "content": "q", "cell_context": "print(1)"}]}',
            "content[0]: 'cell_context' must be an object",
        ),
    ],
)
def test_a_bad_file_imports_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, problem: str
) -> None:
    good = json.dumps({"thread_id": "fine", "user_id": "a", "date": "2024-01-01T00:00:00Z", "content": []})
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{good}\n\n{line}\n", encoding="utf-8")
    # In this process (the file is refused before the command reads any configuration): quicker than a command.
    assert threads_cli.main(["import", str(path), sqlite_option(tmp_path / "data")]) == 2
    stderr = capsys.readouterr().err
    assert f"Nothing imported: {path} is not a thread file" in stderr
    assert f"{path}:3: {problem}" in stderr
    assert not (tmp_path / "data").exists()


def test_a_file_that_is_not_there_or_not_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert threads_cli.main(["import", str(tmp_path / "none.jsonl")]) == 2
    assert "No such file or directory" in capsys.readouterr().err
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe{}\n")
    assert threads_cli.main(["import", str(binary)]) == 2
    assert "not UTF-8 text" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args", [[], ["export"], ["export", "--to=x.jsonl", "--user="], ["import"], ["import", "a", "b"], ["copy"]]
)
def test_usage_errors(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        threads_cli.main(args)
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith("usage: jupyter freva-gpt threads")


async def test_a_store_that_cannot_be_reached(tmp_path: Path) -> None:
    # A password in the URI must not be shown.
    uri = f"mongodb://admin:s3cret@127.0.0.1:{free_port()}/"
    result = await threads(tmp_path, "export", "--to", str(tmp_path / "out.jsonl"), f"--FrevaGPT.mongodb_uri={uri}")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Failed:" in result.stderr
    assert "s3cret" not in result.stdout + result.stderr
    assert [name for name in os.listdir(tmp_path) if "out.jsonl" in name] == [], "no file, partial or whole"


async def test_a_vault_deployment_through_its_vault(
    tmp_path: Path, mongo_server: MongoServer, mongo_database: str
) -> None:
    store = MongoThreadStore(mongo_server.uri, mongo_database)
    try:
        await store.restore(ThreadInfo("vaulted", "alice", "kept", 1_700_000_000.0), SECOND)
    finally:
        await store.aclose()
    options = ["--FrevaGPT.trust_proxy_headers=True", f"--FrevaGPT.mongodb_database_name={mongo_database}"]
    result = await threads(tmp_path, "export", "--to=out.jsonl", *options)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "No thread store configured" in result.stderr
    assert "--vault-url" in result.stderr

    vault = FakeVault({"secret": (200, {"mongodb.url": mongo_server.uri})})
    await vault.start()
    try:
        result = await threads(tmp_path, "export", "--to=out.jsonl", f"--vault-url={vault.url('secret')}", *options)
    finally:
        await vault.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    source = f"from MongoDB at {mongo_server.uri}, database {mongo_database!r}"
    assert f"Exported 1 thread(s) of 1 user(s) {source}" in result.stdout
    assert set(records(tmp_path / "out.jsonl")) == {"vaulted"}


async def test_a_vault_url_where_no_vault_is_asked(tmp_path: Path) -> None:
    mistaken = await threads(tmp_path, "export", "--to=out.jsonl", "--vault-url=http://vault.example/")
    assert mistaken.returncode == 1
    assert "--vault-url applies only where the server asks the vault" in mistaken.stderr


def test_the_upstream_shapes_are_read(tmp_path: Path) -> None:
    legacy = {
        "thread_id": "legacy1",
        "user_id": "jdoe",
        "topic": "old",
        "date": "2025-03-01T12:00:00+01:00",
        "content": [
            {"variant": "Prompt", "content": "[...]"},
            {"variant": "ServerHint", "content": '{"thread_id": "legacy1"}'},
            {"variant": "User", "content": "plot"},
            {"variant": "Code", "content": ['{"code": "1+1"}', "call_9"]},
            {"variant": "CodeOutput", "content": ["2", "call_9"]},
            {"variant": "Assistant", "content": "done", "model": "", "feedback": ""},
            {"variant": "StreamEnd", "content": "Generation complete"},
        ],
    }
    path = tmp_path / "legacy.jsonl"
    path.write_text(json.dumps(legacy) + "\n", encoding="utf-8")
    result = threads_command(tmp_path, "import", str(path), sqlite_option(tmp_path / "data"))
    assert result.returncode == 0, result.stdout + result.stderr

    async def stored() -> list[tuple[ThreadInfo, list[Variant]]]:
        store = SQLiteThreadStore(tmp_path / "data" / "threads.sqlite3")
        try:
            return await snapshot(store, "jdoe")
        finally:
            await store.aclose()

    ((info, variants),) = asyncio.run(stored())
    assert info.updated == datetime.fromisoformat("2025-03-01T11:00:00+00:00").timestamp()
    assert variants == [
        Variant("User", "plot"),
        Variant("Code", '{"code": "1+1"}', id="call_9"),
        Variant("CodeOutput", "2", id="call_9"),
        Variant("Assistant", "done"),
    ]
