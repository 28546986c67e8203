"""The kernels `code_interpreter` runs code in, and their lifecycle (running code in them is `kernel.py`'s job).

- One kernel per thread, keyed by (scope, thread id) so that a memory-only thread and a stored one with the same id
  never share one, and never handed to a user other than the one it was started for. Started through the server's
  kernel manager (JupyterLab lists it), working in `<kernel_root>/<thread_id>/` (standalone, where one account serves
  every user: `<kernel_root>/<user>/<thread_id>/`), with an allow-listed environment (`kernel_env.py`) plus
  `THREAD_ID` and the Freva configuration. Shut down when idle (the reaper), when its thread is deleted and when the
  server stops.
- On a kernel gateway (the server runs with `--GatewayClient.url`) the same, through the server's gateway kernel
  manager, with our own websocket connection (`gateway_connection.py`); each start names the thread's owner as
  `KERNEL_USERNAME`, and the working directory is `gateway_kernel_root` (the gateway's own when empty): the server's
  folders need not exist where the kernels run.
- Connections of our own to the users' notebook kernels, which we never shut down; closed when idle.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq.asyncio

from ..variants import THREAD_ID_RE
from .base import ToolContext
from .gateway_connection import GatewayConnection, on_gateway
from .kernel_client import KernelConnection, KernelGone, ZmqKernelConnection, maybe_await
from .kernel_env import kernel_environment

CONFIG_HEADERS = ("freva-config", "x-freva-config-path")
CONFIG_ENV = "EVALUATION_SYSTEM_CONFIG_FILE"
_FOLDER_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")
# Seconds between further shutdown requests for a gateway kernel (about 8 s in all, less than a server's stop).
GATEWAY_SHUTDOWN_RETRIES = (0.5, 1.0, 2.0, 4.0)


class KernelFailure(Exception):
    """No kernel for the call, or the call lost its kernel; the message becomes the call's `CodeError`."""


def user_folder(name: str) -> str:
    """A folder name for a user: lower-case letters, digits, `_` and `-` stay, every other byte of the name is
    `%XX`. Safe on any filesystem (case-insensitive ones too), and two names never share a folder."""
    return "".join(chr(b) if chr(b) in _FOLDER_SAFE else f"%{b:02X}" for b in name.encode("utf-8", "surrogatepass"))


def freva_config_file(headers: Mapping[str, str], configured: str) -> str:
    """The Freva configuration a kernel gets: a trusted proxy's header (`headers` hold only a trusted proxy's),
    else the configured file."""
    lowered = {k.lower(): v for k, v in headers.items()}
    for name in CONFIG_HEADERS:
        if lowered.get(name):
            return lowered[name]
    return configured


@dataclass(eq=False)
class ThreadKernel:
    """A thread's kernel, whose it is, and the code that succeeded in it during the current turn (for a replay)."""

    owner: str
    conn: KernelConnection | None = None
    turn: ToolContext | None = None
    turn_codes: list[tuple[str, str]] = field(default_factory=list)
    start_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_used: float = field(default_factory=time.monotonic)


