"""Whole turns against a real server: stop latency, 100 concurrent streams, paced CPU, route latency, leaks, litellm.

Run from the repository root: ``.venv/bin/python bench/bench_turns.py`` (``--quick`` shrinks every size;
``--help`` for each one). About two minutes on a 2-core machine.

The fake LLM (tests/fake_llm.py) and ``python -m jupyter_server`` run as subprocesses (helpers from
bench_stream.py); the server's CPU is read from its own per-process clock. Before the server starts, its SQLite
store is seeded with 10,000 threads of the owner ``bench`` (the server runs with ``--FrevaGPT.owner=bench`` and
Jupyter's token login, whose made-up users are not owners) and one thread of 2,000 variants. The server also
offers ``tests.tools:SleepTool``, and its topic model is ``fake-error``: a new thread's title costs one short
LLM call (answered with an error), instead of the fake replaying the turn's own directive (which the title
request carries too) as a second long stream. Baselines are measured in the same run.

Clients: httpx for single turns and stops; plain sockets for the 100 concurrent streams and the standard
library's http.client for route latencies, because httpx costs this process more CPU than the server spends on
a small answer. On a shared 2-core machine other processes' load moves the latencies a lot (the header line says
how much CPU they took); the per-process CPU figures move less.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from bench_stream import Proc, cpu_clock, pct, running, settle

from freva_gpt_ext.storage import SQLiteThreadStore, ThreadStore
from freva_gpt_ext.variants import ASSISTANT, CODE, CODE_OUTPUT, USER, Variant

OWNER = "bench"
STOPPED = "Stream is stopped by user."
DONE = "Stream ended."
Clock = Callable[[], float]
Line = dict[str, Any]


@dataclass
class Target:
    """The server under test and the fake LLM it talks to."""

    api: str
    llm: str
    headers: dict[str, str]
    pid: int
    port: int
    llm_port: int
    # CPU seconds of "server", "fake LLM", this process ("client") and a "database" in a process of its own
    clocks: dict[str, Clock]

    def snapshot(self) -> Snapshot:
        return Snapshot.of(self.pid, self.port, self.llm_port)


@contextlib.contextmanager
def servers(tmp: Path, extra: list[str] | None = None) -> Iterator[tuple[Target, Proc, Proc]]:
    """The fake LLM and the Jupyter server (data in `tmp`/data), both answering."""
    options = [
        f"--FrevaGPT.owner={OWNER}",
        "--FrevaGPT.topic_model=fake-error",
        "--FrevaGPT.tools=tests.tools:SleepTool",  # one list item (a JSON list would be read as one name)
        *(extra or []),
    ]
    with running(tmp, options) as (client, api, llm, server, fake):
        port, llm_port = httpx.URL(api).port, httpx.URL(llm).port
        clocks = {"server": cpu_clock(server.pid), "fake LLM": cpu_clock(fake.pid), "client": time.process_time}
        yield Target(api, llm, dict(client.headers), server.pid, port, llm_port, clocks), server, fake


# -- seeding the store before the server starts --------------------------------------------------------------
async def seed(store: ThreadStore, threads: int, variants: int) -> str:
    """`threads` threads of OWNER (one User + one Assistant each) and one more of `variants` variants (a
    conversation with code: User, Assistant, Code, CodeOutput), written through `store`, which is closed after.
    Returns the big thread's id."""
    big = "BenchBigThread" + "0" * 18
    try:
        await store.create(big, OWNER, "A long analysis of near-surface temperature")
        for i in range(variants):
            n, kind = divmod(i, 4)
            if kind == 0:
                v = Variant(USER, f"Now plot the annual mean of tas for the years {1950 + n} to {1960 + n}, please.")
            elif kind == 1:
                text = f"Here is the annual mean for {1950 + n}-{1960 + n}. " + "The anomaly grows steadily. " * 12
                v = Variant(ASSISTANT, text, model="fake-text")
            elif kind == 2:
                code = f"import xarray as xr\nds = xr.open_dataset('tas_{n}.nc')\nprint(ds.tas.mean().values)"
                v = Variant(CODE, json.dumps({"code": code}), id=f"call_{n}")
            else:
                v = Variant(CODE_OUTPUT, f"{287.1 + n / 1000:.4f}\n", id=f"call_{n}")
            await store.append(big, v)
        await store.sync()
        for i in range(1, threads):
            tid = f"BenchThread{i:021d}"
            await store.create(tid, OWNER, f"Seeded thread {i}: monthly precipitation over Europe")
            await store.append(tid, Variant(USER, f"What was the precipitation in month {i}?"))
            await store.append(tid, Variant(ASSISTANT, "About 80 mm, slightly above the mean.", model="fake-text"))
            if i % 1000 == 0:  # the store remembers at most 10,000 thread ids before they are written
                await store.sync()
        await store.sync()
    finally:
        await store.aclose()
    return big


