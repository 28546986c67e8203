"""`code_interpreter`: the LLM's Python runs in a Jupyter kernel of the server's own kernel manager.

Which kernel:
- the user's notebook kernel when the turn names one (`kernel_id`, or the kernel of `notebook_path`): the
  assistant sees and creates the notebook's variables. We never shut down, restart or cull it; our executions
  leave its execution counter, `Out` and `_` alone;
- otherwise one kernel per thread, started through the server's kernel manager (so JupyterLab lists it and a user
  can attach a console), working in `<kernel_root>/<thread_id>/`, with `THREAD_ID` and the Freva configuration
  in its own environment. It keeps the thread's variables across turns, is shut down after an idle time, when
  the thread is deleted and when the extension stops. When it is gone (server restart, culled, died), the
  thread's earlier code is replayed in the new kernel before the code of the turn runs.

Every call answers exactly one `CodeOutput` (partial output when it failed), then a `CodeError` if the call failed
as a whole (timeout, kernel death, the kernel aborted it), then its images. An exception raised by the code is
output, not a failure of the tool: the LLM reads the traceback and fixes its code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq.asyncio

from ..variants import (
    CODE,
    CODE_ERROR,
    CODE_OUTPUT,
    CODE_TOOL_NAME,
    IMAGE,
    THREAD_ID_RE,
    Variant,
    hint,
    history_with_interruptions,
)
from .base import ToolContext
from .kernel_client import Execution, KernelConnection, KernelGone, maybe_await
from .kernel_output import OutputCollector

WAITING = "waiting_for_kernel"
EXECUTING = "executing"
# A request of ours that has not started after this long is queued behind someone else's: say so.
QUEUE_NOTICE = 0.3
# After an interrupt, how long the code may take to unwind before we give up on it.
INTERRUPT_GRACE = 5.0
# How long the execute reply may lag behind the kernel's idle status.
REPLY_WAIT = 1.0
ABORTED = "The kernel aborted this code because a cell queued before it failed; it did not run."
CONFIG_HEADERS = ("freva-config", "x-freva-config-path")
CONFIG_ENV = "EVALUATION_SYSTEM_CONFIG_FILE"

DESCRIPTION = (
    "Run Python code in a persistent Jupyter (IPython) kernel. Variables, imports and loaded data persist "
    "across calls and turns. Returns what the code prints, the value of its last expression and any "
    "traceback; matplotlib figures shown with plt.show() are returned as images. No interactive input."
)


class _Failure(Exception):
    """The call failed as a whole; the message becomes its `CodeError`."""


@dataclass(eq=False)
class _ThreadKernel:
    """A thread's kernel, and the code that succeeded in it during the current turn (for a replay)."""

    conn: KernelConnection | None = None
    turn: ToolContext | None = None
    turn_codes: list[tuple[str, str]] = field(default_factory=list)
    start_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_used: float = field(default_factory=time.monotonic)


def replayable_code(history: list[Variant]) -> list[tuple[str, str]]:
    """(code, output) of the thread's `code_interpreter` calls that ran to their end, in order.

    A call with a `CodeError` (timeout, dead kernel, stopped, interrupted by a crash) is not replayed: it
    did not finish before, and it may be what killed the kernel.
    """
    calls: dict[str, list[Any]] = {}
    for v in history_with_interruptions(history):
        key = v.id or ""
        if v.variant == CODE:
            try:
                arguments = json.loads(str(v.content))
            except ValueError:
                continue
            code = arguments.get("code") if isinstance(arguments, dict) else None
            if isinstance(code, str) and code.strip():
                calls[key] = [code, "", True]
        elif key in calls and v.variant == CODE_OUTPUT:
            calls[key][1] = str(v.content or "")
        elif key in calls and v.variant == CODE_ERROR:
            calls[key][2] = False
    return [(code, output) for code, output, ok in calls.values() if ok]


