"""Our connection to one kernel on a Jupyter kernel gateway (Kernel Gateway, Enterprise Gateway).

The server's gateway kernel manager (`--GatewayClient.url`) starts, interrupts and shuts down the kernel over the
gateway's REST API; we execute over a websocket of our own to `<ws_url>/api/kernels/<id>/channels`. Why our own:
jupyter_server's gateway kernel client (2.21) sends no auth header on its websocket (a gateway with a token answers
401), drops the channel of each message, polls its queues in a busy loop while a cell runs, and its kernels never
complete the `ready` wait of a local kernel. Everything else is the libraries': the websocket is tornado's, the
messages jupyter_client's `Session`'s, the URL, auth headers, TLS options and token renewal jupyter_server's
`GatewayClient`'s. It speaks the gateway's default ("legacy") kernel websocket protocol: one JSON text frame per
message, its channel named in the message.

What arrives is sorted by request: IOPub messages go to the queue of the request of ours they answer (the user's
cells and JupyterLab's requests are dropped, so nothing piles up while nobody reads), replies to the request's
future. A `restarting` or `dead` status from the gateway, a new kernel process announcing itself, a shutdown or a
closed socket mean the kernel we knew is gone (`KernelGone`): its state is lost, the pool starts a fresh one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections import OrderedDict
from typing import Any

from jupyter_client.jsonutil import json_default
from jupyter_client.session import Session
from jupyter_server.gateway.gateway_client import GatewayClient
from jupyter_server.gateway.managers import GatewayMappingKernelManager
from jupyter_server.utils import url_escape, url_path_join
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError, websocket_connect

from .kernel_client import KernelConnection, KernelGone

log = logging.getLogger(__name__)

# A plot or a long output comes as one message: tornado's default limit (10 MiB) would close the socket on it.
MAX_MESSAGE_SIZE = 256 * 1024 * 1024
# Pings find a gateway that vanished without closing the socket (a host or network gone).
PING_INTERVAL = 30.0
# Requests whose messages we still sort; ours are serialised by the connection's lock, so a few are in flight.
RECENT_REQUESTS = 64
# Status messages answering these do not mean the kernel runs someone's code (as jupyter_server counts them).
UNTRACKED_PARENTS = frozenset(
    {"kernel_info_request", "comm_info_request", "shutdown_request", "interrupt_request", "debug_request"}
)
# Linux only. The gateway writes a request's messages without TCP_NODELAY: each waits for our ACK of the one
# before, which the kernel of our host delays by 40 ms. Acknowledging at once takes a round trip from ~50 to ~10 ms.
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)
_GONE = object()


def on_gateway(kernel_manager: Any) -> bool:
    """Whether the server's kernels run on a kernel gateway (`--GatewayClient.url`)."""
    return isinstance(kernel_manager, GatewayMappingKernelManager)


def channels_url(gateway: GatewayClient, kernel_id: str, session_id: str) -> str:
    """The kernel's websocket on the gateway, as jupyter_server builds it (the session id keeps the gateway from
    taking us for a stale connection of someone else's)."""
    base = url_path_join(gateway.ws_url or "", gateway.kernels_endpoint, url_escape(kernel_id), "channels")
    return f"{base}?session_id={url_escape(session_id)}"


class _Request:
    """What came for one request of ours: its IOPub messages, in order, and its reply."""

    __slots__ = ("iopub", "reply")

    def __init__(self) -> None:
        self.iopub: asyncio.Queue[Any] = asyncio.Queue()
        self.reply: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()