# -- streams ----------------------------------------------------------------------------------------------------
@dataclass
class Streamed:
    first_ms: float  # to the first line
    end_ms: float  # to the end of the response (after StreamEnd)
    lines: list[Line]

    @property
    def thread_id(self) -> str:
        return str(self.lines[0]["content"]["thread_id"])

    def text(self) -> list[str]:
        return [v["content"] for v in self.lines if v["variant"] == ASSISTANT and v["content"]]


async def stream_turn(client: httpx.AsyncClient, api: str, text: str, chatbot: str, thread_id: str = "") -> Streamed:
    """One `streamresponse` turn read to its end and checked: ServerHint first, StreamEnd "Stream ended." last."""
    params = {"input": text, "chatbot": chatbot, "thread_id": thread_id}
    t0 = time.perf_counter()
    first = 0.0
    lines: list[Line] = []
    async with client.stream("GET", f"{api}/streamresponse", params=params) as r:
        if r.status_code != 200:
            raise SystemExit(f"streamresponse answered {r.status_code}: {(await r.aread())[:300]!r}")
        async for raw in r.aiter_lines():
            first = first or time.perf_counter()
            lines.append(json.loads(raw))
    end = time.perf_counter()
    if not lines or lines[0]["variant"] != "ServerHint" or lines[-1] != {"variant": "StreamEnd", "content": DONE}:
        raise SystemExit(f"bad stream for {text[:60]!r}: {lines[:2]} ... {lines[-2:]}")
    return Streamed((first - t0) * 1e3, (end - t0) * 1e3, lines)


async def direct_turn(
    client: httpx.AsyncClient, llm: str, text: str, model: str = "fake-text"
) -> tuple[float, float, int]:
    """The same answer read straight from the fake: (ms to the first data line, ms to the end, text deltas)."""
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": text}]}
    t0 = time.perf_counter()
    first, deltas = 0.0, 0
    async with client.stream("POST", f"{llm}/chat/completions", json=body) as r:
        async for line in r.aiter_lines():
            if not line.startswith("data:"):
                continue
            first = first or time.perf_counter()
            data = line[5:].strip()
            if data != "[DONE]":
                choices = json.loads(data)["choices"]
                deltas += bool(choices and choices[0]["delta"].get("content"))
    return (first - t0) * 1e3, (time.perf_counter() - t0) * 1e3, deltas


async def titled_thread(client: httpx.AsyncClient, api: str, chatbot: str = "fake-text") -> tuple[str, Streamed]:
    """A thread with a first turn behind it and a topic set, so later turns ask for no title."""
    first = await stream_turn(client, api, "hi", chatbot)
    r = await client.get(f"{api}/setthreadtopic", params={"thread_id": first.thread_id, "topic": "bench"})
    r.raise_for_status()
    return first.thread_id, first


async def quiet(clock: Clock, quiet_ms_per_s: float = 5.0, limit: float = 10.0) -> float:
    """Wait until the server is idle (background titles done); its idle CPU in ms/s."""
    deadline = time.monotonic() + limit
    while True:
        c0 = clock()
        await asyncio.sleep(0.25)
        idle = (clock() - c0) / 0.25 * 1e3
        if idle <= quiet_ms_per_s or time.monotonic() > deadline:
            return idle


# -- 1. stop -------------------------------------------------------------------------------------------------
@dataclass
class StopState:
    label: str
    chatbot: str
    text: str
    ready: Callable[[Line], bool]  # the line after which the turn is in this state


STOP_STATES = [
    StopState(
        "text streams (fake-slow, 20 tok/s)",
        "fake-slow",
        "[[fake: tokens=5000]] count",
        lambda v: v["variant"] == ASSISTANT and bool(v["content"]),
    ),
    StopState(
        "LLM stalls (fake-stall, 60 s)",
        "fake-stall",
        "[[fake: stall=60]] think",
        lambda v: v["variant"] == ASSISTANT and bool(v["content"]),
    ),
    StopState(
        "tool runs (SleepTool, 30 s)",
        "fake-tool",
        """[[fake: tool=sleep args='{"seconds": 30}']] wait""",
        lambda v: v["variant"] == "ServerHint" and v["content"].get("status") == "searching",
    ),
]


