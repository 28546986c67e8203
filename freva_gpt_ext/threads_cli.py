"""`jupyter freva-gpt threads`: move stored threads between stores (a laptop's SQLite, a hub's MongoDB) and back
them up, through the store the server is configured with (Jupyter config files, the command line, FREVAGPT_*).

    jupyter freva-gpt threads export --to FILE.jsonl [--user NAME] [--FrevaGPT.<option>=<value> ...]
    jupyter freva-gpt threads import FILE.jsonl [--as-user NAME] [--FrevaGPT.<option>=<value> ...]

(`--vault-url URL` where the server asks the Freva vault for its MongoDB: `trust_proxy_headers`, no `mongodb_uri`.)

The file holds one JSON object per line, one line per thread (UTF-8):

    {"thread_id": "...", "user_id": "...", "topic": "...", "date": "2026-05-01T09:30:00.123456Z",
     "fork_from_index": 4, "content": [{"variant": "User", "content": "..."}, ...]}

`date` is the thread's last activity (RFC 3339; without an offset: UTC); `fork_from_index` only for a fork;
`content` the variants as the store holds them, in order, with the store-only `model` and `feedback` and
images in line (`Code`/`CodeOutput`/`CodeError` are read in the upstream backend's list forms too; a `ServerHint`,
`StreamEnd` or `Prompt` is left out, as the stores leave them out).

An import is idempotent by thread id: a thread the target holds for the same user is left as it is; one it holds
for another user is skipped, never overwritten, and reported. A malformed file is refused before anything is
written. Exit status: 0 done; 1 the configuration or the store failed (run the import again: what was imported
is skipped); 2 a bad command line or file, nothing done; 3 imported, but ids held by another user were skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from .app import FrevaGPT
from .core.service import Refused
from .core.stores import VAULT_HEADER, ThreadStores
from .doctor import configured
from .storage import SQLiteThreadStore, StoreError
from .storage.base import PortableThreadStore, ThreadInfo
from .variants import (
    ASSISTANT,
    CODE,
    CODE_ERROR,
    CODE_OUTPUT,
    IMAGE,
    OPENAI_ERROR,
    SERVER_ERROR,
    THREAD_ID_RE,
    TOOL_CALL,
    TOOL_OUTPUT,
    UNSTORED_VARIANTS,
    USER,
    Variant,
    from_stored_thread,
)

DONE, FAILED, BAD_INPUT, SKIPPED = 0, 1, 2, 3
STORED_VARIANTS = frozenset(
    {USER, ASSISTANT, CODE, CODE_OUTPUT, CODE_ERROR, IMAGE, TOOL_CALL, TOOL_OUTPUT, SERVER_ERROR, OPENAI_ERROR}
)
_OPTIONAL_TEXT = ("id", "tool_name", "model", "feedback")
# A bad file is reported with this many of its problems, not thousands.
_SHOWN_PROBLEMS = 10
# Every thread of a user in one listing: one consistent snapshot (listings carry no content).
_ALL = 2**62


class BadLine(ValueError):
    """A line of the file that is not a thread."""


@dataclass(slots=True)
class Record:
    info: ThreadInfo
    variants: list[Variant]


def thread_line(info: ThreadInfo, variants: list[Variant]) -> str:
    record: dict[str, Any] = {
        "thread_id": info.thread_id,
        "user_id": info.user_id,
        "topic": info.topic,
        "date": info.listing()["date"],
    }
    if info.fork_from_index is not None:
        record["fork_from_index"] = info.fork_from_index
    record["content"] = [v.to_dict() for v in variants]
    return json.dumps(record, ensure_ascii=False) + "\n"


def _no_constant(name: str) -> Any:
    raise BadLine(f"{name} is not a JSON number")


def _text(record: dict[str, Any], key: str, *, empty: bool = False) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not (empty or value):
        raise BadLine(f"{key!r} must be a {'' if empty else 'non-empty '}string, not {value!r:.60}")
    return value


def _date(record: dict[str, Any]) -> float:
    text = _text(record, "date")
    try:
        date = datetime.fromisoformat(text)
    except ValueError:
        raise BadLine(f"'date' is not an RFC 3339 date: {text!r:.60}") from None
    return (date if date.tzinfo else date.replace(tzinfo=UTC)).timestamp()


def _check_variant(item: Any, index: int) -> None:
    where = f"content[{index}]"
    if not isinstance(item, dict):
        raise BadLine(f"{where} is not an object")
    name = item.get("variant")
    if not isinstance(name, str) or name not in STORED_VARIANTS | UNSTORED_VARIANTS:
        raise BadLine(f"{where} has an unknown variant {name!r:.60}")
    if "content" not in item:
        raise BadLine(f"{where} has no 'content'")
    for key in _OPTIONAL_TEXT:
        if item.get(key) is not None and not isinstance(item[key], str):
            raise BadLine(f"{where}: {key!r} must be a string")
    for key in ("cell_context", "kernel"):
        if item.get(key) is not None and not isinstance(item[key], dict):
            raise BadLine(f"{where}: {key!r} must be an object")


def parse_line(line: str) -> Record:
    try:
        record = json.loads(line, parse_constant=_no_constant)
    except json.JSONDecodeError as err:
        raise BadLine(f"not JSON ({err})") from None
    if not isinstance(record, dict):
        raise BadLine("not a JSON object")
    thread_id = _text(record, "thread_id")
    if not THREAD_ID_RE.fullmatch(thread_id):
        raise BadLine(f"'thread_id' {thread_id!r:.80} is not a thread id (1 to 64 of A-Z a-z 0-9 _ -)")
    fork_from_index = record.get("fork_from_index")
    if fork_from_index is not None and (type(fork_from_index) is not int or fork_from_index < 0):
        raise BadLine(f"'fork_from_index' must be a whole number, 0 or more, not {fork_from_index!r:.60}")
    content = record.get("content")
    if not isinstance(content, list):
        raise BadLine("'content' must be a list of variants")
    for index, item in enumerate(content):
        _check_variant(item, index)
    info = ThreadInfo(
        thread_id,
        _text(record, "user_id"),
        _text(record, "topic", empty=True) if "topic" in record else "",
        _date(record),
        fork_from_index,
    )
    return Record(info, from_stored_thread(content))


def lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of each non-blank line of the file."""
    with path.open(encoding="utf-8", newline="\n") as file:
        for number, line in enumerate(file, 1):
            if line.strip():
                yield number, line