class GatewayConnection(KernelConnection):
    """A websocket client of one kernel of the server's gateway kernel manager (see the module's doc)."""

    def __init__(
        self,
        kernel_manager: Any,
        kernel_id: str,
        *,
        thread_id: str | None = None,
        gateway: GatewayClient | None = None,
    ) -> None:
        super().__init__(kernel_manager, kernel_id, thread_id=thread_id)
        # The gateway managers configure themselves from this singleton: so do we.
        self.gateway = gateway or GatewayClient.instance()
        # A session of our own (its own id), as a local client of ours has: replies never reach other clients.
        self.session = Session()
        self._ws: WebSocketClientConnection | None = None
        self._reader: asyncio.Future[None] | None = None
        self._requests: OrderedDict[str, _Request] = OrderedDict()
        self._gone: str | None = None
        self._connected = False
        self._state = "idle"

    # -- the kernel ---------------------------------------------------------------------------------------
    async def alive(self) -> bool:
        """Still the kernel we connected to: no restart, death or shutdown seen, the socket open."""
        return not self.closed and self._gone is None and self.exists()

    def server_busy(self) -> bool:
        """Busy with someone's execute request, from the status messages the gateway sends us (every client's)."""
        return self._state == "busy"

    # -- connecting ---------------------------------------------------------------------------------------
    async def connect(self, timeout: float) -> None:
        """Open the websocket and wait until the kernel answers on it (no `ready` or process checks: the
        gateway's kernels have neither here)."""
        deadline = time.monotonic() + timeout
        try:
            kernel = self.km.get_kernel(self.kernel_id)
        except KeyError:
            raise KernelGone(f"The kernel {self.kernel_id} is not running.") from None
        if getattr(kernel, "execution_state", None) == "busy":
            self._state = "busy"
        args = self.gateway.load_connection_args()
        # The gateway's own timeouts are for starting kernels (a minute and more): ours is the caller's.
        for name in ("connect_timeout", "request_timeout"):
            args[name] = min(float(args.get(name) or timeout), timeout)
        request = HTTPRequest(channels_url(self.gateway, self.kernel_id, self.session.session), **args)
        try:
            self._ws = await websocket_connect(request, max_message_size=MAX_MESSAGE_SIZE, ping_interval=PING_INTERVAL)
        except HTTPClientError as err:
            if err.code == 599:  # tornado's code for no answer in time
                raise KernelGone(f"The gateway did not answer for kernel {self.kernel_id}: {err.message}") from None
            raise KernelGone(
                f"The gateway refused the connection to kernel {self.kernel_id}: HTTP {err.code} {err.message}"
            ) from None
        except OSError as err:
            raise KernelGone(f"The gateway did not answer for kernel {self.kernel_id}: {err}") from None
        if self._ws.protocol is not None:
            # A guarded execution is two frames: the second must not wait for the gateway's ACK of the first.
            self._ws.protocol.set_nodelay(True)
        self._reader = asyncio.ensure_future(self._read(self._ws))
        try:
            await self._handshake(deadline, timeout)
        except BaseException:
            self.close()
            raise
        self._connected = True

    async def _handshake(self, deadline: float, timeout: float) -> None:
        """kernel_info on the control channel (answered even while a cell runs), until IOPub answers us too.

        The gateway drops what arrives before it has wired the kernel's channels to our socket: ask again.
        """
        channel = "control"
        while True:
            msg_id = self._send(channel, "kernel_info_request", {}, {})
            reply = await self.reply(msg_id, min(deadline, time.monotonic() + 2.0))
            if reply is not None:
                self._kernel_info(reply)
                if await self.next_iopub(msg_id, max(0.0, min(deadline, time.monotonic() + 0.5) - time.monotonic())):
                    return
            # Kernels that answer kernel_info only on shell (not ipykernel), or say nothing on IOPub for control.
            channel = "shell" if channel == "control" else "control"
            if not await self.alive():
                raise KernelGone(self._gone or f"The kernel {self.kernel_id} is not running.")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"The kernel {self.kernel_id} did not answer within {timeout:.0f} s.")

    def close(self) -> None:
        self.closed = True
        self._lose(f"The connection to kernel {self.kernel_id} is closed.")
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None

    # -- reading ------------------------------------------------------------------------------------------
    async def _read(self, ws: WebSocketClientConnection) -> None:
        try:
            while (frame := await ws.read_message()) is not None:
                ack_now(ws)
                if isinstance(frame, bytes):
                    continue  # a message with binary buffers (comms, widgets): never an answer to us
                try:
                    msg = json.loads(frame)
                except ValueError:
                    log.warning("Kernel %s: the gateway sent a frame that is no JSON message", self.kernel_id)
                    continue
                if isinstance(msg, dict):
                    self._dispatch(msg)
        except Exception as err:  # the reader must end in `_lose`, whatever broke it
            log.warning("Kernel %s: reading from the gateway failed: %s", self.kernel_id, err)
        code = ws.close_code
        self._lose(
            f"The gateway closed the connection to kernel {self.kernel_id}"
            + (f" ({code} {ws.close_reason or ''})".rstrip() + "." if code else ".")
        )

    def _dispatch(self, msg: dict[str, Any]) -> None:
        channel = msg.get("channel")
        parent_header = msg.get("parent_header") or {}
        request = self._requests.get(parent_header.get("msg_id") or "")
        if channel == "iopub":
            kind = (msg.get("header") or {}).get("msg_type") or msg.get("msg_type")
            if kind == "status":
                state = (msg.get("content") or {}).get("execution_state")
                if state in ("restarting", "dead"):
                    # The gateway's own word: the process was replaced (or could not be).
                    self._lose(f"The kernel {self.kernel_id} died ({state} on the gateway).")
                    return
                if state == "starting" and self._connected:
                    self._lose(f"The kernel {self.kernel_id} restarted.")
                    return
                if parent_header.get("msg_type") not in UNTRACKED_PARENTS and state in ("busy", "idle"):
                    self._state = state
            elif kind == "shutdown_reply" and request is None:
                self._lose(f"The kernel {self.kernel_id} was shut down.")
                return
            if request is not None:
                request.iopub.put_nowait(msg)
        elif channel in ("shell", "control") and request is not None and not request.reply.done():
            request.reply.set_result(msg)

    def _lose(self, reason: str) -> None:
        """The kernel we knew is gone (or we stopped reading): every waiter learns it at once."""
        if self._gone is None:
            self._gone = reason
        for request in self._requests.values():
            request.iopub.put_nowait(_GONE)
            if not request.reply.done():
                request.reply.set_result(None)
        if self._ws is not None:
            self._ws.close()

    # -- executing ----------------------------------------------------------------------------------------
    def _send(self, channel: str, msg_type: str, content: dict[str, Any], metadata: dict[str, Any]) -> str:
        if self._ws is None or self._gone is not None:
            raise KernelGone(self._gone or f"The connection to kernel {self.kernel_id} is closed.")
        msg = self.session.msg(msg_type, content, metadata=metadata)
        msg["channel"] = channel
        msg_id = str(msg["header"]["msg_id"])
        self._requests[msg_id] = _Request()
        while len(self._requests) > RECENT_REQUESTS:
            self._requests.popitem(last=False)
        try:
            written = self._ws.write_message(json.dumps(msg, default=json_default))
        except WebSocketClosedError:
            self._lose(f"The gateway closed the connection to kernel {self.kernel_id}.")
            raise KernelGone(self._gone) from None
        # A write that fails later shows as a closed socket to the reader; this only keeps asyncio quiet.
        written.add_done_callback(lambda done: done.cancelled() or done.exception())
        return msg_id

    async def reply(self, msg_id: str, until: float) -> dict[str, Any] | None:
        request = self._requests.get(msg_id)
        if request is None:
            return None
        if not request.reply.done():
            left = until - time.monotonic()
            if left <= 0:
                return None
            try:
                await asyncio.wait_for(asyncio.shield(request.reply), left)
            except TimeoutError:
                return None
        msg = request.reply.result()
        if msg is None:
            raise KernelGone(self._gone or f"The kernel {self.kernel_id} is gone.")
        return msg

    async def poll_reply(self, msg_id: str) -> dict[str, Any] | None:
        request = self._requests.get(msg_id)
        if request is None or not request.reply.done():
            return None
        return request.reply.result()

    async def next_iopub(self, msg_id: str, timeout: float) -> dict[str, Any] | None:
        request = self._requests.get(msg_id)
        if request is None:
            if self._gone is not None:
                raise KernelGone(self._gone)
            # Long forgotten (dozens of requests ago): nothing more of it is sorted for us.
            await asyncio.sleep(max(0.0, timeout))
            return None
        try:
            if timeout <= 0:
                msg = request.iopub.get_nowait()
            else:
                msg = await asyncio.wait_for(request.iopub.get(), timeout)
        except (asyncio.QueueEmpty, TimeoutError):
            return None
        if msg is _GONE:
            request.iopub.put_nowait(_GONE)  # for whoever reads next
            raise KernelGone(self._gone or f"The kernel {self.kernel_id} is gone.")
        return msg


def ack_now(ws: WebSocketClientConnection) -> None:
    """Acknowledge what the gateway sent at once (see `_QUICKACK`); Linux resets the flag, so after every read."""
    stream = getattr(getattr(ws, "protocol", None), "stream", None)
    sock = getattr(stream, "socket", None)
    if _QUICKACK is not None and sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        except OSError:
            pass
