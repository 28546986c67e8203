"""`code_interpreter`: the LLM's Python runs in a Jupyter kernel of the server's own kernel manager.

Which kernel (`kernel_pool.py` keeps them; on a kernel gateway the same, there):
- the user's notebook kernel when the turn names one (`kernel_id`, or the kernel of `notebook_path`): the
  assistant sees and creates the notebook's variables. We never shut down, restart or cull it; our executions
  leave its execution counter, `Out` and `_` alone;
- otherwise the thread's own kernel. It keeps the thread's variables across turns. When it is gone (server
  restart, idle, culled, died), the thread's earlier code is replayed in the new kernel before the code of the
  turn runs — never code that came with a fork of another user's thread, unless the turn asks for it.

Every call answers exactly one `CodeOutput` (partial output when it failed), then a `CodeError` if the call failed
as a whole (timeout, kernel death, the kernel aborted it), then its images. An exception raised by the code is
output, not a failure of the tool: the LLM reads the traceback and fixes its code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Collection, Iterable
from pathlib import Path
from typing import Any

from ..variants import (
    CODE,
    CODE_ERROR,
    CODE_OUTPUT,
    CODE_TOOL_NAME,
    IMAGE,
    Variant,
    hint,
    history_with_interruptions,
)
from .base import ToolContext
from .kernel_client import Execution, KernelConnection, KernelGone
from .kernel_output import OutputCollector
from .kernel_pool import KernelFailure, KernelPool

WAITING = "waiting_for_kernel"
EXECUTING = "executing"
# A request of ours that has not started after this long is queued behind someone else's: say so.
QUEUE_NOTICE = 0.3
# After an interrupt, how long the code may take to unwind before we give up on it.
INTERRUPT_GRACE = 5.0
# How long the execute reply may lag behind the kernel's idle status.
REPLY_WAIT = 1.0
ABORTED = "The kernel aborted this code because a cell queued before it failed; it did not run."

DESCRIPTION = (
    "Run Python code in a persistent Jupyter (IPython) kernel. Variables, imports and loaded data persist "
    "across calls and turns. Returns what the code prints, the value of its last expression and any "
    "traceback; matplotlib figures shown with plt.show() are returned as images. No interactive input."
)


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
        kernel_env: Iterable[str] = (),
        withheld_env: Collection[str] = (),
        folder_per_user: bool = False,
        gateway_kernel_root: str = "",
        max_output_chars: int = 20_000,
        max_images: int = 20,
        ready_timeout: float = 60.0,
        log: logging.Logger | None = None,
    ) -> None:
        self.log = log or logging.getLogger(__name__)
        self.pool = KernelPool(
            kernel_manager,
            session_manager=session_manager,
            kernel_root=kernel_root,
            kernel_name=kernel_name,
            idle_timeout=idle_timeout,
            ready_timeout=ready_timeout,
            evaluation_system_config_file=evaluation_system_config_file,
            kernel_env=kernel_env,
            withheld_env=withheld_env,
            folder_per_user=folder_per_user,
            gateway_kernel_root=gateway_kernel_root,
            log=self.log,
        )
        self.kernel_name = self.pool.kernel_name
        self.execution_timeout = execution_timeout
        self.replay = replay
        self.max_output_chars = max_output_chars
        self.max_images = max_images
        self._tasks: set[asyncio.Future[Any]] = set()  # settling abandoned requests: cancelled at the end
        self._closed = False

    # -- the Tool seam ------------------------------------------------------------------------------------
    async def run(self, call_id: str, arguments: dict[str, Any], ctx: ToolContext) -> AsyncIterator[Variant]:
        out = OutputCollector(self.max_output_chars, self.max_images)
        error: str | None = None
        user = bool(ctx.kernel_id or ctx.notebook_path)
        code = arguments.get("code")
        try:
            if not isinstance(code, str):
                raise KernelFailure("code_interpreter needs its argument `code`: the Python source to run.")
            if self._closed:
                raise KernelFailure("The server is shutting down.")
            if user:
                conn = await self.pool.user_connection(ctx)
            else:
                conn, notes = await self._thread_connection(ctx)
                for note in notes:
                    yield note
            async for status in self._execute(conn, code, out, user=user):
                yield status
        except KernelFailure as err:
            error = str(err)
        text = out.text()
        yield Variant(CODE_OUTPUT, text, id=call_id)
        if error:
            yield Variant(CODE_ERROR, error, id=call_id)
        for n, png in enumerate(out.images):
            yield Variant(IMAGE, png, id=f"{call_id}_{n}")
        if not user and error is None and isinstance(code, str):
            state = self.pool.thread_state(ctx)
            if state is not None and state.turn is ctx:
                # Replayed too if the kernel dies later in this turn (the history does not hold it yet).
                state.turn_codes.append((code, text))

    async def close_thread(self, thread_id: str, scope: str = "") -> None:
        """The stored thread was deleted: its kernel goes (its files stay, they are the user's)."""
        await self.pool.close_thread(thread_id, scope)

    async def aclose(self) -> None:
        """The extension stops: every per-thread kernel is shut down, every client closed."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pool.aclose()

    def kernel_owner(self, kernel_id: str) -> str | None:
        """The owner of the thread whose kernel this is; None when it is no per-thread kernel of ours."""
        return self.pool.kernel_owner(kernel_id)

    async def kernel_spec_of(self, ctx: ToolContext) -> str | None:
        """The kernel spec of the kernel this turn's code runs in (None: a notebook kernel that is gone)."""
        return await self.pool.kernel_spec_of(ctx)

    def environment(self) -> dict[str, str]:
        """The environment of the per-thread kernels, before their `THREAD_ID` (see `kernel_env.py`)."""
        return self.pool.environment()

    # -- the thread's kernel ------------------------------------------------------------------------------
    async def _thread_connection(self, ctx: ToolContext) -> tuple[KernelConnection, list[Variant]]:
        state = self.pool.thread(ctx)
        async with state.start_lock:
            conn = state.conn
            if conn is not None and await conn.alive():
                return conn, []
            if conn is not None:
                # Culled, shut down or restarted from JupyterLab, or died: its state is lost either way, and a
                # new kernel gets the thread's code replayed.
                await self.pool.discard(conn)
            codes: list[tuple[str, str]] = []
            notes: list[Variant] = []
            if self.replay:
                # Code that came with a fork of another user's thread is theirs: it never runs unasked.
                skipped = len(replayable_code(ctx.history[: ctx.replay_from]))
                codes = replayable_code(ctx.history[ctx.replay_from :]) + state.turn_codes
                if skipped:
                    notes.append(hint(not_replayed=skipped))
            conn = await self.pool.start_kernel(ctx)
            try:
                if codes:
                    notes += await self._replay(conn, codes)
                if conn.closed:
                    raise KernelFailure("The new kernel died while the earlier code of this conversation was replayed.")
            except BaseException:
                # Half-replayed: the next call starts afresh rather than with partial state.
                await self.pool.discard(conn)
                raise
            self.pool.adopt(state, conn)
            return conn, notes

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
            except KernelFailure as err:
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
        """Run `code` on `conn`, feeding `out`; yields status hints; raises `KernelFailure` when the call fails."""
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
                        raise KernelFailure(self._busy_message())
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
                    raise KernelFailure(self._busy_message() + " It is interrupted as soon as the kernel gets to it.")
            if execution.aborted:
                raise KernelFailure(ABORTED)
            if waiting:
                yield hint(status=EXECUTING)
            assert execution.started_at is not None
            await execution.follow(execution.started_at + self.execution_timeout)
            if not execution.finished:
                out.ignore_interrupt = True
                await conn.interrupt()
                await execution.follow(time.monotonic() + INTERRUPT_GRACE)
                if not execution.finished:
                    await self.pool.discard(conn)
                    raise KernelFailure(self._unstoppable_message(user))
                raise KernelFailure(
                    f"The code ran longer than {self.execution_timeout:g} s and was interrupted; the output "
                    "above is what it printed until then. Try a smaller piece of the work first."
                )
            reply = await conn.reply(msg_id, time.monotonic() + REPLY_WAIT)
            if execution.aborted or (reply and (reply.get("content") or {}).get("status") == "aborted"):
                raise KernelFailure(ABORTED)
            out.add_reply(reply)
        except KernelGone:
            await self.pool.discard(conn)
            raise KernelFailure(self._death_message(user)) from None
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
                        await self.pool.discard(conn, shutdown=False)
                        return
                if not execution.finished:
                    await conn.interrupt()
                await execution.follow(time.monotonic() + INTERRUPT_GRACE)
                if not execution.finished:
                    await self.pool.discard(conn)
            except KernelGone:
                await self.pool.discard(conn)
            except Exception:
                self.log.exception("Could not settle an abandoned execution on kernel %s", conn.kernel_id)
                await self.pool.discard(conn, shutdown=False)
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
    def _background(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
