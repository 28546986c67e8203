"""Our own connection to one Jupyter kernel, and one execution on it.

`KernelConnection` is what the pool, the code tool and the kernel context use; two kinds implement it:
`ZmqKernelConnection` (here) for kernels of the server's own kernel manager, and `GatewayConnection`
(`gateway_connection.py`) for kernels on a Jupyter kernel gateway.

The kernel may be the user's notebook kernel, with JupyterLab connected to it as well. So we never borrow the
manager's client or session (replies could reach the wrong socket): a connection of our own, with a session of its
own, reads only the IOPub messages whose parent is our request. Stdin is never offered (nobody could answer).
"""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from queue import Empty
from typing import Any

import zmq.asyncio
from jupyter_client.asynchronous import AsyncKernelClient

# How often a running execution checks that its kernel still lives (while the kernel says nothing).
LIVENESS_INTERVAL = 0.5

# Sent (silently) before our code on an IPython kernel that is the user's: the next cell with our cell id runs
# without the output cache, so the user's `_`, `__`, `Out[n]` and `_n` stay theirs (store_history=False alone
# keeps the execution counter, but IPython would still file our result under the user's last `Out` number).
_GUARD = """\
def __freva_gpt_guard(cell_id):
    shell = get_ipython()
    hook = shell.displayhook
    saved = []

    def before(info):
        if getattr(info, "cell_id", None) == cell_id:
            saved.append((hook.cache_size, hook.do_full_cache))
            hook.cache_size, hook.do_full_cache = 0, 0

    def after(result):
        if getattr(getattr(result, "info", None), "cell_id", None) != cell_id:
            return
        if saved:
            hook.cache_size, hook.do_full_cache = saved[0]
        shell.events.unregister("pre_run_cell", before)
        shell.events.unregister("post_run_cell", after)

    shell.events.register("pre_run_cell", before)
    shell.events.register("post_run_cell", after)

try:
    __freva_gpt_guard({cell_id!r})
except Exception:
    pass
finally:
    del __freva_gpt_guard
"""


class KernelGone(Exception):
    """The kernel died, was restarted or was shut down: whatever ran there is lost."""


async def maybe_await(value: Any) -> Any:
    """jupyter_client managers are sync or async depending on their class: accept both."""
    if inspect.isawaitable(value):
        return await value
    return value


