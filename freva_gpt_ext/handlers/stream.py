"""`streamresponse` (the NDJSON stream of a turn) and `stop`."""

from __future__ import annotations

from collections.abc import AsyncIterator

from tornado.iostream import StreamClosedError

from ..core.conversations import ThreadBusy
from ..core.orchestrator import TurnInput
from ..storage.base import ThreadInfo, ThreadStore
from ..tools.base import ToolContext
from ..variants import Variant, history_with_interruptions
from .base import ApiError, ChatbotHandler
from .meta import new_thread_id

NDJSON = "application/x-ndjson"


class StreamHandler(ChatbotHandler):
    route_name = "streamresponse"

    async def handle(self) -> None:
        app = self.app
        # Validate everything before the first line: afterwards only in-stream errors are possible.
        user_input = self.str_param("input", required=True) or ""
        if len(user_input) > app.max_input_chars:
            raise ApiError(413, f"The input is longer than {app.max_input_chars} characters.", "Input too large")
        thread_id = self.thread_param(required=False)
        chatbot = (self.str_param("chatbot") or "").strip()
        model = app.catalogue.get(chatbot or None)
        if model is None:
            if not app.catalogue.names:
                raise ApiError(503, "No chat model is configured: set FREVAGPT_LITELLM_CONFIG to a model catalogue.")
            valid = ", ".join(app.catalogue.names)
            raise ApiError(422, f"The parameter 'chatbot' names no model ('{chatbot}'). Valid: {valid}.")
        store_thread = self.bool_param("store_thread", True)
        show_tools = self.bool_param("show_tools", False)
        kernel_id = await self._kernel_choice()
        store = self.store_for() if store_thread else app.memory_store
        owner = self.owner
        thread_id = await self._thread_for(store, thread_id, owner)
        notebook_path = self.str_param("notebook_path") or None
        headers = dict(self.request.headers) if app.trust_proxy_headers else {}

        def produce(history: list[Variant]) -> AsyncIterator[Variant]:
            ctx = ToolContext(
                thread_id=thread_id,
                owner=owner,
                vision=model.supports_vision,
                kernel_id=kernel_id,
                notebook_path=notebook_path,
                headers=headers,
                history=history,
            )
            turn_input = TurnInput(
                thread_id=thread_id,
                owner=owner,
                model=model,
                user_input=user_input,
                history=history,
                ctx=ctx,
                used_ids={v.id for v in history if v.id},
            )
            return app.orchestrator.run(turn_input)

        try:
            turn = await app.conversations.start(
                store=store,
                thread_id=thread_id,
                owner=owner,
                model_name=model.name,
                user_input=user_input,
                show_tools=show_tools,
                produce=produce,
                name_thread=app.name_thread if store_thread else None,
            )
        except ThreadBusy as err:
            raise ApiError(409, "This thread is already streaming an answer.", "Thread is busy") from err

        self.set_header("Content-Type", NDJSON)
        self.set_header("Cache-Control", "no-cache, no-transform")
        self.set_header("X-Accel-Buffering", "no")
        index = 0
        try:
            while True:
                lines, index, done = await turn.next_lines(index)
                if lines:
                    self.write(b"".join(lines))
                    await self.flush()
                if done:
                    break
        except StreamClosedError:
            # The client left; the turn is the server's and runs to its end, stored.
            self.log.info("Client left the stream of thread %s; the turn continues.", thread_id)
            return
        self.finish(set_content_type=NDJSON)

    async def _kernel_choice(self) -> str | None:
        kernel_id = self.str_param("kernel_id") or None
        notebook_path = self.str_param("notebook_path") or None
        if kernel_id:
            if kernel_id not in self.kernel_manager:
                raise ApiError(404, f"No running kernel has the id '{kernel_id}'.", "Kernel not found")
            return kernel_id
        if notebook_path:
            sessions = await self.session_manager.list_sessions()
            for session in sessions:
                if session.get("path") == notebook_path and session.get("kernel"):
                    return str(session["kernel"]["id"])
            raise ApiError(404, f"The notebook '{notebook_path}' has no running kernel.", "Kernel not found")
        return None

    async def _thread_for(self, store: ThreadStore, thread_id: str | None, owner: str) -> str:
        """The thread to stream into: a new one, the caller's, or a fork of another user's."""
        if thread_id is None:
            return new_thread_id()
        info = await store.info(thread_id)
        if info is None or info.user_id == owner:
            return thread_id
        new_id = new_thread_id()
        if self.app.thread_sharing:
            variants = history_with_interruptions(await store.read(thread_id))
            await store.fork(thread_id, new_id, owner, variants, info.topic)
        return new_id


class StopHandler(ChatbotHandler):
    route_name = "stop"

    async def handle(self) -> None:
        thread_id = self.thread_param()
        store, _ = await self._locate(thread_id)
        if not await self.app.conversations.stop(thread_id, store):
            raise ApiError(404, "No answer is being generated on this thread.", "Not streaming")
        self.reply({"detail": "Conversation stopped."})

    async def _locate(self, thread_id: str) -> tuple[ThreadStore, ThreadInfo]:
        # A thread kept only in memory (store_thread=false) can be stopped as well.
        memory = self.app.memory_store
        if await memory.info(thread_id) is not None:
            return memory, await self.owned_thread(memory, thread_id)
        store = self.store_for()
        return store, await self.owned_thread(store, thread_id)