class KernelTool:
    """The built-in `code_interpreter` tool (see the module's doc)."""

    name = CODE_TOOL_NAME
    description = DESCRIPTION
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {"code": {"type": "string", "description": "Python source to run in the kernel."}},
        "required": ["code"],
    }

    def __init__(
        self,
        kernel_manager: Any,
        *,
        session_manager: Any = None,
        kernel_root: str | Path,
        kernel_name: str | None = None,
        execution_timeout: float = 600.0,
        idle_timeout: float = 3600.0,
        replay: bool = True,
        evaluation_system_config_file: str = "",
        max_output_chars: int = 20_000,
        max_images: int = 20,
        ready_timeout: float = 60.0,
        log: logging.Logger | None = None,
    ) -> None:
        self.km = kernel_manager
        self.session_manager = session_manager
        self.kernel_root = Path(kernel_root).expanduser().absolute()
        self.kernel_name = kernel_name or None
        self.execution_timeout = execution_timeout
        self.idle_timeout = idle_timeout
        self.replay = replay
        self.evaluation_system_config_file = evaluation_system_config_file
        self.max_output_chars = max_output_chars
        self.max_images = max_images
        self.ready_timeout = ready_timeout
        self.log = log or logging.getLogger(__name__)
        self._context = zmq.asyncio.Context()
        self._threads: dict[str, _ThreadKernel] = {}
        self._user: dict[str, KernelConnection] = {}
        self._user_lock = asyncio.Lock()
        self._tasks: set[asyncio.Future[Any]] = set()  # settling abandoned requests: cancelled at the end
        self._shutdowns: set[asyncio.Future[Any]] = set()  # kernel shutdowns: awaited at the end, never cut
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False

    # -- the Tool seam ------------------------------------------------------------------------------------
    async def run(self, call_id: str, arguments: dict[str, Any], ctx: ToolContext) -> AsyncIterator[Variant]:
        out = OutputCollector(self.max_output_chars, self.max_images)
        error: str | None = None
        user = bool(ctx.kernel_id or ctx.notebook_path)
        code = arguments.get("code")
        try:
            if not isinstance(code, str):
                raise _Failure("code_interpreter needs its argument `code`: the Python source to run.")
            if self._closed:
                raise _Failure("The server is shutting down.")
            if user:
                conn = await self._user_connection(ctx)
            else:
                conn, notes = await self._thread_connection(ctx)
                for note in notes:
                    yield note
            async for status in self._execute(conn, code, out, user=user):
                yield status
        except _Failure as err:
            error = str(err)
        text = out.text()
        yield Variant(CODE_OUTPUT, text, id=call_id)
        if error:
            yield Variant(CODE_ERROR, error, id=call_id)
        for n, png in enumerate(out.images):
            yield Variant(IMAGE, png, id=f"{call_id}_{n}")
        if not user and error is None and isinstance(code, str):
            state = self._threads.get(ctx.thread_id)
            if state is not None and state.turn is ctx:
                # Replayed too if the kernel dies later in this turn (the history does not hold it yet).
                state.turn_codes.append((code, text))

    async def close_thread(self, thread_id: str) -> None:
        """The thread was deleted: its kernel goes (its files stay, they are the user's)."""
        state = self._threads.pop(thread_id, None)
        if state is not None and state.conn is not None:
            await self._shutdown(state.conn)

    async def aclose(self) -> None:
        """The extension stops: every per-thread kernel is shut down, every client closed."""
        self._closed = True
        tasks = [t for t in (self._reaper, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        conns = [s.conn for s in self._threads.values() if s.conn is not None]
        self._threads.clear()
        await asyncio.gather(*(self._shutdown(c) for c in conns), *self._shutdowns, return_exceptions=True)
        for conn in self._user.values():
            conn.close()
        self._user.clear()
        if not self._context.closed:
            self._context.destroy(linger=0)

    # -- which kernel -------------------------------------------------------------------------------------
    async def _user_connection(self, ctx: ToolContext) -> KernelConnection:
        kernel_id = ctx.kernel_id or await self._kernel_of_notebook(ctx.notebook_path)
        if not kernel_id or kernel_id not in self.km:
            raise _Failure(
                "The notebook's kernel is no longer running: start it again, or turn off running code in "
                "the notebook's kernel."
            )
        async with self._user_lock:
            conn = self._user.get(kernel_id)
            if conn is not None and (conn.closed or not await conn.alive()):
                conn.close()
                conn = None
            if conn is None:
                conn = KernelConnection(self.km, kernel_id, self._context)
                try:
                    await conn.connect(self.ready_timeout)
                except (KernelGone, TimeoutError) as err:
                    raise _Failure(f"Could not connect to the notebook's kernel: {err}") from err
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

    async def _thread_connection(self, ctx: ToolContext) -> tuple[KernelConnection, list[Variant]]:
        thread_id = ctx.thread_id
        if not THREAD_ID_RE.match(thread_id):
            raise _Failure(f"Invalid thread id {thread_id!r}.")
        state = self._threads.setdefault(thread_id, _ThreadKernel())
        if state.turn is not ctx:
            state.turn, state.turn_codes = ctx, []
        state.last_used = time.monotonic()
        async with state.start_lock:
            conn = state.conn
            if conn is not None and await conn.alive():
                return conn, []
            if conn is not None:
                # Culled, shut down or restarted from JupyterLab, or died: its state is lost either way, and a
                # new kernel gets the thread's code replayed.
                await self._discard(conn)
            codes = (replayable_code(ctx.history) + state.turn_codes) if self.replay else []
            conn = await self._start_kernel(ctx)
            try:
                await conn.connect(self.ready_timeout)
                notes = await self._replay(conn, codes) if codes else []
                if conn.closed:
                    raise _Failure("The new kernel died while the earlier code of this conversation was replayed.")
            except BaseException as err:
                # Half-started or half-replayed: the next call starts afresh rather than with partial state.
                conn.close()
                self._shutdown_later(conn.kernel_id)
                if isinstance(err, KernelGone | TimeoutError):
                    raise _Failure(f"The new kernel did not start: {err}") from err
                raise
            state.conn = conn
            self._ensure_reaper()
            return conn, notes

    async def _start_kernel(self, ctx: ToolContext) -> KernelConnection:
        cwd = self.kernel_root / ctx.thread_id
        # The kernel's own environment: the server's is read, never written.
        env = {**os.environ, "THREAD_ID": ctx.thread_id}
        config = self._config_file(ctx.headers)
        if config:
            env[CONFIG_ENV] = config
        try:
            await asyncio.to_thread(cwd.mkdir, parents=True, exist_ok=True)
            # Shielded: a stop while the kernel starts must not leave a kernel nobody knows of.
            start = asyncio.ensure_future(
                maybe_await(self.km.start_kernel(kernel_name=self.kernel_name, cwd=str(cwd), env=env))
            )
            try:
                kernel_id = await asyncio.shield(start)
            except asyncio.CancelledError:
                start.add_done_callback(self._shutdown_orphan)
                raise
        except asyncio.CancelledError:
            raise
        except Exception as err:
            spec = self.kernel_name or "the default kernel"
            raise _Failure(f"Could not start a kernel ({spec}): {type(err).__name__}: {err}") from err
        self.log.info("Started kernel %s for thread %s in %s", kernel_id, ctx.thread_id, cwd)
        return KernelConnection(self.km, str(kernel_id), self._context, thread_id=ctx.thread_id)

    def _shutdown_orphan(self, start: asyncio.Future[Any]) -> None:
        if not start.cancelled() and start.exception() is None:
            self._shutdown_later(str(start.result()))

    def _config_file(self, headers: Mapping[str, str]) -> str:
        """The Freva configuration: a trusted proxy's header, else the configured file."""
        lowered = {k.lower(): v for k, v in headers.items()}
        for name in CONFIG_HEADERS:
            if lowered.get(name):
                return lowered[name]
        return self.evaluation_system_config_file

    # -- replay -------------------------------------------------------------------------------------------
    async def _replay(self, conn: KernelConnection, codes: list[tuple[str, str]]) -> list[Variant]:
        """Run the thread's earlier code in its new kernel; stop at the first call that fails now."""
        total = len(codes)
        for n, (code, original) in enumerate(codes, 1):
            out = OutputCollector(2000, 0)
            reason = ""
            try:
                async for _ in self._execute(conn, code, out, user=False):
                    pass
            except _Failure as err:
                reason = str(err)
            # A call that raised before raises again: that is what happened then, not a failure now.
            if not reason and out.errors and not all(name in original for name in out.errors):
                reason = out.text().strip().splitlines()[-1] if out.text().strip() else out.errors[-1]
            if reason:
                self.log.warning("Replay in kernel %s stopped at call %d of %d: %s", conn.kernel_id, n, total, reason)
                message = (
                    f"A new kernel replayed this conversation's earlier code; call {n} of {total} failed "
                    f"({reason}), so it and the later calls were not replayed."
                )
                return [hint(replayed=n - 1, replay_error=message[:2000])]
        return [hint(replayed=total)]

    # -- one execution ------------------------------------------------------------------------------------
    async def _execute(
        self, conn: KernelConnection, code: str, out: OutputCollector, *, user: bool
    ) -> AsyncIterator[Variant]:
        """Run `code` on `conn`, feeding `out`; yields status hints; raises `_Failure` when the call fails."""
        waiting = conn.lock.locked()
        if waiting:
            yield hint(status=WAITING)
        await conn.lock.acquire()
        execution: Execution | None = None
        keep_lock = False  # handed over to a task that sees an abandoned request of ours to its end
        try:
            if user:
                # The user's own cell is running: queue ours only once it is done (never interleave).
                busy_since = time.monotonic()
                while conn.server_busy():
                    if not waiting and time.monotonic() - busy_since > 0.1:
                        waiting = True
                        yield hint(status=WAITING)
                    if time.monotonic() - busy_since > self.execution_timeout:
                        raise _Failure(self._busy_message())
                    await asyncio.sleep(0.02)
            msg_id = conn.execute(code, store_history=not user, guard=user and conn.ipython)
            execution = Execution(conn, msg_id, out.add)
            await execution.follow(execution.sent_at + QUEUE_NOTICE, until_started=True)
            if not execution.started and not execution.finished:
                # Queued behind someone else's request (a console, JupyterLab, a cell started just now).
                if not waiting:
                    waiting = True
                    yield hint(status=WAITING)
                await execution.follow(execution.sent_at + self.execution_timeout, until_started=True)
                if not execution.started and not execution.finished:
                    keep_lock = True
                    self._settle(conn, execution)
                    raise _Failure(self._busy_message() + " It is interrupted as soon as the kernel gets to it.")
            if execution.aborted:
                raise _Failure(ABORTED)
            if waiting:
                yield hint(status=EXECUTING)
            assert execution.started_at is not None
            await execution.follow(execution.started_at + self.execution_timeout)
            if not execution.finished:
                out.ignore_interrupt = True
                await conn.interrupt()
                await execution.follow(time.monotonic() + INTERRUPT_GRACE)
                if not execution.finished:
                    await self._discard(conn)
                    raise _Failure(self._unstoppable_message(user))
                raise _Failure(
                    f"The code ran longer than {self.execution_timeout:g} s and was interrupted; the output "
                    "above is what it printed until then. Try a smaller piece of the work first."
                )
            reply = await conn.reply(msg_id, time.monotonic() + REPLY_WAIT)
            if execution.aborted or (reply and (reply.get("content") or {}).get("status") == "aborted"):
                raise _Failure(ABORTED)
            out.add_reply(reply)
        except KernelGone:
            await self._discard(conn)
            raise _Failure(self._death_message(user)) from None
        except asyncio.CancelledError:
            # Stopped: our code is interrupted at once if it runs, or as soon as it starts (never someone
            # else's), by a task of its own, so that the stop goes on now.
            if execution is not None and not execution.finished:
                keep_lock = True
                self._settle(conn, execution)
            raise
        finally:
            conn.last_used = time.monotonic()
            if not keep_lock:
                conn.lock.release()

    def _settle(self, conn: KernelConnection, execution: Execution) -> None:
        """Follow an abandoned request of ours to its end (interrupting it once it starts), holding the lock."""

        async def settle() -> None:
            try:
                if not execution.started:
                    await execution.follow(time.monotonic() + max(self.execution_timeout, 60.0), until_started=True)
                    if not execution.started:
                        self.log.warning("Kernel %s never ran an abandoned request; detaching.", conn.kernel_id)
                        await self._discard(conn, shutdown=False)
                        return
                if not execution.finished:
                    await conn.interrupt()
                await execution.follow(time.monotonic() + INTERRUPT_GRACE)
                if not execution.finished:
                    await self._discard(conn)
            except KernelGone:
                await self._discard(conn)
            except Exception:
                self.log.exception("Could not settle an abandoned execution on kernel %s", conn.kernel_id)
                await self._discard(conn, shutdown=False)
            finally:
                conn.lock.release()

        self._background(settle())

    def _busy_message(self) -> str:
        return f"The kernel stayed busy with other work for {self.execution_timeout:g} s; this code did not run."

    def _unstoppable_message(self, user: bool) -> str:
        base = f"The code ran longer than {self.execution_timeout:g} s and did not stop when interrupted."
        if user:
            return base + " The notebook's kernel may still be busy with it; interrupt or restart it in JupyterLab."
        return base + " Its kernel was shut down: variables are lost, a fresh kernel starts with the next code."

    @staticmethod
    def _death_message(user: bool) -> str:
        if user:
            return (
                "The notebook's kernel died while running this code (for example it ran out of memory or the "
                "process exited). Jupyter restarts it; its variables are lost."
            )
        return (
            "The kernel died while running this code (for example it ran out of memory or the process exited). "
            "Its variables are lost; a fresh kernel starts with the next code."
        )

    # -- lifecycle ----------------------------------------------------------------------------------------
    async def _discard(self, conn: KernelConnection, *, shutdown: bool = True) -> None:
        """Stop using a connection; a per-thread kernel is shut down with it (the next call starts afresh)."""
        conn.close()
        if conn.thread_id is None:
            if self._user.get(conn.kernel_id) is conn:
                del self._user[conn.kernel_id]
            return
        state = self._threads.get(conn.thread_id)
        if state is not None and state.conn is conn:
            state.conn = None
        if shutdown:
            self._shutdown_later(conn.kernel_id)

    async def _shutdown(self, conn: KernelConnection) -> None:
        """Close a connection and, if it is a thread's own kernel, shut that down (never a user's kernel)."""
        conn.close()
        if conn.thread_id is not None:
            await self._shutdown_kernel(conn.kernel_id)

    async def _shutdown_kernel(self, kernel_id: str) -> None:
        # A shutdown cut short leaves the manager's record of the kernel half-changed: never cancel one.
        await asyncio.shield(self._shutdown_later(kernel_id))

    def _shutdown_later(self, kernel_id: str) -> asyncio.Future[None]:
        task = asyncio.ensure_future(self._shutdown_now(kernel_id))
        self._shutdowns.add(task)
        task.add_done_callback(self._shutdowns.discard)
        return task

    async def _shutdown_now(self, kernel_id: str) -> None:
        try:
            if kernel_id in self.km:
                await maybe_await(self.km.shutdown_kernel(kernel_id))
                self.log.info("Shut down kernel %s", kernel_id)
        except Exception as err:  # already gone, or going
            self.log.debug("Kernel %s did not shut down cleanly: %s", kernel_id, err)

    def _background(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _ensure_reaper(self) -> None:
        if self._reaper is None and self.idle_timeout > 0 and not self._closed:
            self._reaper = asyncio.ensure_future(self._reap())

    async def _reap(self) -> None:
        """Shut down per-thread kernels (and close user-kernel clients) idle for `idle_timeout`."""
        interval = min(max(self.idle_timeout / 4, 0.05), 60.0)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for thread_id, state in list(self._threads.items()):
                conn = state.conn
                if state.start_lock.locked() or (conn is not None and conn.lock.locked()):
                    continue
                last = max(state.last_used, conn.last_used if conn is not None else 0.0)
                if now - last < self.idle_timeout:
                    continue
                del self._threads[thread_id]
                if conn is not None:
                    self.log.info("Kernel %s of thread %s was idle; shutting it down", conn.kernel_id, thread_id)
                    await self._shutdown(conn)
            for kernel_id, conn in list(self._user.items()):
                if not conn.lock.locked() and (now - conn.last_used >= self.idle_timeout or not conn.exists()):
                    del self._user[kernel_id]
                    conn.close()