class KernelPool:
    """The per-thread kernels and the notebook-kernel connections of one `code_interpreter` (see the module's doc)."""

    def __init__(
        self,
        kernel_manager: Any,
        *,
        session_manager: Any = None,
        kernel_root: str | Path,
        kernel_name: str | None = None,
        idle_timeout: float = 3600.0,
        ready_timeout: float = 60.0,
        evaluation_system_config_file: str = "",
        kernel_env: Iterable[str] = (),
        withheld_env: Collection[str] = (),
        folder_per_user: bool = False,
        gateway_kernel_root: str = "",
        log: logging.Logger | None = None,
    ) -> None:
        self.km = kernel_manager
        # Kernels on a kernel gateway: started there, reached through our websocket connection.
        self.gateway = on_gateway(kernel_manager)
        self.gateway_kernel_root = gateway_kernel_root
        self.session_manager = session_manager
        self.kernel_root = Path(kernel_root).expanduser().absolute()
        self.kernel_name = kernel_name or None
        self.idle_timeout = idle_timeout
        self.ready_timeout = ready_timeout
        self.evaluation_system_config_file = evaluation_system_config_file
        self.kernel_env = tuple(kernel_env)
        self.withheld_env = frozenset(withheld_env)
        self.folder_per_user = folder_per_user
        self.log = log or logging.getLogger(__name__)
        self._context = zmq.asyncio.Context()
        self._threads: dict[tuple[str, str], ThreadKernel] = {}  # by (scope, thread id)
        self._owners: dict[str, str] = {}  # kernel id -> owner, for every per-thread kernel we started
        self._user: dict[str, KernelConnection] = {}
        self._user_lock = asyncio.Lock()
        self._shutdowns: set[asyncio.Future[Any]] = set()  # kernel shutdowns: awaited at the end, never cut
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False

    def environment(self) -> dict[str, str]:
        """A kernel's own environment (the probe's too), allow-listed from the server's (read, never written)."""
        return kernel_environment(os.environ, extra=self.kernel_env, withheld=self.withheld_env)

    def kernel_owner(self, kernel_id: str) -> str | None:
        """The owner of the thread whose kernel this is; None when it is no per-thread kernel of ours."""
        return self._owners.get(kernel_id)

    def _connection(self, kernel_id: str, *, thread_id: str | None = None) -> KernelConnection:
        if self.gateway:
            return GatewayConnection(self.km, kernel_id, thread_id=thread_id)
        return ZmqKernelConnection(self.km, kernel_id, self._context, thread_id=thread_id)

    async def kernel_spec_of(self, ctx: ToolContext) -> str | None:
        """The kernel spec of the kernel this turn's code runs in (None: a notebook kernel that is gone)."""
        if not (ctx.kernel_id or ctx.notebook_path):
            return self.kernel_name
        kernel_id = ctx.kernel_id or await self._kernel_of_notebook(ctx.notebook_path)
        if not kernel_id or kernel_id not in self.km:
            return None
        kernel = self.km.get_kernel(kernel_id)
        # A gateway kernel's manager keeps the gateway's model of it, the only place that names its spec.
        model = getattr(kernel, "kernel", None) if self.gateway else None
        if isinstance(model, dict) and model.get("name"):
            return str(model["name"])
        return getattr(kernel, "kernel_name", None) or None

    # -- notebook kernels ---------------------------------------------------------------------------------
    async def user_connection(self, ctx: ToolContext) -> KernelConnection:
        """Our connection to the turn's notebook kernel."""
        return await self.connection_to(ctx.kernel_id or await self._kernel_of_notebook(ctx.notebook_path))

    async def connection_to(self, kernel_id: str | None) -> KernelConnection:
        """Our connection to a notebook kernel (opened on first use, kept while it is used)."""
        if not kernel_id or kernel_id not in self.km:
            raise KernelFailure(
                "The notebook's kernel is no longer running: start it again, or turn off running code in "
                "the notebook's kernel."
            )
        async with self._user_lock:
            conn = self._user.get(kernel_id)
            if conn is not None and (conn.closed or not await conn.alive()):
                conn.close()
                conn = None
            if conn is None:
                conn = self._connection(kernel_id)
                try:
                    await conn.connect(self.ready_timeout)
                except (KernelGone, TimeoutError) as err:
                    raise KernelFailure(f"Could not connect to the notebook's kernel: {err}") from err
                self._user[kernel_id] = conn
                self._ensure_reaper()
        return conn

    async def _kernel_of_notebook(self, path: str | None) -> str | None:
        if not path or self.session_manager is None:
            return None
        for session in await maybe_await(self.session_manager.list_sessions()):
            if session.get("path") == path and session.get("kernel"):
                return str(session["kernel"]["id"])
        return None

    # -- per-thread kernels -------------------------------------------------------------------------------
    def thread(self, ctx: ToolContext) -> ThreadKernel:
        """The thread's kernel record (created on first use), marked as used by this turn."""
        if not THREAD_ID_RE.fullmatch(ctx.thread_id):
            raise KernelFailure(f"Invalid thread id {ctx.thread_id!r}.")
        key = (ctx.scope, ctx.thread_id)
        state = self._threads.get(key)
        if state is None or state.owner != ctx.owner:
            if state is not None and state.conn is not None:
                # The id's thread vanished while its kernel lived on (dropped from memory, or deleted through
                # another server process) and names another user's thread now: the old kernel is not theirs.
                state.conn.close()
                self._shutdown_later(state.conn.kernel_id)
            state = self._threads[key] = ThreadKernel(ctx.owner)
        if state.turn is not ctx:
            state.turn, state.turn_codes = ctx, []
        state.last_used = time.monotonic()
        return state

    def thread_state(self, ctx: ToolContext) -> ThreadKernel | None:
        return self._threads.get((ctx.scope, ctx.thread_id))

    async def start_kernel(self, ctx: ToolContext) -> KernelConnection:
        """A new kernel for the turn's thread, connected and ready (not yet the thread's: see `adopt`)."""
        env = self.environment()
        env["THREAD_ID"] = ctx.thread_id
        config = freva_config_file(ctx.headers, self.evaluation_system_config_file)
        if config:
            env[CONFIG_ENV] = config
        cwd: Path | str | None
        if self.gateway:
            # Enterprise Gateway starts a kernel as this user (impersonation, a pod or batch job of theirs) only
            # when the start names them; jupyter_server forwards every KERNEL_* variable of `env`.
            env["KERNEL_USERNAME"] = ctx.owner
            cwd = self.gateway_kernel_root or None
        else:
            # Standalone, one account serves every user: a folder per user keeps their threads apart.
            cwd = self.kernel_root / user_folder(ctx.owner) if self.folder_per_user else self.kernel_root
            cwd /= ctx.thread_id
        options: dict[str, Any] = {"kernel_name": self.kernel_name, "env": env}
        if cwd is not None:
            options["cwd"] = str(cwd)
        try:
            if isinstance(cwd, Path):
                await asyncio.to_thread(cwd.mkdir, parents=True, exist_ok=True)
            # Shielded: a stop while the kernel starts must not leave a kernel nobody knows of.
            start = asyncio.ensure_future(maybe_await(self.km.start_kernel(**options)))
            try:
                kernel_id = await asyncio.shield(start)
            except asyncio.CancelledError:
                start.add_done_callback(self._shutdown_orphan)
                raise
        except asyncio.CancelledError:
            raise
        except Exception as err:
            spec = self.kernel_name or "the default kernel"
            raise KernelFailure(f"Could not start a kernel ({spec}): {type(err).__name__}: {err}") from err
        self._owners[str(kernel_id)] = ctx.owner
        where = cwd or "the gateway's working directory"
        self.log.info("Started kernel %s for thread %s in %s", kernel_id, ctx.thread_id, where)
        conn = self._connection(str(kernel_id), thread_id=ctx.thread_id)
        try:
            await conn.connect(self.ready_timeout)
        except BaseException as err:
            await self.discard(conn)
            if isinstance(err, KernelGone | TimeoutError):
                raise KernelFailure(f"The new kernel did not start: {err}") from err
            raise
        return conn

    def adopt(self, state: ThreadKernel, conn: KernelConnection) -> None:
        """`conn` is the thread's kernel from now on."""
        state.conn = conn
        self._ensure_reaper()

    def _shutdown_orphan(self, start: asyncio.Future[Any]) -> None:
        if not start.cancelled() and start.exception() is None:
            self._shutdown_later(str(start.result()))

    # -- lifecycle ----------------------------------------------------------------------------------------
    async def discard(self, conn: KernelConnection, *, shutdown: bool = True) -> None:
        """Stop using a connection; a per-thread kernel is shut down with it (the next call starts afresh)."""
        conn.close()
        if conn.thread_id is None:
            if self._user.get(conn.kernel_id) is conn:
                del self._user[conn.kernel_id]
            return
        for state in self._threads.values():
            if state.conn is conn:
                state.conn = None
        if shutdown:
            self._shutdown_later(conn.kernel_id)

    async def close_thread(self, thread_id: str, scope: str = "") -> None:
        """The stored thread was deleted: its kernel goes (its files stay, they are the user's)."""
        state = self._threads.pop((scope, thread_id), None)
        if state is not None and state.conn is not None:
            await self._shutdown(state.conn)

    async def aclose(self) -> None:
        """Every per-thread kernel is shut down, every client closed."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        conns = [s.conn for s in self._threads.values() if s.conn is not None]
        self._threads.clear()
        await asyncio.gather(*(self._shutdown(c) for c in conns), *self._shutdowns, return_exceptions=True)
        for conn in self._user.values():
            conn.close()
        self._user.clear()
        if not self._context.closed:
            self._context.destroy(linger=0)

    async def _shutdown(self, conn: KernelConnection) -> None:
        """Close a connection and, if it is a thread's own kernel, shut that down (never a user's kernel)."""
        conn.close()
        if conn.thread_id is not None:
            # A shutdown cut short leaves the manager's record of the kernel half-changed: never cancel one.
            await asyncio.shield(self._shutdown_later(conn.kernel_id))

    def _shutdown_later(self, kernel_id: str) -> asyncio.Future[None]:
        task = asyncio.ensure_future(self._shutdown_now(kernel_id))
        self._shutdowns.add(task)
        task.add_done_callback(self._shutdowns.discard)
        return task

    async def _shutdown_now(self, kernel_id: str) -> None:
        # A gateway refuses (HTTP 500) to shut down a kernel while it restarts one that died: ask again.
        retries = GATEWAY_SHUTDOWN_RETRIES if self.gateway else ()
        try:
            for delay in (*retries, None):
                if kernel_id not in self.km:
                    return
                try:
                    await maybe_await(self.km.shutdown_kernel(kernel_id))
                    self.log.info("Shut down kernel %s", kernel_id)
                    return
                except Exception as err:  # already gone, or going
                    if delay is None:
                        level = logging.WARNING if self.gateway and kernel_id in self.km else logging.DEBUG
                        self.log.log(level, "Kernel %s did not shut down cleanly: %s", kernel_id, err)
                        return
                await asyncio.sleep(delay)
        finally:
            self._owners.pop(kernel_id, None)

    def _ensure_reaper(self) -> None:
        if self._reaper is None and self.idle_timeout > 0 and not self._closed:
            self._reaper = asyncio.ensure_future(self._reap())

    async def _reap(self) -> None:
        """Shut down per-thread kernels (and close user-kernel clients) idle for `idle_timeout`."""
        interval = min(max(self.idle_timeout / 4, 0.05), 60.0)
        while True:
            await asyncio.sleep(interval)
            try:
                await self._reap_once()
            except Exception:  # one bad round must not stop the reaping for good
                self.log.exception("The idle-kernel reaper failed; it tries again in %g s", interval)

    async def _reap_once(self) -> None:
        now = time.monotonic()
        for key, state in list(self._threads.items()):
            conn = state.conn
            if state.start_lock.locked() or (conn is not None and conn.lock.locked()):
                continue
            last = max(state.last_used, conn.last_used if conn is not None else 0.0)
            if now - last < self.idle_timeout:
                continue
            del self._threads[key]
            if conn is not None:
                self.log.info("Kernel %s of thread %s was idle; shutting it down", conn.kernel_id, key[1])
                await self._shutdown(conn)
        for kernel_id, conn in list(self._user.items()):
            if not conn.lock.locked() and (now - conn.last_used >= self.idle_timeout or not conn.exists()):
                del self._user[kernel_id]
                conn.close()