def check_file(path: Path) -> list[str]:
    """Every problem of the file, found before anything is written."""
    problems: list[str] = []
    try:
        for number, line in lines(path):
            try:
                parse_line(line)
            except BadLine as err:
                problems.append(f"{path}:{number}: {err}")
    except UnicodeDecodeError as err:
        problems.append(f"{path}: not UTF-8 text ({err.reason} at byte {err.start} of a block)")
    except OSError as err:
        problems.append(f"{path}: {err.strerror or err}")
    return problems


# -- the store ----------------------------------------------------------------------------------------------


class Setup(Exception):
    """The store cannot be opened as configured."""


@dataclass(slots=True)
class Stores:
    """The thread stores of a server started with the same configuration, and the request headers that choose
    one of them."""

    app: FrevaGPT
    stores: ThreadStores
    headers: dict[str, str]


def configured_stores(argv: list[str], vault_url: str) -> Stores:
    try:
        app, _ = configured(argv)
    except Exception as err:  # traitlets: an unknown or malformed option
        raise Setup(f"the command line: {err}") from err
    problem = app.configuration_problem()
    if problem:
        raise Setup(f"the configuration: {problem}")
    if vault_url and (app.mongodb_uri or not app.trust_proxy_headers):
        raise Setup("--vault-url applies only where the server asks the vault (trust_proxy_headers, no mongodb_uri)")
    try:
        stores = app._thread_stores(Path(app.data_dir).expanduser())
    except StoreError as err:
        raise Setup(str(err)) from err
    return Stores(app, stores, {VAULT_HEADER: vault_url} if vault_url else {})


@contextlib.asynccontextmanager
async def opened(configured: Stores) -> AsyncIterator[tuple[PortableThreadStore, str]]:
    """The store the server keeps threads in, and a line that names it; every store is closed after."""
    app, stores = configured.app, configured.stores
    try:
        try:
            store = await stores.store_for(configured.headers)
        except Refused as err:
            hint = " (give the vault with --vault-url)" if stores.vault is not None and not configured.headers else ""
            raise Setup(f"{err.detail}{hint}") from err
        if not isinstance(store, PortableThreadStore):
            raise Setup(f"threads cannot be moved in or out of a {type(store).__name__}")
        if isinstance(store, SQLiteThreadStore):
            where = f"SQLite at {store.path}"
        else:
            from .storage.mongo import MongoThreadStore  # pymongo is imported only where MongoDB is used

            assert isinstance(store, MongoThreadStore)
            await store.ensure_indexes()  # as the server does at its start
            where = (
                f"MongoDB at {store.shown_uri}, database {app.mongodb_database_name!r}, "
                f"collection {app.mongodb_collection_name!r}"
            )
        yield store, where
    finally:
        await stores.aclose()


# -- export -------------------------------------------------------------------------------------------------


async def export(configured: Stores, out: IO[str], user: str | None) -> str:
    """Write the threads of `user` (or of everyone) to `out`; what was written."""
    async with opened(configured) as (store, where):
        users = [user] if user is not None else await store.owners()
        threads = 0
        for owner in users:
            infos, _ = await store.list_threads(owner, _ALL, 0)
            for info in infos:
                out.write(thread_line(info, await store.read(info.thread_id)))
                threads += 1
    whose = f"user {user!r}" if user is not None else f"{len(users)} user(s)"
    return f"Exported {threads} thread(s) of {whose} from {where}"


