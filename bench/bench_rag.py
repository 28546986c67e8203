"""The retrieval server (tool_servers/rag) over the shipped corpus: index build time, and the latency of one
`get_context_from_resources` call in-process (the SDK's in-memory client) and over streamable HTTP.

Run from the repository root: ``.venv/bin/python bench/bench_rag.py [--runs 200]``.

- build, cold: chunk every file and index it into an empty cache folder (the first start).
- build, warm: a second index over the same cache (a restart: nothing re-chunked, the BM25 arrays loaded).
- refresh: the check every call makes (one stat per file), nothing changed.
- call p50/p95: a fresh question each call (cycled from a fixed list), one client kept open, as the extension does.
Goal: HTTP p50 < 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import mcp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from freva_gpt_ext.paths import data_folder  # noqa: E402
from freva_gpt_ext.rag_server import build_server, load_rag  # noqa: E402
from tests.rag_process import RagServerProcess  # noqa: E402

QUESTIONS = [
    ("How do I find ERA5 data with freva?", "all"),
    ("databrowser search by time_frequency and variable", "freva"),
    ("open the files with xarray", "freva"),
    ("area-weighted global mean", "all"),
    ("zarr stream of a file", "freva"),
    ("monthly anomalies against a climatology", "all"),
    ("plugin command line", "freva"),
    ("regrid to a regular grid", "all"),
]


def ms(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return f"p50 {statistics.median(ordered) * 1000:7.2f} ms   p95 {p95 * 1000:7.2f} ms   (n={len(ordered)})"


async def calls(target: object, runs: int) -> list[float]:
    times = []
    async with mcp.Client(target) as client:  # type: ignore[arg-type]
        for n in range(runs + 10):
            question, library = QUESTIONS[n % len(QUESTIONS)]
            start = time.perf_counter()
            result = await client.call_tool(
                "get_context_from_resources", {"question": question, "resources_to_retrieve_from": library}
            )
            elapsed = time.perf_counter() - start
            if result.is_error:
                raise RuntimeError(result.content)
            if n >= 10:  # the first calls warm up imports and connections
                times.append(elapsed)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    resources = data_folder("resources")
    index_class = load_rag().ResourceIndex
    files = [p for p in resources.rglob("*") if p.is_file() and p.parent != resources]
    size = sum(p.stat().st_size for p in files)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        start = time.perf_counter()
        index = index_class([resources], cache)
        index.refresh()
        cold = time.perf_counter() - start
        start = time.perf_counter()
        warm_index = index_class([resources], cache)
        warm_index.refresh()
        warm = time.perf_counter() - start
        refreshes = []
        for _ in range(200):
            start = time.perf_counter()
            warm_index.refresh()
            refreshes.append(time.perf_counter() - start)
        print(f"corpus: {len(files)} files, {size / 1024:.0f} KiB, libraries {index.libraries}")
        print(f"build, cold:  {cold * 1000:7.1f} ms   ({len(index)} chunks)")
        print(f"build, warm:  {warm * 1000:7.1f} ms")
        print(f"refresh:      {ms(refreshes)}")
        print(f"in-process:   {ms(asyncio.run(calls(build_server((), cache), args.runs)))}")
        with RagServerProcess([], cache, Path(tmp) / "server.log") as server:
            print(f"HTTP:         {ms(asyncio.run(calls(server.url, args.runs)))}")


if __name__ == "__main__":
    main()
