"""What the extension adds to a streamed answer: latency to the first line, and server CPU per token.

Run from the repository root: ``.venv/bin/python bench/bench_stream.py [--tokens 2000] [--turns 50]``
(``--help`` for the rest).

The fake LLM (tests/fake_llm.py) and the Jupyter server each run as a subprocess, so the server's CPU time is
read for its process alone; the client is this process. Every figure stands beside a baseline measured in the
same run: a plain httpx client talking to the fake LLM directly. The CPU clock is the kernel's per-process one,
so a "paced" answer (deltas a few ms apart, as real LLMs send them) is charged every wake-up it costs.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.fake_llm import catalogue_yaml  # noqa: E402

TOKEN = "bench-token"
MODEL = "fake-text"
QUESTION = "How warm was the year {year}?"  # three words or more: the server also asks for a title
Proc = subprocess.Popen[bytes]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def spawn(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[Proc]:
    """A subprocess (output to `log`), terminated on exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_ready(client: httpx.Client, url: str, proc: Proc, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        with contextlib.suppress(httpx.HTTPError):
            if client.get(url).status_code == 200:
                return
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-3000:]
    raise SystemExit(f"{url} did not come up; log {log}:\n{tail}")


def cpu_clock(pid: int) -> Callable[[], float]:
    """CPU seconds (all threads, exited ones too) of process `pid`: the kernel's ns clock where available,
    else psutil (10 ms ticks)."""
    with contextlib.suppress(OSError, AttributeError):
        clock = ctypes.c_int()
        if ctypes.CDLL(None).clock_getcpuclockid(pid, ctypes.byref(clock)) == 0:
            time.clock_gettime(clock.value)
            return lambda: time.clock_gettime(clock.value)
    proc = psutil.Process(pid)
    return lambda: sum(proc.cpu_times()[:2])