async def stop_once(client: httpx.AsyncClient, api: str, state: StopState, thread_id: str, pause: float) -> float:
    """Stream a turn into `thread_id` until it is in `state`, wait `pause`, then stop it: ms from sending
    `stop` to reading the StreamEnd line."""
    params = {"input": state.text, "chatbot": state.chatbot, "thread_id": thread_id, "show_tools": "true"}
    async with client.stream("GET", f"{api}/streamresponse", params=params) as r:
        if r.status_code != 200:
            raise SystemExit(f"streamresponse answered {r.status_code}: {(await r.aread())[:300]!r}")
        lines = r.aiter_lines()
        async for raw in lines:
            if state.ready(json.loads(raw)):
                break
        else:
            raise SystemExit(f"{state.label}: the stream ended before the state was reached")
        await asyncio.sleep(pause)
        t0 = time.perf_counter()
        stop = asyncio.create_task(client.get(f"{api}/stop", params={"thread_id": thread_id}))
        end: Line = {}
        async for raw in lines:
            end = json.loads(raw)
            if end["variant"] == "StreamEnd":
                break
        t1 = time.perf_counter()
        rest = [raw async for raw in lines]
        answer = await stop
    if end != {"variant": "StreamEnd", "content": STOPPED} or rest or answer.status_code != 200:
        raise SystemExit(f"{state.label}: stop went wrong: {end}, then {rest}, stop said {answer.status_code}")
    return (t1 - t0) * 1e3


async def stops(client: httpx.AsyncClient, api: str, samples: int) -> dict[str, list[float]]:
    rng = random.Random(1)
    out: dict[str, list[float]] = {}
    for state in STOP_STATES:
        thread_id = f"BenchStop{len(out)}" + "x" * 20
        await stop_once(client, api, state, thread_id, 0.05)  # creates the thread; warms up
        r = await client.get(f"{api}/setthreadtopic", params={"thread_id": thread_id, "topic": "stop bench"})
        r.raise_for_status()
        out[state.label] = [
            await stop_once(client, api, state, thread_id, 0.05 + rng.random() * 0.1) for _ in range(samples)
        ]
    return out


# -- 2. concurrent streams -------------------------------------------------------------------------------------
async def raw_stream(
    url: str, method: str = "GET", headers: dict[str, str] | None = None, body: bytes = b""
) -> tuple[float, float, bytes]:
    """A chunked HTTP/1.1 response read on a plain socket: (ms to the first body chunk, ms to the last, body).

    100 streams read through httpx cost this process more CPU than the server spends on them; a load generator
    this lean keeps the figures about the server (and the fake LLM)."""
    u = httpx.URL(url)
    head = [f"{method} {u.raw_path.decode()} HTTP/1.1", f"Host: {u.host}:{u.port}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body:
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection(u.host, u.port)
    try:
        writer.write("\r\n".join(head).encode() + b"\r\n\r\n" + body)
        status = (await reader.readuntil(b"\r\n\r\n")).split(b" ", 2)[1]
        if status != b"200":
            raise SystemExit(f"{url[:80]} answered {status.decode()}")
        first, data = 0.0, bytearray()
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            data += (await reader.readexactly(size + 2))[:-2]
            first = first or time.perf_counter()
        await reader.readuntil(b"\r\n")
        end = time.perf_counter()
    finally:
        writer.close()
    return (first - t0) * 1e3, (end - t0) * 1e3, bytes(data)


@dataclass
class Burst:
    first: list[float] = field(default_factory=list)
    last: list[float] = field(default_factory=list)
    direct_first: list[float] = field(default_factory=list)
    direct_last: list[float] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=lambda: {"server": 0.0, "fake LLM": 0.0, "client": 0.0})
    wall_s: float = 0.0
    tokens: int = 0


