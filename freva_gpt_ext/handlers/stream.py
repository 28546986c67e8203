"""`streamresponse` (the NDJSON stream of a turn) and `stop`."""

from __future__ import annotations

import json

from tornado.iostream import StreamClosedError

from ..auth import BearerValidator
from ..core.service import TurnRequest
from .base import ApiError, ChatbotHandler, check_value

NDJSON = "application/x-ndjson"
CELL_FIELDS = ("source", "outputs", "notebook_path")
CELL_KEYS = ", ".join(f"'{k}'" for k in CELL_FIELDS)


class StreamHandler(ChatbotHandler):
    route_name = "streamresponse"

    async def handle(self) -> None:
        service = self.service
        catalogue = service.catalogue
        if not catalogue.names:
            if service.discovery is not None:
                service.discovery.poke()
            raise ApiError(503, service.no_model_detail())
        # Validate everything before the first line: afterwards only in-stream errors are possible.
        user_input = self.str_param("input", required=True) or ""
        cell_context = self.cell_context_param()
        cell_chars = sum(map(len, cell_context.values())) if cell_context else 0
        if len(user_input) + cell_chars > service.max_input_chars:
            what = "The input and its cell context are" if cell_context else "The input is"
            raise ApiError(413, f"{what} longer than {service.max_input_chars} characters.", "Input too large")
        thread_id = self.thread_param(required=False)
        chatbot = (self.str_param("chatbot") or "").strip()
        model = catalogue.get(chatbot or None)
        if model is None:
            valid = ", ".join(catalogue.names)
            raise ApiError(422, f"The parameter 'chatbot' names no model ('{chatbot}'). Valid: {valid}.")
        if service.discovery is not None:
            # Who listens on a discovered model's port may have changed since it was found.
            refusal = await service.discovery.refusal_for(model)
            if refusal:
                raise ApiError(503, refusal, "Model server not trusted")
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
            kernel_context=self.bool_param("kernel_context", True),
            cell_context=cell_context,
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

    def cell_context_param(self) -> dict[str, str] | None:
        """`cell_context`: an object (a JSON-encoded one in a query) of strings, `source` required."""
        value = self.params().get("cell_context")
        if value is None or value == "":
            return None
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except (ValueError, RecursionError):
                raise ApiError(422, "The parameter 'cell_context' is not valid JSON.") from None
            check_value("cell_context", value)
        if not isinstance(value, dict):
            raise ApiError(422, f"The parameter 'cell_context' must be an object with the keys {CELL_KEYS}.")
        unknown = sorted(set(value) - set(CELL_FIELDS))
        if unknown:
            raise ApiError(422, f"The parameter 'cell_context' has unknown keys {unknown}; it takes {CELL_KEYS}.")
        if not isinstance(value.get("source"), str):
            raise ApiError(422, "The parameter 'cell_context' needs 'source', a string.")
        for key in CELL_FIELDS:
            if not isinstance(value.get(key, ""), str):
                raise ApiError(422, f"The parameter 'cell_context': '{key}' must be a string.")
        return {key: value.get(key, "") for key in CELL_FIELDS}


class StopHandler(ChatbotHandler):
    route_name = "stop"

    async def handle(self) -> None:
        thread_id = self.thread_param()
        await self.service.stop(self.owner, thread_id, await self.store_for())
        self.reply({"detail": "Conversation stopped."})