def settle(clock: Callable[[], float], quiet_ms_per_s: float = 5.0, limit: float = 10.0) -> float:
    """Wait until the server is idle (jupyter_lsp and others work on after startup); its idle CPU in ms/s."""
    deadline = time.monotonic() + limit
    while True:
        c0 = clock()
        time.sleep(0.25)
        idle = (clock() - c0) / 0.25 * 1e3
        if idle <= quiet_ms_per_s or time.monotonic() > deadline:
            return idle


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def direct(client: httpx.Client, llm: str, text: str) -> tuple[float, str, int]:
    """A stream read straight from the fake: (ms to its first data line, text, deltas)."""
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": text}]}
    t0 = time.perf_counter()
    first, parts = 0.0, []
    with client.stream("POST", f"{llm}/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if not line.startswith("data:"):
                continue
            first = first or time.perf_counter()
            data = line[5:].strip()
            if data == "[DONE]":
                continue  # read on to the end of the body: else httpx drops the connection instead of reusing it
            choices = json.loads(data)["choices"]
            if choices and (piece := choices[0]["delta"].get("content")):
                parts.append(piece)
    return (first - t0) * 1e3, "".join(parts), len(parts)


def turn(
    client: httpx.Client, api: str, text: str, thread_id: str = "", store: bool = True
) -> tuple[float, float, list[dict[str, Any]]]:
    """One `streamresponse` turn (`store=False`: `store_thread=false`): (ms to the first line, ms to the first
    Assistant line, all lines)."""
    t0 = time.perf_counter()
    first = assistant = 0.0
    lines: list[dict[str, Any]] = []
    params = {"input": text, "chatbot": MODEL, "thread_id": thread_id}
    if not store:
        params["store_thread"] = "false"
    with client.stream("GET", f"{api}/streamresponse", params=params) as r:
        if r.status_code != 200:
            raise SystemExit(f"streamresponse answered {r.status_code}: {r.read()[:500]!r}")
        for raw in r.iter_lines():
            first = first or time.perf_counter()
            lines.append(json.loads(raw))
            if not assistant and lines[-1]["variant"] == "Assistant":
                assistant = time.perf_counter()
    if not lines or lines[-1]["variant"] != "StreamEnd" or not assistant:
        raise SystemExit(f"bad stream: {lines[:3]} ... {lines[-3:]}")
    return (first - t0) * 1e3, (assistant - t0) * 1e3, lines


def latency(client: httpx.Client, api: str, llm: str, turns: int) -> dict[str, list[float]]:
    """Interleaved short turns (a few to warm up), each the first of a new thread (so the server also asks the
    LLM for a title, in the background): the extension's first lines vs the fake's first data line."""
    out: dict[str, list[float]] = {"line": [], "assistant": [], "direct": []}
    for i in range(turns + 3):
        question = QUESTION.format(year=1900 + i)
        base_ms, _, _ = direct(client, llm, question)
        line_ms, assistant_ms, _ = turn(client, api, question)
        if i >= 3:
            for key, value in zip(out, (line_ms, assistant_ms, base_ms), strict=True):
                out[key].append(value)
    return out


@dataclass
class Long:
    """Long answers: CPU µs per token of the server and of the direct client, tokens/s of both paths."""

    tokens: int
    server_us: list[float] = field(default_factory=list)
    client_us: list[float] = field(default_factory=list)
    ext_s: float = 0.0
    direct_s: float = 0.0

    def rates(self) -> tuple[float, float]:
        """k tokens/s through the extension and directly."""
        n = self.tokens * len(self.server_us) / 1e3
        return n / self.ext_s, n / self.direct_s


def long_turns(
    client: httpx.Client,
    api: str,
    llm: str,
    clock: Callable[[], float],
    tokens: int,
    reps: int,
    delay: float,
    store: bool = True,
) -> Long:
    """`reps` answers of `tokens` tokens (`delay` s apart), each checked live and in getthread, each beside one
    read directly from the fake by this process. `store=False`: a thread in the server's memory only (checked
    live only: getthread does not see it).

    The turns follow up in one thread whose topic is set: a thread's first meaningful message also has the
    server ask the LLM for a title, and the fake would obey the token directive in that request too. (A
    memory-only thread gets no title.)"""
    text = f"[[fake:text tokens={tokens} delay={delay}]] count"
    expected = " ".join(f"tok{i}" for i in range(tokens))
    thread_id = turn(client, api, "hi", store=store)[2][0]["content"]["thread_id"]
    if store:
        client.get(f"{api}/setthreadtopic", params={"thread_id": thread_id, "topic": "bench"}).raise_for_status()
    out = Long(tokens)
    for _ in range(reps):
        c0, w0 = clock(), time.perf_counter()
        lines = turn(client, api, text, thread_id, store)[2]
        out.ext_s += time.perf_counter() - w0
        time.sleep(0.02)  # the turn's last bookkeeping may follow the stream's end
        out.server_us.append((clock() - c0) / tokens * 1e6)
        pieces = [v["content"] for v in lines if v["variant"] == "Assistant"]
        saved = expected
        if store:
            stored = client.get(f"{api}/getthread", params={"thread_id": thread_id}).json()
            saved = [v["content"] for v in stored if v["variant"] == "Assistant"][-1]
        if "".join(pieces) != expected or saved != expected or len([p for p in pieces if p]) != tokens:
            raise SystemExit(f"thread {thread_id}: streamed or stored text differs from the {tokens} tokens sent")
        p0, w0 = time.process_time(), time.perf_counter()
        _, got, n = direct(client, llm, text)
        out.client_us.append((time.process_time() - p0) / tokens * 1e6)
        out.direct_s += time.perf_counter() - w0
        if got != expected or n != tokens:
            raise SystemExit("the fake LLM sent something else than asked")
    return out


@contextlib.contextmanager
def running(tmp: Path, extra: Sequence[str] = ()) -> Iterator[tuple[httpx.Client, str, str, Proc, Proc]]:
    """The fake LLM and a Jupyter server with the extension (its data in `tmp`), both answering:
    (client with the token, api URL, LLM URL, server process, fake process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FREVAGPT_", "JUPYTERHUB_", "LITELLM"))}
    env.update({f"JUPYTER_{d}_DIR": str(tmp / d.lower()) for d in ("CONFIG", "DATA", "RUNTIME")})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    llm_port, port = free_port(), free_port()
    llm = f"http://127.0.0.1:{llm_port}/v1"
    (tmp / "models.yaml").write_text(catalogue_yaml(llm))
    server_cmd = [
        sys.executable,
        "-m",
        "jupyter_server",
        "--allow-root",
        "--no-browser",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={TOKEN}",
        f"--ServerApp.root_dir={tmp}",
        "--ServerApp.jpserver_extensions=freva_gpt_ext=True",
        f"--FrevaGPT.litellm_config={tmp / 'models.yaml'}",
        f"--FrevaGPT.data_dir={tmp / 'data'}",
        *extra,
    ]
    fake_cmd = [sys.executable, "-m", "tests.fake_llm", "--port", str(llm_port)]
    api = f"http://127.0.0.1:{port}/api/chatbot"
    with (
        spawn(fake_cmd, env, tmp / "fake.log") as fake,
        spawn(server_cmd, env, tmp / "server.log") as server,
        httpx.Client(headers={"Authorization": f"token {TOKEN}"}, timeout=60, trust_env=False) as client,
    ):
        wait_ready(client, f"{llm}/models", fake, tmp / "fake.log")
        wait_ready(client, f"{api}/ping", server, tmp / "server.log")
        yield client, api, llm, server, fake


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2000, help="tokens of each long answer (default 2000)")
    parser.add_argument("--turns", type=int, default=50, help="short turns for the latency figures (default 50)")
    parser.add_argument("--reps", type=int, default=5, help="long answers for the CPU figures (default 5)")
    parser.add_argument("--paced", type=int, default=300, help="tokens of the paced answers, 0: none (default 300)")
    parser.add_argument("--delay", type=float, default=0.005, help="seconds between paced tokens (default 0.005)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp_name:
        tmp = Path(tmp_name)
        t_start = time.perf_counter()
        with running(tmp) as (client, api, llm, server, _fake):
            startup = time.perf_counter() - t_start
            clock = cpu_clock(server.pid)
            idle = settle(clock)
            c0 = clock()
            lat = latency(client, api, llm, args.turns)
            per_turn = (clock() - c0) / (args.turns + 3) * 1e3
            fast = long_turns(client, api, llm, clock, args.tokens, args.reps, 0.0)
            paced = long_turns(client, api, llm, clock, args.paced, 2, args.delay) if args.paced else None

    print(f"freva_gpt_ext streamresponse vs the fake LLM read directly ({os.cpu_count()} CPUs; server up in ", end="")
    print(f"{startup:.1f} s, idle {idle:.2f} ms CPU/s). Turns: {args.turns} short ones, each a new thread; ", end="")
    print(f"{args.reps} x {args.tokens} tokens at full speed; 2 x {args.paced} tokens {args.delay * 1e3:g} ms apart.\n")
    rate, direct_rate = fast.rates()
    rows: list[tuple[str, float, float | None, str, str]] = []
    for q in (0.5, 0.95):
        rows.append((f"first line p{q * 100:.0f}", pct(lat["line"], q), pct(lat["direct"], q), "ms", "+3 ms"))
    for q in (0.5, 0.95):
        rows.append(
            (f"first Assistant line p{q * 100:.0f}", pct(lat["assistant"], q), pct(lat["direct"], q), "ms", "+3 ms")
        )
    rows += [
        ("server CPU per short turn", per_turn, None, "ms", "(upstream 160 ms)"),
        ("CPU/token full speed, median", pct(fast.server_us, 0.5), pct(fast.client_us, 0.5), "us", "20 us"),
        ("CPU/token full speed, max", max(fast.server_us), max(fast.client_us), "us", "20 us"),
        ("tokens/s full speed", rate, direct_rate, "k/s", ""),
    ]
    if paced is not None:
        rows.append(("CPU/token paced, median", pct(paced.server_us, 0.5), pct(paced.client_us, 0.5), "us", ""))
    print(f"| {'metric':30} | {'extension':>12} | {'baseline':>12} | {'added/ratio':>11} | goal (ext.)")
    print(f"|{'-' * 32}|{'-' * 14}|{'-' * 14}|{'-' * 13}|{'-' * 19}")
    for metric, ext, base, unit, goal in rows:
        base_s = "-" if base is None else f"{base:.2f} {unit}"
        if base is None:
            added = "-"
        elif unit == "ms":
            added = f"{ext - base:+.2f} ms"
        else:
            added = f"x {ext / base:.2f}"
        print(f"| {metric:30} | {f'{ext:.2f} {unit}':>12} | {base_s:>12} | {added:>11} | {goal}")
    print("\nbaselines: a plain httpx client (this process) reading the fake directly; CPU/token: the server process")
    print(f"vs that client. Server us/token per full-speed turn: {', '.join(f'{x:.0f}' for x in fast.server_us)}.")
    print("Every long answer arrived whole, and getthread returned it stored in full.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