class KernelConnection(ABC):
    """Our connection to one kernel of the server's kernel manager; `lock` serialises our executions on it."""

    def __init__(self, kernel_manager: Any, kernel_id: str, *, thread_id: str | None = None) -> None:
        self.km = kernel_manager
        self.kernel_id = kernel_id
        # The thread whose own kernel this is; None for a user's notebook kernel (never shut down by us).
        self.thread_id = thread_id
        self.lock = asyncio.Lock()
        self.last_used = time.monotonic()
        self.ipython = False
        # `language_info.name` of the kernel's kernel_info reply ("" until connected).
        self.language = ""
        self.closed = False

    # -- the kernel ---------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.kernel_id in self.km

    @abstractmethod
    async def alive(self) -> bool:
        """Still the same, living kernel (a restarted kernel keeps its id but loses its state)."""

    @abstractmethod
    def server_busy(self) -> bool:
        """Busy with someone's execute request (the user's cell, a console), as far as we can tell."""

    async def interrupt(self) -> None:
        try:
            await maybe_await(self.km.interrupt_kernel(self.kernel_id))
        except Exception as err:
            if not await self.alive():
                raise KernelGone(f"The kernel {self.kernel_id} is gone.") from err
            raise

    # -- connecting ---------------------------------------------------------------------------------------
    @abstractmethod
    async def connect(self, timeout: float) -> None:
        """Open the connection and wait until the kernel answers and its IOPub delivers to us (else
        `KernelGone` or `TimeoutError`); sets `language` and `ipython` from the kernel's kernel_info."""

    @abstractmethod
    def close(self) -> None:
        """Stop reading; the kernel itself is left alone."""

    def _kernel_info(self, reply: Mapping[str, Any]) -> None:
        info = reply.get("content") or {}
        self.language = str((info.get("language_info") or {}).get("name", ""))
        self.ipython = self.language == "python" and info.get("implementation") == "ipython"

    # -- executing ----------------------------------------------------------------------------------------
    def execute(self, code: str, *, store_history: bool, guard: bool) -> str:
        """Queue our code on the kernel's shell channel; the request's msg_id."""
        metadata: dict[str, Any] = {}
        if guard:
            cell_id = f"freva-gpt-{uuid.uuid4().hex}"
            metadata["cellId"] = cell_id
            # Silent: no execute_input, no counter, no history. Its output and reply are nobody's and filtered out.
            self._send_execute(_GUARD.format(cell_id=cell_id), silent=True)
        return self._send_execute(code, silent=False, store_history=store_history, metadata=metadata)

    def evaluate(self, expressions: Mapping[str, str]) -> str:
        """Queue a silent request that evaluates `expressions` in the kernel's namespace: no execute_input, no
        output, no history, the execution counter untouched; the values come in the execute reply's
        `user_expressions` (see `reply`). The request's msg_id."""
        return self._send_execute("", silent=True, user_expressions=expressions)

    def _send_execute(
        self,
        code: str,
        *,
        silent: bool,
        store_history: bool = False,
        user_expressions: Mapping[str, str] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        content = {
            "code": code,
            "silent": silent,
            "store_history": store_history,
            "user_expressions": dict(user_expressions or {}),
            "allow_stdin": False,
            # True would make ipykernel abort every request queued behind a failing one: the user's too.
            "stop_on_error": False,
        }
        return self._send("shell", "execute_request", content, metadata or {})

    @abstractmethod
    def _send(self, channel: str, msg_type: str, content: dict[str, Any], metadata: dict[str, Any]) -> str:
        """Send a request of ours on `channel` ("shell" or "control"); its msg_id. `KernelGone` when closed."""

    @abstractmethod
    async def reply(self, msg_id: str, until: float) -> dict[str, Any] | None:
        """Our request's reply, waiting until `until` (None: none by then); replies to other requests are
        skipped."""

    @abstractmethod
    async def poll_reply(self, msg_id: str) -> dict[str, Any] | None:
        """Our reply if it is already there (an aborted request gets one without any IOPub message); it stays
        there for `reply`."""

    @abstractmethod
    async def next_iopub(self, msg_id: str, timeout: float) -> dict[str, Any] | None:
        """The next IOPub message that may belong to request `msg_id`, or None when none comes within `timeout`.
        The caller still checks the parent: a connection may hand over other messages too."""


class ZmqKernelConnection(KernelConnection):
    """A ZMQ client of one kernel of the server's own (local) kernel manager."""

    def __init__(
        self, kernel_manager: Any, kernel_id: str, context: zmq.asyncio.Context, *, thread_id: str | None = None
    ) -> None:
        super().__init__(kernel_manager, kernel_id, thread_id=thread_id)
        self.context = context
        self.client: AsyncKernelClient | None = None
        self._pid: int | None = None
        self._replies: dict[str, dict[str, Any]] = {}

    # -- the kernel ---------------------------------------------------------------------------------------
    def _kernel(self) -> Any:
        return self.km.get_kernel(self.kernel_id)

    def _process_id(self) -> int | None:
        process = getattr(getattr(self._kernel(), "provisioner", None), "process", None)
        return getattr(process, "pid", None)

    async def alive(self) -> bool:
        """Still the same, living kernel process (a restarted kernel keeps its id but loses its state)."""
        if self.closed or not self.exists():
            return False
        try:
            if self._pid is not None and self._process_id() not in (None, self._pid):
                return False
            return bool(await maybe_await(self._kernel().is_alive()))
        except Exception:
            return False

    def server_busy(self) -> bool:
        """The server's view (it watches every kernel's IOPub): busy with someone's execute request."""
        try:
            return getattr(self._kernel(), "execution_state", None) == "busy"
        except KeyError:
            return False

    # -- connecting ---------------------------------------------------------------------------------------
    async def connect(self, timeout: float) -> None:
        """Open our channels and wait until the kernel answers and IOPub delivers to us."""
        kernel = self._kernel()
        ready = getattr(kernel, "ready", None)
        if isinstance(ready, asyncio.Future) and not ready.done():
            # A pending kernel (`use_pending_kernels`) has no ports yet.
            await asyncio.wait_for(asyncio.shield(ready), timeout)
        factory = getattr(kernel, "client_factory", None)
        if not (isinstance(factory, type) and issubclass(factory, AsyncKernelClient)):
            factory = AsyncKernelClient
        client = factory(context=self.context)
        # Connection info without the manager's session object: our session gets its own id.
        client.load_connection_info(kernel.get_connection_info(session=False))
        client.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=True)
        self._pid = self._process_id()
        try:
            await self._handshake(client, timeout)
        except BaseException:
            client.stop_channels()
            raise
        self.client = client

    async def _handshake(self, client: AsyncKernelClient, timeout: float) -> None:
        """kernel_info on the control channel (answered even while a cell runs), until IOPub is subscribed.

        A SUB socket misses what is published before its subscription arrives: our first execution's
        messages could be lost. Seeing any IOPub message that answers us (or ipykernel's welcome) proves it.
        """
        deadline = time.monotonic() + timeout
        channel = client.control_channel
        while True:
            request = client.session.msg("kernel_info_request")
            msg_id = request["header"]["msg_id"]
            channel.send(request)
            reply = await _reply_on(channel, msg_id, min(deadline, time.monotonic() + 2.0))
            if reply is None:
                # Kernels without kernel_info on control (not ipykernel) get it on shell, and vice versa.
                channel = client.shell_channel if channel is client.control_channel else client.control_channel
            else:
                self._kernel_info(reply)
                if await self._iopub_answers(client, msg_id, time.monotonic() + 0.5):
                    return
            if not await self.alive():
                raise KernelGone(f"The kernel {self.kernel_id} is not running.")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"The kernel {self.kernel_id} did not answer within {timeout:.0f} s.")

    @staticmethod
    async def _iopub_answers(client: AsyncKernelClient, msg_id: str, until: float) -> bool:
        while (left := until - time.monotonic()) > 0:
            try:
                msg = await client.get_iopub_msg(timeout=left)
            except Empty:
                return False
            if msg.get("msg_type") == "iopub_welcome" or (msg.get("parent_header") or {}).get("msg_id") == msg_id:
                return True
        return False

    def close(self) -> None:
        self.closed = True
        if self.client is not None:
            self.client.stop_channels()
            self.client = None

    # -- executing ----------------------------------------------------------------------------------------
    def _send(self, channel: str, msg_type: str, content: dict[str, Any], metadata: dict[str, Any]) -> str:
        client = self._require_client()
        request = client.session.msg(msg_type, content, metadata=metadata)
        (client.control_channel if channel == "control" else client.shell_channel).send(request)
        return str(request["header"]["msg_id"])

    def _require_client(self) -> AsyncKernelClient:
        if self.client is None:
            raise KernelGone(f"The connection to kernel {self.kernel_id} is closed.")
        return self.client

    async def reply(self, msg_id: str, until: float) -> dict[str, Any] | None:
        if msg_id in self._replies:
            return self._replies.pop(msg_id)
        client = self._require_client()
        return await _reply_on(client.shell_channel, msg_id, until)

    async def poll_reply(self, msg_id: str) -> dict[str, Any] | None:
        client = self._require_client()
        while True:
            try:
                msg = await client.get_shell_msg(timeout=0)
            except Empty:
                return self._replies.get(msg_id)
            parent = (msg.get("parent_header") or {}).get("msg_id")
            if parent:
                self._replies[parent] = msg
                while len(self._replies) > 8:  # replies to abandoned requests: nobody asks for them
                    del self._replies[next(iter(self._replies))]

    async def next_iopub(self, msg_id: str, timeout: float) -> dict[str, Any] | None:
        # One SUB socket for every request (and the user's cells): the caller filters.
        try:
            return await self._require_client().get_iopub_msg(timeout=timeout)
        except Empty:
            return None


