"""The thread stores side by side, in one run: the same load on SQLite, MongoDB and memory.

Run from the repository root: ``.venv/bin/python bench/bench_stores.py`` (``--store`` picks some, ``--help`` for
the sizes). About 4.5 minutes on a 2-core machine.

Each store gets a fresh fake LLM and Jupyter server (the helpers of bench_stream.py and bench_turns.py):
- ``sqlite``: the embedded store in the server's data dir;
- ``mongodb``: secantusdb (tests/mongo_server.py: a MongoDB wire-protocol server written in Python, in memory),
  started by this script on the same machine, the server run with ``--FrevaGPT.mongodb_uri``;
- ``memory``: ``store_thread=false`` turns (such threads are never listed nor read back: no route figures).

Before its server starts, the store is seeded through its own class (bench_turns.seed: ``--threads`` threads of
the owner and one of ``--variants`` variants; MongoDB gets its indexes first). Then, per store: p50 latency and
server CPU of ``getuserthreads`` and of ``getthread`` of the big thread, server CPU per token of long answers at
full speed (one at a time, in one thread), and ``--streams`` concurrent new-thread streams at 50 tokens/s (time to
the first line; server CPU per streamed token). CPU figures are per process: the server's excludes secantusdb's,
shown apart. The last column is MongoDB / SQLite (the goal: within 2x; secantusdb is no mongod, so this is a
bound on the store's own cost, not a prediction for a real MongoDB).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from bench_stream import Long, cpu_clock, long_turns, pct, settle
from bench_turns import Burst, Route, bursts, routes, seed, servers

from freva_gpt_ext.storage import MongoThreadStore, SQLiteThreadStore
from tests.mongo_server import MongoServer

STORES = ("sqlite", "mongodb", "memory")
DATABASE = "bench"
GOAL_RATIO = 2.0


@dataclass
class Figures:
    seed_s: float | None  # None: nothing seeded (memory)
    routes: dict[str, Route] | None
    long: Long
    burst: Burst


async def seed_mongodb(uri: str, threads: int, variants: int) -> str:
    store = MongoThreadStore(uri, DATABASE)
    # Before the documents, as a deployment has them: the server then finds its indexes in place.
    await store.ensure_indexes()
    return await seed(store, threads, variants)


def measure(store: str, args: argparse.Namespace, tmp: Path) -> Figures:
    with contextlib.ExitStack() as stack:
        extra: list[str] = []
        big: str | None = None
        mongo: MongoServer | None = None
        t0 = time.perf_counter()
        if store == "sqlite":
            big = asyncio.run(seed(SQLiteThreadStore(tmp / "data" / "threads.sqlite3"), args.threads, args.variants))
        elif store == "mongodb":
            mongo = stack.enter_context(MongoServer())
            extra = [f"--FrevaGPT.mongodb_uri={mongo.uri}", f"--FrevaGPT.mongodb_database_name={DATABASE}"]
            big = asyncio.run(seed_mongodb(mongo.uri, args.threads, args.variants))
        seed_s = time.perf_counter() - t0 if big else None
        target, _, _ = stack.enter_context(servers(tmp, extra))
        if mongo is not None and mongo.proc is not None:
            target.clocks["database"] = cpu_clock(mongo.proc.pid)
        settle(target.clocks["server"])
        route = routes(target, big, args.threads, args.variants, args.route_samples) if big else None
        keep = store != "memory"
        with httpx.Client(headers=target.headers, timeout=120, trust_env=False) as client:
            long = long_turns(
                client, target.api, target.llm, target.clocks["server"], args.tokens, args.reps, 0.0, keep
            )
        burst = asyncio.run(bursts(target, args.streams, args.burst_tokens, 0.02, args.bursts, keep))
    return Figures(seed_s, route, long, burst)


def table(results: dict[str, Figures], args: argparse.Namespace) -> list[tuple[str, ...]]:
    """Rows of metric, one value per store, MongoDB / SQLite and whether that is within the goal."""
    rows: list[tuple[str, ...]] = []

    def add(metric: str, unit: str, value: dict[str, float | None], fmt: str = ".2f", goal: bool = True) -> None:
        """A row; `goal`: the ratio is held against the goal (lower is better in every row)."""
        cells = [f"{v:{fmt}} {unit}".strip() if (v := value.get(s)) is not None else "-" for s in results]
        sqlite, mongodb = value.get("sqlite"), value.get("mongodb")
        ratio, met = "-", "-"
        if sqlite and mongodb is not None:
            ratio = f"{mongodb / sqlite:.2f}"
            met = ("yes" if mongodb / sqlite <= GOAL_RATIO else "NO") if goal else "-"
        rows.append((metric, *cells, ratio, met))

    def per_store(get: Callable[[Figures], float | None]) -> dict[str, float | None]:
        return {s: get(f) for s, f in results.items()}

    add("store seeded (before the server starts)", "s", per_store(lambda f: f.seed_s), ".1f", goal=False)
    for name, label in (
        ("ping", "ping p50 (the floor)"),
        ("getuserthreads", f"getuserthreads p50, {args.threads} threads"),
        ("getthread", f"getthread p50, {args.variants} variants"),
    ):
        add(label, "ms", per_store(lambda f, n=name: pct(f.routes[n].ms, 0.5) if f.routes else None))
        add(
            "  server CPU per request",
            "ms",
            per_store(lambda f, n=name: f.routes[n].server_cpu_ms if f.routes else None),
        )
    add(
        f"server CPU per token, {args.tokens} at full speed",
        "us",
        per_store(lambda f: pct(f.long.server_us, 0.5)),
        ".0f",
    )
    add("  wall time of one such answer", "s", per_store(lambda f: f.long.ext_s / len(f.long.server_us)), ".2f")
    n = args.streams
    add(f"{n} concurrent streams: first line p50", "ms", per_store(lambda f: pct(f.burst.first, 0.5)), ".0f")
    add(f"{n} concurrent streams: first line p99", "ms", per_store(lambda f: pct(f.burst.first, 0.99)), ".0f")
    add(
        "  fake LLM read directly: first line p50",
        "ms",
        per_store(lambda f: pct(f.burst.direct_first, 0.5)),
        ".0f",
        goal=False,
    )
    add(f"{n} concurrent streams: last line p50", "ms", per_store(lambda f: pct(f.burst.last, 0.5)), ".0f")
    add(
        "  server CPU per streamed token",
        "us",
        per_store(lambda f: f.burst.cpu_s["server"] / f.burst.tokens * 1e6),
        ".0f",
    )
    add(
        "  secantusdb CPU per streamed token",
        "us",
        per_store(lambda f: f.burst.cpu_s["database"] / f.burst.tokens * 1e6 if "database" in f.burst.cpu_s else None),
        ".0f",
    )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=STORES, action="append", help="a store to measure (default: all three)")
    parser.add_argument("--threads", type=int, default=10_000, help="threads seeded (default 10000)")
    parser.add_argument("--variants", type=int, default=2000, help="variants of the big thread (default 2000)")
    parser.add_argument("--route-samples", type=int, default=20, help="samples per route (default 20)")
    parser.add_argument("--tokens", type=int, default=2000, help="tokens of each full-speed answer (default 2000)")
    parser.add_argument("--reps", type=int, default=3, help="full-speed answers (default 3)")
    parser.add_argument("--streams", type=int, default=100, help="concurrent streams (default 100)")
    parser.add_argument("--burst-tokens", type=int, default=50, help="tokens per concurrent stream (default 50)")
    parser.add_argument("--bursts", type=int, default=1, help="measured bursts, after one warm-up (default 1)")
    args = parser.parse_args()
    stores = [s for s in STORES if s in (args.store or STORES)]

    wall0 = time.perf_counter()
    results: dict[str, Figures] = {}
    for store in stores:
        with tempfile.TemporaryDirectory(prefix=f"bench-stores-{store}-") as tmp:
            t0 = time.perf_counter()
            results[store] = measure(store, args, Path(tmp))
            print(f"{store}: measured in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    print(
        f"Thread stores under the same load ({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the "
        f"end; {time.perf_counter() - wall0:.0f} s). Latencies include the clients; CPU figures are per process.\n"
    )
    head = ("metric", *stores, "MongoDB / SQLite", f"<= {GOAL_RATIO:g}x")
    rows = table(results, args)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, tuple("-" * w for w in widths), *rows]:
        cells = [r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))]
        print("| " + " | ".join(cells) + " |")
    print(
        f"\nFull-speed answers: {args.reps} x {args.tokens} tokens, checked live and (stored) in getthread. "
        f"Concurrent streams: {args.bursts} bursts of {args.streams} new threads x {args.burst_tokens} tokens at "
        "50 tokens/s after one warm-up burst, each stream checked whole."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
