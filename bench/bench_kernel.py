"""What the code interpreter adds to a kernel round trip: a trivial statement, three ways, on one kernel.

Run from the repository root: ``.venv/bin/python bench/bench_kernel.py [--runs 300] [--code 1]``.

- raw: a plain jupyter_client ``AsyncKernelClient``: send ``execute_request``, read IOPub until the kernel is
  idle again, take the execute reply. The floor: what any client pays.
- tool: ``KernelTool.run`` (our own client and session, filtering, output collection, the variants).
- turn: a whole orchestrator turn around it, with an in-process stand-in LLM that answers at once: a tool
  call, then its text after the tool result. That is what a turn adds on top of the LLM itself.

The kernel is a per-thread kernel started by the tool through jupyter_server's own kernel manager class;
the three are interleaved run by run in a shuffled order, so drift, warm-up and whatever the kernel does after
a request hit them alike. Goal: turn p50 <= raw p50 + 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from freva_gpt_ext.core.llm import Delta, ModelEntry, ToolCallDelta  # noqa: E402
from freva_gpt_ext.core.orchestrator import Orchestrator, TurnInput  # noqa: E402
from freva_gpt_ext.core.prompts import PromptLibrary  # noqa: E402
from freva_gpt_ext.paths import data_folder  # noqa: E402
from freva_gpt_ext.tools.base import ToolContext  # noqa: E402
from freva_gpt_ext.tools.kernel import KernelTool  # noqa: E402
from freva_gpt_ext.variants import CODE_OUTPUT  # noqa: E402

THREAD = "bench"
MODEL = ModelEntry("stand-in", {"model": "stand-in"}, {"supports_function_calling": True})


class InstantLLM:
    """Asks for `code` once, then answers with a line of text: an LLM that costs nothing."""

    def __init__(self, code: str) -> None:
        self.arguments = json.dumps({"code": code})

    async def stream(
        self, model: ModelEntry, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> AsyncIterator[Delta]:
        if messages[-1]["role"] == "tool":
            yield Delta(text="done")
        else:
            yield Delta(tool_calls=[ToolCallDelta(0, "call_1", "code_interpreter", self.arguments)])


async def raw_round_trip(client: AsyncKernelClient, code: str) -> None:
    msg_id = client.execute(code, store_history=True, allow_stdin=False)
    while True:
        msg = await client.get_iopub_msg(timeout=30)
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == "status"
            and msg["content"]["execution_state"] == "idle"
        ):
            break
    while (await client.get_shell_msg(timeout=30))["parent_header"].get("msg_id") != msg_id:
        pass


async def tool_round_trip(tool: KernelTool, code: str) -> None:
    ctx = ToolContext(thread_id=THREAD, owner="bench")
    outputs = [v async for v in tool.run("call_1", {"code": code}, ctx) if v.variant == CODE_OUTPUT]
    assert len(outputs) == 1, outputs


async def turn_round_trip(orchestrator: Orchestrator, code: str) -> None:
    ctx = ToolContext(thread_id=THREAD, owner="bench")
    turn = TurnInput(thread_id=THREAD, owner="bench", model=MODEL, user_input="go", history=[], ctx=ctx)
    variants = [v async for v in orchestrator.run(turn)]
    assert any(v.variant == CODE_OUTPUT for v in variants), variants


def row(name: str, samples: list[float], base: float | None) -> str:
    ms = sorted(s * 1000 for s in samples)
    p50, p90 = statistics.median(ms), ms[int(len(ms) * 0.9)]
    extra = "" if base is None else f"{p50 - base:+8.2f}"
    return f"| {name:<32} | {p50:8.2f} | {p90:8.2f} | {statistics.fmean(ms):8.2f} | {extra:>8} |"


async def main(runs: int, code: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        km = AsyncMappingKernelManager(root_dir=tmp)
        tool = KernelTool(km, kernel_root=tmp, idle_timeout=0)
        prompts = PromptLibrary([data_folder("prompt_library")], "baseline")
        orchestrator = Orchestrator(
            InstantLLM(code),  # type: ignore[arg-type]
            prompts,
            {tool.name: tool},
            max_tool_rounds=2,
            tool_result_chars=20000,
        )
        client: AsyncKernelClient | None = None
        try:
            started = time.perf_counter()
            await tool_round_trip(tool, code)  # starts the thread's kernel
            print(f"kernel start + first call: {(time.perf_counter() - started) * 1000:.0f} ms")
            kernel_id = next(iter(km.list_kernel_ids()))
            client = AsyncKernelClient()
            client.load_connection_info(km.get_kernel(kernel_id).get_connection_info())
            client.start_channels()
            await client.wait_for_ready(timeout=60)
            ways: dict[str, Callable[[], Awaitable[None]]] = {
                "raw jupyter_client execute": lambda: raw_round_trip(client, code),  # type: ignore[arg-type]
                "KernelTool.run": lambda: tool_round_trip(tool, code),
                "orchestrator turn (instant LLM)": lambda: turn_round_trip(orchestrator, code),
            }
            samples: dict[str, list[float]] = {name: [] for name in ways}
            shuffler = random.Random(42)
            order = list(ways.items())
            for i in range(runs + 20):
                shuffler.shuffle(order)
                for name, way in order:
                    t0 = time.perf_counter()
                    await way()
                    if i >= 20:  # warm-up
                        samples[name].append(time.perf_counter() - t0)
        finally:
            if client is not None:
                client.stop_channels()
            await tool.aclose()
            await km.shutdown_all()
    raw = statistics.median(samples["raw jupyter_client execute"]) * 1000
    print(f"\n{runs} round trips of {code!r} on one kernel (ms)\n")
    print(f"| {'way':<32} | {'p50':>8} | {'p90':>8} | {'mean':>8} | {'vs raw':>8} |")
    print(f"|{'-' * 34}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
    for name, values in samples.items():
        print(row(name, values, None if name.startswith("raw") else raw))
    turn = statistics.median(samples["orchestrator turn (instant LLM)"]) * 1000
    verdict = "met" if turn <= raw + 5 else "NOT met"
    print(f"\ngoal turn p50 <= raw p50 + 5 ms: {verdict} ({turn - raw:+.2f} ms)")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="measured round trips per way (after 20 warm-up)")
    parser.add_argument("--code", default="1", help="the statement to run")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.runs, args.code)))