async def bursts(t: Target, n: int, tokens: int, delay: float, rounds: int, store_thread: bool = True) -> Burst:
    """`rounds` bursts of `n` simultaneous new-thread streams, each after a burst read straight from the fake.
    `store_thread=False`: the threads live in the server's memory only."""
    text = f"[[fake: tokens={tokens} delay={delay}]] count for me"
    params = {"input": text, "chatbot": "fake-text", "thread_id": ""}
    query = httpx.QueryParams(params if store_thread else {**params, "store_thread": "false"})
    body = json.dumps({"model": "fake-text", "stream": True, "messages": [{"role": "user", "content": text}]}).encode()
    done_line = b'{"variant":"StreamEnd","content":"Stream ended."}\n'
    api, llm, headers, clocks = t.api, t.llm, t.headers, t.clocks
    out = Burst()

    async def ext() -> tuple[float, float]:
        first, last, data = await raw_stream(f"{api}/streamresponse?{query}", headers=headers)
        got = data.count(b'{"variant":"Assistant","content":"') - data.count(b'{"variant":"Assistant","content":""}')
        if not data.startswith(b'{"variant":"ServerHint"') or not data.endswith(done_line) or got != tokens:
            raise SystemExit(f"a concurrent stream carried {got} of {tokens} tokens: {data[:80]!r}...{data[-80:]!r}")
        return first, last

    async def direct() -> tuple[float, float]:
        first, last, data = await raw_stream(f"{llm}/chat/completions", "POST", body=body)
        if data.count(b'"content": "') != tokens or not data.endswith(b"data: [DONE]\n\n"):
            raise SystemExit("the fake LLM sent something else than asked")
        return first, last

    for i in range(rounds + 1):  # the first round warms up
        got = await asyncio.gather(*(direct() for _ in range(n)))
        out.direct_first += [d[0] for d in got] if i else []
        out.direct_last += [d[1] for d in got] if i else []
        await quiet(clocks["server"])
        c0, t0 = {k: c() for k, c in clocks.items()}, time.perf_counter()
        got = await asyncio.gather(*(ext() for _ in range(n)))
        await asyncio.sleep(0.05)  # the turns' last bookkeeping
        if i:
            out.wall_s += time.perf_counter() - t0
            for k, c in clocks.items():
                out.cpu_s[k] = out.cpu_s.get(k, 0.0) + c() - c0[k]
            out.first += [s[0] for s in got]
            out.last += [s[1] for s in got]
            out.tokens += n * tokens
        await quiet(clocks["server"])
    return out


# -- 3. one paced turn ---------------------------------------------------------------------------------------
@dataclass
class Paced:
    tokens: int
    server_us: list[float] = field(default_factory=list)
    fake_us: list[float] = field(default_factory=list)  # the fake LLM sending the same turn
    client_us: list[float] = field(default_factory=list)  # an httpx client reading the fake directly
    ext_s: list[float] = field(default_factory=list)
    direct_s: list[float] = field(default_factory=list)


async def paced(client: httpx.AsyncClient, t: Target, tokens: int, delay: float, reps: int) -> Paced:
    text = f"[[fake: tokens={tokens} delay={delay}]] count slowly"
    api, llm = t.api, t.llm
    thread_id, _ = await titled_thread(client, api)
    server, fake = t.clocks["server"], t.clocks["fake LLM"]
    out = Paced(tokens)
    for _ in range(reps):
        await quiet(server)
        c0, f0 = server(), fake()
        s = await stream_turn(client, api, text, "fake-text", thread_id)
        await asyncio.sleep(0.02)  # the turn's last bookkeeping may follow the stream's end
        out.server_us.append((server() - c0) / tokens * 1e6)
        out.fake_us.append((fake() - f0) / tokens * 1e6)
        out.ext_s.append(s.end_ms / 1e3)
        if len(s.text()) != tokens:
            raise SystemExit(f"the paced stream carried {len(s.text())} of {tokens} tokens")
        p0 = time.process_time()
        _, end_ms, n = await direct_turn(client, llm, text)
        out.client_us.append((time.process_time() - p0) / tokens * 1e6)
        out.direct_s.append(end_ms / 1e3)
        if n != tokens:
            raise SystemExit("the fake LLM sent something else than asked")
    return out


# -- 4. route latencies ----------------------------------------------------------------------------------------
@dataclass
class Route:
    ms: list[float] = field(default_factory=list)
    server_cpu_ms: float = 0.0  # per request