async def _reply_on(channel: Any, msg_id: str, until: float) -> dict[str, Any] | None:
    while (left := until - time.monotonic()) > 0:
        try:
            msg = await channel.get_msg(timeout=left)
        except Empty:
            return None
        if (msg.get("parent_header") or {}).get("msg_id") == msg_id:
            return msg
    return None


class Execution:
    """One request of ours on a kernel, followed through its IOPub messages."""

    def __init__(self, conn: KernelConnection, msg_id: str, sink: Callable[[dict[str, Any]], None]) -> None:
        self.conn = conn
        self.msg_id = msg_id
        self.sink = sink
        self.sent_at = time.monotonic()
        self.started_at: float | None = None
        self.finished = False
        self.aborted = False
        self._next_check = self.sent_at + LIVENESS_INTERVAL

    @property
    def started(self) -> bool:
        return self.started_at is not None

    async def follow(self, deadline: float, *, until_started: bool = False) -> None:
        """Read this execution's messages until it finishes (or starts), or `deadline` passes.

        Raises `KernelGone` when the kernel dies or restarts meanwhile.
        """
        while not self.finished and not (until_started and self.started):
            now = time.monotonic()
            if now >= deadline:
                return
            if now >= self._next_check:
                await self._check()
                if self.finished:
                    return
                self._next_check = time.monotonic() + LIVENESS_INTERVAL
                continue
            msg = await self.conn.next_iopub(self.msg_id, min(deadline, self._next_check) - now)
            if msg is None:
                continue
            header = msg.get("header") or {}
            content = msg.get("content") or {}
            kind = header.get("msg_type") or msg.get("msg_type")
            if kind == "status" and content.get("execution_state") == "starting" and self.started:
                # A new kernel process announces itself on the same ports while ours ran: it is gone. (A fresh
                # kernel's own announcement may reach us before our request starts: not a restart.)
                raise KernelGone("The kernel restarted.")
            if (msg.get("parent_header") or {}).get("msg_id") != self.msg_id:
                continue  # someone else's output (the user's cells, JupyterLab) or an abandoned request's
            if kind == "status":
                state = content.get("execution_state")
                if state == "busy" and self.started_at is None:
                    self.started_at = time.monotonic()
                elif state == "idle":
                    self.finished = True
                    if self.started_at is None:
                        self.started_at = self.sent_at
            else:
                self.sink(msg)

    async def _check(self) -> None:
        if not await self.conn.alive():
            raise KernelGone("The kernel died.")
        reply = await self.conn.poll_reply(self.msg_id)
        if reply is not None:
            if (reply.get("content") or {}).get("status") == "aborted":
                self.aborted = self.finished = True