def export_command(argv: list[str], to: str, user: str | None, vault_url: str) -> int:
    if to == "-":
        done = asyncio.run(export(configured_stores(argv, vault_url), sys.stdout, user))
        print(f"{done}.", file=sys.stderr, flush=True)
        return DONE
    target = Path(to)
    # Written aside and renamed when complete: a failed export leaves no partial file that looks like a backup.
    handle, partial = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with open(handle, "w", encoding="utf-8", newline="\n") as out:
            done = asyncio.run(export(configured_stores(argv, vault_url), out, user))
        os.replace(partial, target)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    print(f"{done} to {to}.", flush=True)
    return DONE


# -- import -------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Imported:
    added: int = 0
    present: int = 0
    skipped: int = 0


async def import_threads(configured: Stores, path: Path, as_user: str | None) -> Imported:
    """Add the threads of the file (checked before) to the store; the summary is said even when it fails."""
    counts = Imported()
    async with opened(configured) as (store, where):
        try:
            for number, line in lines(path):
                try:
                    record = parse_line(line)
                except BadLine as err:  # the file changed since it was checked
                    raise BadLine(f"{path}:{number}: {err}") from None
                await import_thread(store, record, as_user, f"{path}:{number}", counts)
        finally:
            print(
                f"Imported {counts.added} thread(s) into {where}; {counts.present} already there; "
                f"{counts.skipped} skipped (held by another user).",
                flush=True,
            )
    return counts


async def import_thread(
    store: PortableThreadStore, record: Record, as_user: str | None, where: str, counts: Imported
) -> None:
    info = record.info
    if as_user is not None:
        info.user_id = as_user
    if await store.restore(info, record.variants):
        counts.added += 1
        return
    held = await store.info(info.thread_id)
    if held is not None and held.user_id != info.user_id:
        counts.skipped += 1
        print(
            f"skipped {info.thread_id} ({where}): the store holds this thread id for another user",
            file=sys.stderr,
            flush=True,
        )
    else:
        counts.present += 1


def import_command(argv: list[str], path: Path, as_user: str | None, vault_url: str) -> int:
    problems = check_file(path)
    if problems:
        shown = problems[:_SHOWN_PROBLEMS]
        more = len(problems) - len(shown)
        print(f"Nothing imported: {path} is not a thread file (one JSON object per line).", file=sys.stderr)
        print("\n".join(shown) + (f"\n... and {more} more" if more else ""), file=sys.stderr, flush=True)
        return BAD_INPUT
    counts = asyncio.run(import_threads(configured_stores(argv, vault_url), path, as_user))
    return SKIPPED if counts.skipped else DONE


# -- the command --------------------------------------------------------------------------------------------


def command_line() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jupyter freva-gpt threads",
        description="Export or import stored threads (JSON Lines, one thread per line) through the store the "
        "server is configured with. Other arguments (--FrevaGPT.<option>=<value>) are read as the server reads them.",
        allow_abbrev=False,
    )
    vault = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    vault.add_argument(
        "--vault-url",
        default="",
        metavar="URL",
        help="the vault that names the MongoDB, as the Freva nginx sends it in X-Freva-Vault-URL (only where "
        "the server is configured so: trust_proxy_headers without mongodb_uri)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    exporting = commands.add_parser(
        "export",
        parents=[vault],
        allow_abbrev=False,
        help="write threads to a file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    exporting.add_argument("--to", required=True, metavar="FILE.jsonl", help="the file to write ('-': stdout)")
    exporting.add_argument("--user", metavar="NAME", help="only the threads of this user (default: everyone's)")
    importing = commands.add_parser(
        "import",
        parents=[vault],
        allow_abbrev=False,
        help="add the threads of a file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    importing.add_argument("file", metavar="FILE.jsonl", type=Path)
    importing.add_argument("--as-user", metavar="NAME", help="give every thread of the file to this user")
    return parser


def main(argv: list[str]) -> int:
    command = command_line()
    known, rest = command.parse_known_args(argv)
    for name in ("user", "as_user"):
        if getattr(known, name, None) == "":
            command.error(f"--{name.replace('_', '-')} needs a user name")
    stray = [arg for arg in rest if not arg.startswith("--")]
    if stray:
        command.error(f"unexpected argument(s): {' '.join(stray)}")
    try:
        if known.command == "export":
            return export_command(rest, known.to, known.user, known.vault_url)
        return import_command(rest, known.file, known.as_user, known.vault_url)
    except Setup as err:
        print(f"Cannot open the thread store: {err}", file=sys.stderr, flush=True)
        return FAILED
    except (StoreError, OSError, BadLine) as err:
        print(f"Failed: {err}", file=sys.stderr, flush=True)
        return FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