def routes(t: Target, big: str, threads: int, variants: int, n: int) -> dict[str, Route]:
    """p50 latencies on one keep-alive connection of the standard library's lean HTTP client (httpx costs this
    process more than the server spends on a small answer), interleaved in blocks of 20 so that drift in the
    machine's load hits every route alike; the server's CPU per request from its clock over each block."""
    u, headers, clock = httpx.URL(t.api), t.headers, t.clocks["server"]
    conn = http.client.HTTPConnection(u.host, u.port, timeout=60)
    calls = {
        "ping": "ping",
        "availablechatbots": "availablechatbots",
        "getuserthreads": "getuserthreads",
        "getthread": f"getthread?thread_id={big}",
    }

    def get(path: str) -> bytes:
        conn.request("GET", f"{u.path}/{path}", headers=headers)
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise SystemExit(f"{path} answered {r.status}: {data[:300]!r}")
        return data

    listing = json.loads(get("getuserthreads"))
    if listing[1] != threads or len(listing[0]) != 20:
        raise SystemExit(f"getuserthreads sees {listing[1]} threads, not the {threads} seeded")
    if len(got := json.loads(get(calls["getthread"]))) != variants:
        raise SystemExit(f"getthread returned {len(got)} variants, not the {variants} seeded")
    out = {name: Route() for name in calls}
    block = 20
    for i in range(-1, max(1, n // block)):  # the first round warms up
        for name, path in calls.items():
            c0 = clock()
            times = []
            for _ in range(block):
                t0 = time.perf_counter()
                get(path)
                times.append((time.perf_counter() - t0) * 1e3)
            if i >= 0:
                out[name].ms += times
                out[name].server_cpu_ms += (clock() - c0) * 1e3
    conn.close()
    for r in out.values():
        r.server_cpu_ms /= len(r.ms)
    return out


# -- 5. memory and files -----------------------------------------------------------------------------------
@dataclass
class Snapshot:
    rss_mib: float
    fds: int
    threads: int
    kinds: dict[str, int]  # open fds by kind; sockets by peer: "listen", "client" (to us), "LLM", "other"

    @property
    def files(self) -> int:
        return sum(n for k, n in self.kinds.items() if not k.startswith("socket"))

    @classmethod
    def of(cls, pid: int, port: int, llm_port: int) -> Snapshot:
        proc = psutil.Process(pid)
        kinds: dict[str, int] = {}
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if not target.startswith("socket:"):
                kind = target.split(":", 1)[0] if ":" in target else Path(target).suffix or target
                kinds[kind] = kinds.get(kind, 0) + 1
        for c in proc.net_connections("all"):
            if c.status == psutil.CONN_LISTEN:
                kind = "listen"
            elif c.raddr and c.raddr[1] == llm_port:
                kind = "LLM"
            elif c.laddr and c.laddr[1] == port:
                kind = "client"
            else:
                kind = "other"
            kinds[f"socket {kind}"] = kinds.get(f"socket {kind}", 0) + 1
        fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
        return cls(proc.memory_info().rss / 2**20, fds, proc.num_threads(), dict(sorted(kinds.items())))


@dataclass
class Leak:
    before: Snapshot
    after: Snapshot
    curve: list[Snapshot]  # at each quarter
    turns: int
    wall_s: float
    cpu_ms_per_turn: float


async def leaks(client: httpx.AsyncClient, t: Target, turns: int, warmup: int, workers: int) -> Leak:
    """Short turns (new threads, fake-text's one-sentence answer, `workers` at a time): RSS and open files."""
    counter = iter(range(10**9))
    clock = t.clocks["server"]

    async def run(n: int) -> None:
        todo = iter(range(n))

        async def worker() -> None:
            for _ in todo:
                s = await stream_turn(client, t.api, f"Mean temperature of the year {next(counter)}?", "fake-text")
                if not s.text():
                    raise SystemExit("a short turn brought no answer")

        await asyncio.gather(*(worker() for _ in range(workers)))

    await run(warmup)
    await quiet(clock)
    before = t.snapshot()
    curve = [before]
    c0, t0 = clock(), time.perf_counter()
    quarter = max(1, turns // 4)
    for done in range(0, turns, quarter):
        await run(min(quarter, turns - done))
        curve.append(t.snapshot())
    wall = time.perf_counter() - t0
    cpu = clock() - c0
    await quiet(clock)
    return Leak(before, t.snapshot(), curve, turns, wall, cpu / turns * 1e3)


# -- 6. litellm vs the lean reader -----------------------------------------------------------------------------
@dataclass
class Litellm:
    import_wall_s: float = 0.0
    import_cpu_s: float = 0.0
    warm_wall_ms: float = 0.0
    ping_ms: list[float] = field(default_factory=list)  # pings sent while the first litellm turn ran
    ping_idle_ms: list[float] = field(default_factory=list)  # the same pings with the server idle
    lean_us: list[float] = field(default_factory=list)
    litellm_us: list[float] = field(default_factory=list)
    lean_s: float = 0.0
    litellm_s: float = 0.0


async def pings(client: httpx.AsyncClient, api: str, until: asyncio.Future | float) -> list[float]:
    """Ping latencies every 20 ms until `until` is done (or for that many seconds): the event loop's reach."""
    out = []
    end = time.perf_counter() + until if isinstance(until, float) else 0.0
    while not (until.done() if isinstance(until, asyncio.Future) else time.perf_counter() > end):
        t0 = time.perf_counter()
        (await client.get(f"{api}/ping")).raise_for_status()
        out.append((time.perf_counter() - t0) * 1e3)
        await asyncio.sleep(0.02)
    return out


async def litellm_cmp(client: httpx.AsyncClient, t: Target, tokens: int, reps: int) -> Litellm:
    out = Litellm()
    clock, api = t.clocks["server"], t.api
    await quiet(clock)
    out.ping_idle_ms = await pings(client, api, 1.0)
    c0 = clock()
    first = asyncio.ensure_future(titled_thread(client, api, "fake-text-litellm"))  # its first turn imports litellm
    out.ping_ms = await pings(client, api, first)
    lite_id, turn = await first
    out.import_wall_s, out.import_cpu_s = turn.end_ms / 1e3, clock() - c0
    out.warm_wall_ms = (await stream_turn(client, api, "hi again", "fake-text-litellm", lite_id)).end_ms
    lean_id, _ = await titled_thread(client, api)
    text = f"[[fake: tokens={tokens}]] count fast"
    for rep in range(reps + 1):  # the first pair warms up
        for chatbot, thread_id, cpu, wall in (
            ("fake-text", lean_id, out.lean_us, "lean_s"),
            ("fake-text-litellm", lite_id, out.litellm_us, "litellm_s"),
        ):
            await quiet(clock)
            c0 = clock()
            s = await stream_turn(client, api, text, chatbot, thread_id)
            await asyncio.sleep(0.02)
            if len(s.text()) != tokens:
                raise SystemExit(f"{chatbot}: {len(s.text())} of {tokens} tokens arrived")
            if rep:
                cpu.append((clock() - c0) / tokens * 1e6)
                setattr(out, wall, getattr(out, wall) + s.end_ms / 1e3)
    return out


# -- the report --------------------------------------------------------------------------------------------------
Row = tuple[str, str, str, str, str]  # metric, value, baseline, goal, met


def row(metric: str, value: float, unit: str, goal: float | None = None, base: str = "-", fmt: str = ".1f") -> Row:
    met = "-" if goal is None else ("yes" if value <= goal else "NO")
    goal_s = "-" if goal is None else f"<= {goal:g} {unit}"
    return metric, f"{value:{fmt}} {unit}", base, goal_s, met


def print_table(rows: list[Row | str]) -> None:
    head = ("metric", "value", "baseline (same run)", "goal", "met")
    widths = [max(len(str(r[i])) for r in [head, *[r for r in rows if not isinstance(r, str)]]) for i in range(5)]
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"

    def fmt(r: tuple[str, ...]) -> str:
        cells = [r[0].ljust(widths[0]), *(str(c).rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))]
        return "| " + " | ".join(cells) + " |"

    print(fmt(head))
    print(rule)
    for r in rows:
        print(f"| **{r}**" if isinstance(r, str) else fmt(r))


async def measure(args: argparse.Namespace, t: Target) -> dict[str, Any]:
    res: dict[str, Any] = {}
    limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
    sections: list[tuple[str, Callable[[httpx.AsyncClient], Awaitable[Any]]]] = [
        ("leak", lambda c: leaks(c, t, args.turns, args.warmup, args.workers)),
        ("stops", lambda c: stops(c, t.api, args.stops)),
        ("burst", lambda c: bursts(t, args.streams, args.burst_tokens, 0.02, args.bursts)),
        ("paced", lambda c: paced(c, t, args.paced_tokens, 0.02, args.paced_reps)),
        ("lite", lambda c: litellm_cmp(c, t, args.litellm_tokens, args.litellm_reps)),  # last: litellm stays
    ]
    async with httpx.AsyncClient(headers=t.headers, timeout=120, limits=limits, trust_env=False) as client:
        for name, section in sections:
            t0 = time.perf_counter()
            res[name] = await section(client)
            res[f"t_{name}"] = time.perf_counter() - t0
    return res


def report(res: dict[str, Any], args: argparse.Namespace) -> list[Row | str]:
    rows: list[Row | str] = []
    rows.append(f"1. stop -> StreamEnd, {args.stops} samples per state (upstream: 2.6 s; never during a stall)")
    for label, values in res["stops"].items():
        rows.append(row(f"{label} p50", pct(values, 0.5), "ms", 100))
        rows.append(row(f"{label} p99", pct(values, 0.99), "ms", 100))

    b: Burst = res["burst"]
    n, tk = args.streams, args.burst_tokens
    rows.append(
        f"2. {n} concurrent new-thread streams x {tk} tokens at 50 tok/s, {args.bursts} bursts (upstream p99 12.7 s)"
    )
    for q in (0.5, 0.99):
        base = f"{pct(b.direct_first, q):.1f} ms (fake direct)"
        rows.append(row(f"first line p{q * 100:.0f}", pct(b.first, q), "ms", 300 if q > 0.5 else None, base))
    for q in (0.5, 0.99):
        base = f"{pct(b.direct_last, q):.0f} ms (fake direct)"
        rows.append(
            row(f"last line p{q * 100:.0f} (LLM pace: {(tk - 1) * 20} ms)", pct(b.last, q), "ms", None, base, ".0f")
        )
    rows.append(row("server CPU per streamed token", b.cpu_s["server"] / b.tokens * 1e6, "us", None, "", ".0f"))
    shares = ", ".join(f"{k} {v / b.wall_s:.2f}" for k, v in b.cpu_s.items())
    rows.append(row("server CPU, cores busy", b.cpu_s["server"] / b.wall_s, "", None, shares, ".2f"))

    p: Paced = res["paced"]
    rows.append(f"3. one turn of {p.tokens} tokens at 50 tok/s, {args.paced_reps} reps")
    base = f"fake {pct(p.fake_us, 0.5):.0f} us; reader {pct(p.client_us, 0.5):.0f} us"
    rows.append(row("server CPU per token, median", pct(p.server_us, 0.5), "us", None, base, ".0f"))
    base = f"{pct(p.direct_s, 0.5):.3f} s (fake direct)"
    label = f"turn duration, median (LLM pace: {(p.tokens - 1) * 0.02:.2f} s)"
    rows.append(row(label, pct(p.ext_s, 0.5), "s", None, base, ".3f"))

    r: dict[str, Route] = res["routes"]
    rows.append(
        f"4. route p50 latency, {len(r['ping'].ms)} samples each ({args.threads} threads; {args.variants} variants)"
    )
    ping = pct(r["ping"].ms, 0.5)
    rows.append(row("ping (the floor)", ping, "ms", None, f"server CPU {r['ping'].server_cpu_ms:.2f} ms", ".2f"))
    for name, goal in (("availablechatbots", 1.0), ("getuserthreads", 3.0), ("getthread", 15.0)):
        base = f"ping {ping:.2f} ms; server CPU {r[name].server_cpu_ms:.2f} ms"
        rows.append(row(name, pct(r[name].ms, 0.5), "ms", goal, base, ".2f"))

    lk: Leak = res["leak"]
    rows.append(f"5. {lk.turns} short turns (new threads) after {args.warmup} warm-up ones, {args.workers} at a time")
    growth = lk.after.rss_mib - lk.before.rss_mib
    rows.append(row("server RSS growth", growth, "MiB", 20, f"{lk.before.rss_mib:.1f} MiB before"))
    # Files must stay exactly; sockets may differ by what the connection pools keep (one per concurrent turn).
    pools = lk.after.kinds.get("socket LLM", 0) + lk.after.kinds.get("socket client", 0)
    steady = lk.after.files == lk.before.files and lk.after.fds - lk.before.fds <= max(0, pools - args.workers)
    rows.append(("open fds after", f"{lk.after.fds}", f"{lk.before.fds} before", "constant", "yes" if steady else "NO"))
    rows.append(row("server CPU per short turn", lk.cpu_ms_per_turn, "ms", None, "(upstream 160 ms)"))
    rows.append(row("turns/s", lk.turns / lk.wall_s, "", None))

    li: Litellm = res["lite"]
    rows.append(f"6. litellm vs lean path, {args.litellm_tokens} tokens at full speed, {args.litellm_reps} reps")
    lean = pct(li.lean_us, 0.5)
    rows.append(
        row("litellm server CPU per token", pct(li.litellm_us, 0.5), "us", None, f"{lean:.0f} us (lean)", ".0f")
    )
    k = args.litellm_tokens * args.litellm_reps / 1e3
    rows.append(row("litellm tokens/s", k / li.litellm_s, "k/s", None, f"{k / li.lean_s:.2f} k/s (lean)", ".2f"))
    base = f"{li.warm_wall_ms:.0f} ms warm turn"
    rows.append(row("first litellm turn (imports it), wall", li.import_wall_s, "s", None, base, ".2f"))
    rows.append(row("first litellm turn, server CPU", li.import_cpu_s, "s", None, fmt=".2f"))
    base = f"p50 {pct(li.ping_ms, 0.5):.1f} ms; idle max {max(li.ping_idle_ms):.1f} ms"
    rows.append(row("ping during that turn, max", max(li.ping_ms), "ms", None, base, ".1f"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes everywhere (a smoke run of about a minute)")
    parser.add_argument("--stops", type=int, default=20, help="stop samples per state (default 20)")
    parser.add_argument("--streams", type=int, default=100, help="concurrent streams (default 100)")
    parser.add_argument("--burst-tokens", type=int, default=50, help="tokens per concurrent stream (default 50)")
    parser.add_argument("--bursts", type=int, default=2, help="measured bursts, after one warm-up (default 2)")
    parser.add_argument("--paced-tokens", type=int, default=200, help="tokens of the paced turn (default 200)")
    parser.add_argument("--paced-reps", type=int, default=2, help="paced turns (default 2)")
    parser.add_argument("--threads", type=int, default=10_000, help="threads seeded (default 10000)")
    parser.add_argument("--variants", type=int, default=2000, help="variants of the big thread (default 2000)")
    parser.add_argument("--route-samples", type=int, default=200, help="samples per route (default 200)")
    parser.add_argument("--turns", type=int, default=1000, help="short turns for RSS and fds (default 1000)")
    parser.add_argument("--warmup", type=int, default=50, help="short turns before the first snapshot (default 50)")
    parser.add_argument("--workers", type=int, default=4, help="short turns at a time (default 4)")
    parser.add_argument("--litellm-tokens", type=int, default=1000, help="tokens per litellm/lean turn (default 1000)")
    parser.add_argument("--litellm-reps", type=int, default=3, help="litellm and lean turns each (default 3)")
    args = parser.parse_args()
    if args.quick:
        args.stops, args.streams, args.bursts, args.paced_tokens, args.paced_reps = 5, 30, 1, 50, 1
        args.threads, args.variants, args.route_samples, args.turns, args.warmup = 1000, 400, 50, 100, 10
        args.litellm_tokens, args.litellm_reps = 300, 1

    wall0 = time.perf_counter()
    busy0 = psutil.cpu_times()
    with tempfile.TemporaryDirectory(prefix="bench-turns-") as tmp_name:
        tmp = Path(tmp_name)
        t = time.perf_counter()
        big = asyncio.run(seed(SQLiteThreadStore(tmp / "data" / "threads.sqlite3"), args.threads, args.variants))
        seed_s = time.perf_counter() - t
        with servers(tmp) as (target, server, fake):
            idle = settle(target.clocks["server"])
            t = time.perf_counter()
            route = routes(target, big, args.threads, args.variants, args.route_samples)
            t_routes = time.perf_counter() - t
            res = asyncio.run(measure(args, target))
            res["routes"], res["t_routes"] = route, t_routes
            ours = sum(sum(psutil.Process(p).cpu_times()[:4]) for p in (server.pid, fake.pid, os.getpid()))
    busy1 = psutil.cpu_times()
    wall = time.perf_counter() - wall0
    busy = sum(getattr(busy1, f) - getattr(busy0, f) for f in ("user", "nice", "system", "irq", "softirq"))
    others = max(0.0, busy - ours) / wall

    print(
        f"freva_gpt_ext turns against a real server ({os.cpu_count()} CPUs; other processes used {others:.2f} "
        f"CPUs meanwhile, load average {os.getloadavg()[0]:.1f}; server idle {idle:.1f} ms CPU/s; store seeded "
        f"in {seed_s:.1f} s). Latencies include the clients; CPU figures are per process.\n"
    )
    print_table(report(res, args))
    lk: Leak = res["leak"]
    print(f"\nShort turns, at each quarter: RSS {', '.join(f'{x.rss_mib:.1f}' for x in lk.curve)} MiB; ", end="")
    print(f"fds {', '.join(str(x.fds) for x in lk.curve)}; before {lk.before.kinds}, after {lk.after.kinds}.")
    times = ", ".join(f"{k[2:]} {v:.0f} s" for k, v in res.items() if k.startswith("t_"))
    print(f"Sections: {times}; total {wall:.0f} s. Every stream was checked line by line.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
