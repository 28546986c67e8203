"""What the code interpreter adds to a round trip on a kernel gateway kernel, beside a raw websocket and a local kernel.

Run from the repository root: ``.venv/bin/python bench/bench_gateway.py [--runs 300] [--code 1]``.

A Jupyter Kernel Gateway (``jupyter-kernel-gateway``, a child process with a token, as in tests/test_gateway.py)
on this machine, and in this process jupyter_server's gateway kernel manager pointed at it:

- raw websocket (gateway): a plain tornado websocket to the kernel's ``/api/kernels/<id>/channels`` with the token:
  send ``execute_request``, read until the kernel is idle again and the reply is there. What any client pays.
- raw websocket, quick ACK (gateway): the same, acknowledging each frame at once (TCP_QUICKACK) as our connection
  does: the gateway writes without TCP_NODELAY, so each of its messages otherwise waits for our delayed ACK. The floor.
- KernelTool.run (gateway): the code tool on the same kernel (its thread's kernel), through our gateway connection.
- raw jupyter_client (local) and KernelTool.run (local): the same on a local kernel of jupyter_server's own kernel
  manager, for comparison.

The four are interleaved run by run in a shuffled order, so drift and warm-up hit them alike.
Goal: gateway tool p50 <= raw websocket p50 + 5 ms (and here: <= the quick-ACK floor + 5 ms).
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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.jsonutil import json_default
from jupyter_client.session import Session
from jupyter_server.gateway.gateway_client import GatewayClient
from jupyter_server.gateway.managers import GatewayMappingKernelManager
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.bench_kernel import raw_round_trip, tool_round_trip  # noqa: E402
from freva_gpt_ext.tools.gateway_connection import ack_now  # noqa: E402
from freva_gpt_ext.tools.kernel import KernelTool  # noqa: E402
from tests.gateway_process import KernelGatewayProcess  # noqa: E402


def row(name: str, samples: list[float], base: float | None) -> str:
    ms = sorted(s * 1000 for s in samples)
    p50, p90 = statistics.median(ms), ms[int(len(ms) * 0.9)]
    extra = "" if base is None else f"{p50 - base:+8.2f}"
    return f"| {name:<36} | {p50:8.2f} | {p90:8.2f} | {statistics.fmean(ms):8.2f} | {extra:>8} |"


class RawWebsocket:
    """The least a client of a gateway kernel does: one websocket, JSON messages, the channel named on each."""

    def __init__(self, ws: WebSocketClientConnection, quick_ack: bool) -> None:
        self.ws = ws
        self.quick_ack = quick_ack
        self.session = Session()

    @classmethod
    async def open(cls, gateway: KernelGatewayProcess, kernel_id: str, *, quick_ack: bool = False) -> RawWebsocket:
        url = f"ws://127.0.0.1:{gateway.port}/api/kernels/{kernel_id}/channels"
        request = HTTPRequest(url, headers={"Authorization": f"token {gateway.token}"})
        return cls(await websocket_connect(request), quick_ack)

    async def execute(self, code: str) -> None:
        content = {"code": code, "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False}
        msg = self.session.msg("execute_request", content)
        msg["channel"] = "shell"
        msg_id = msg["header"]["msg_id"]
        await self.ws.write_message(json.dumps(msg, default=json_default))
        idle = replied = False
        while not (idle and replied):
            frame = await asyncio.wait_for(self.ws.read_message(), 30)
            if self.quick_ack:
                ack_now(self.ws)
            assert isinstance(frame, str), "the socket closed"
            answer: dict[str, Any] = json.loads(frame)
            if answer["parent_header"].get("msg_id") != msg_id:
                continue  # the tool's messages: this socket sees every client's
            if answer["channel"] == "shell":
                replied = True
            elif answer["msg_type"] == "status" and answer["content"]["execution_state"] == "idle":
                idle = True


async def main(runs: int, code: str) -> int:
    with tempfile.TemporaryDirectory() as tmp, KernelGatewayProcess(Path(tmp) / "gateway") as gateway:
        # The gateway kernel manager reads its gateway from this singleton, as inside the server.
        GatewayClient.instance(url=gateway.url, auth_token=gateway.token, allowed_envs="THREAD_ID")
        gateway_km = GatewayMappingKernelManager(root_dir=tmp)
        local_km = AsyncMappingKernelManager(root_dir=tmp)
        gateway_tool = KernelTool(gateway_km, kernel_root=tmp, idle_timeout=0)
        local_tool = KernelTool(local_km, kernel_root=tmp, idle_timeout=0)
        raws: list[RawWebsocket] = []
        client: AsyncKernelClient | None = None
        try:
            for name, tool in (("gateway", gateway_tool), ("local", local_tool)):
                started = time.perf_counter()
                await tool_round_trip(tool, code)  # starts the thread's kernel
                print(f"{name} kernel start + first call: {(time.perf_counter() - started) * 1000:.0f} ms")
            kernel_id = next(iter(gateway_km.list_kernel_ids()))
            raws = [await RawWebsocket.open(gateway, kernel_id, quick_ack=quick) for quick in (False, True)]
            client = AsyncKernelClient()
            client.load_connection_info(
                local_km.get_kernel(next(iter(local_km.list_kernel_ids()))).get_connection_info()
            )
            client.start_channels()
            await client.wait_for_ready(timeout=60)
            ways: dict[str, Callable[[], Awaitable[None]]] = {
                "raw websocket (gateway)": lambda: raws[0].execute(code),
                "raw websocket, quick ACK (gateway)": lambda: raws[1].execute(code),
                "KernelTool.run (gateway)": lambda: tool_round_trip(gateway_tool, code),
                "raw jupyter_client (local)": lambda: raw_round_trip(client, code),  # type: ignore[arg-type]
                "KernelTool.run (local)": lambda: tool_round_trip(local_tool, code),
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
            for raw in raws:
                raw.ws.close()
            if client is not None:
                client.stop_channels()
            await gateway_tool.aclose()
            await local_tool.aclose()
            await local_km.shutdown_all()
    plain = statistics.median(samples["raw websocket (gateway)"]) * 1000
    base = statistics.median(samples["raw websocket, quick ACK (gateway)"]) * 1000
    local = statistics.median(samples["raw jupyter_client (local)"]) * 1000
    print(f"\n{runs} round trips of {code!r} per way (ms)\n")
    print(f"| {'way':<36} | {'p50':>8} | {'p90':>8} | {'mean':>8} | {'vs raw':>8} |")
    print(f"|{'-' * 38}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
    for name, values in samples.items():
        print(row(name, values, None if name.startswith("raw") else base if "gateway" in name else local))
    tool = statistics.median(samples["KernelTool.run (gateway)"]) * 1000
    print()
    for name, floor in (("raw websocket", plain), ("raw websocket, quick ACK", base)):
        verdict = "met" if tool <= floor + 5 else "NOT met"
        print(f"goal gateway tool p50 <= {name} p50 + 5 ms: {verdict} ({tool - floor:+.2f} ms)")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="measured round trips per way (after 20 warm-up)")
    parser.add_argument("--code", default="1", help="the statement to run")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.runs, args.code)))
