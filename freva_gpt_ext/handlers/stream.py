"""`streamresponse` (the NDJSON stream of a turn) and `stop`."""

from __future__ import annotations

from tornado.iostream import StreamClosedError

from ..auth import BearerValidator
from ..core.catalogue import NO_MODEL_HINT
from ..core.service import TurnRequest
from .base import ApiError, ChatbotHandler

NDJSON = "application/x-ndjson"


class StreamHandler(ChatbotHandler):
    route_name = "streamresponse"

    async def handle(self) -> None:
        service = self.service
        catalogue = service.catalogue
        if not catalogue.names:
            raise ApiError(503, service.catalogue_problem or NO_MODEL_HINT)
        # Validate everything before the first line: afterwards only in-stream errors are possible.
        user_input = self.str_param("input", required=True) or ""
        if len(user_input) > service.max_input_chars:
            raise ApiError(413, f"The input is longer than {service.max_input_chars} characters.", "Input too large")
        thread_id = self.thread_param(required=False)
        chatbot = (self.str_param("chatbot") or "").strip()
        model = catalogue.get(chatbot or None)
        if model is None:
            valid = ", ".join(catalogue.names)
            raise ApiError(422, f"The parameter 'chatbot' names no model ('{chatbot}'). Valid: {valid}.")
        store_thread = self.bool_param("store_thread", True)
        show_tools = self.bool_param("show_tools", False)
        replay_forked_code = self.bool_param("replay_forked_code", False)
        owner = self.owner
        notebook_path = self.str_param("notebook_path") or None
        kernel_id = await service.kernel_choice(owner, self.str_param("kernel_id") or None, notebook_path)
        request = TurnRequest(
            owner=owner,
            user_input=user_input,
            model=model,
            thread_id=thread_id,
            store_thread=store_thread,
            show_tools=show_tools,
            kernel_id=kernel_id,
            notebook_path=notebook_path,
            headers=dict(self.request.headers) if service.trust_proxy_headers else {},
            replay_forked_code=replay_forked_code,
            # Only a token freva-rest validated for this request; inside Jupyter, Jupyter's tokens stay here.
            bearer_token=BearerValidator.token_from(self.request.headers) if service.standalone else None,
        )
        store = await self.store_for()
        turn = await service.start_turn(request, store)

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
            self.log.info("Client left the stream of thread %s; the turn continues.", turn.thread_id)
            return
        self.finish(set_content_type=NDJSON)


class StopHandler(ChatbotHandler):
    route_name = "stop"

    async def handle(self) -> None:
        thread_id = self.thread_param()
        await self.service.stop(self.owner, thread_id, await self.store_for())
        self.reply({"detail": "Conversation stopped."})
