"""Routes about the service itself: ping, help, docs, openapi.json, availablechatbots, newthread."""

from __future__ import annotations

import json

from jupyter_server.auth.decorator import allow_unauthenticated

from .. import __version__
from ..core.turns import new_thread_id
from .base import ApiError, ChatbotHandler
from .spec import BY_NAME, ROUTES, docs_markdown, help_text, openapi

# Why `availablechatbots` is empty (no catalogue, a broken one, or what model discovery saw).
DETAIL_HEADER = "X-FrevaGPT-Detail"


class PingHandler(ChatbotHandler):
    route_name = "ping"

    @allow_unauthenticated
    async def get(self) -> None:
        problem = self.service.catalogue_problem
        if problem:
            self.reply({"status": "degraded", "version": __version__, "detail": problem})
            return
        self.reply({"status": "ok", "version": __version__})

    @allow_unauthenticated
    async def post(self) -> None:
        await self.get()

    def check_xsrf_cookie(self) -> None:
        """A POST ping changes nothing and carries no credentials."""


class HelpHandler(ChatbotHandler):
    route_name = "help"

    async def handle(self) -> None:
        endpoint = self.str_param("endpoint")
        if endpoint:
            route = BY_NAME.get(endpoint.strip("/").removeprefix("api/chatbot/"))
            if route is None:
                raise ApiError(404, f"Unknown endpoint '{endpoint}'. Known: {', '.join(BY_NAME)}.")
            self.reply(help_text(route))
            return
        self.reply({r.name: help_text(r) for r in ROUTES})


class DocsHandler(ChatbotHandler):
    route_name = "docs"

    async def handle(self) -> None:
        self.finish(docs_markdown(__version__), set_content_type="text/markdown; charset=UTF-8")


class OpenAPIHandler(ChatbotHandler):
    route_name = "openapi.json"

    async def handle(self) -> None:
        self.finish(json.dumps(openapi(__version__)))


class AvailableChatbotsHandler(ChatbotHandler):
    route_name = "availablechatbots"

    async def handle(self) -> None:
        service = self.service
        if service.discovery is not None:
            # Never waited for: a round it starts shows its models on a later ask (the panel asks again).
            service.discovery.poke()
        names = service.catalogue.names
        if not names:
            # Clients expect a list: the reason rides along in a header (the whole text is in `ping`).
            self.set_header(DETAIL_HEADER, header_line(service.no_model_detail()))
        self.reply(names)


def header_line(text: str, limit: int = 200) -> str:
    """`text` as one ASCII line of at most `limit` characters: a header value holds no line breaks."""
    line = " ".join(text.split()).encode("ascii", "replace").decode("ascii")
    return line if len(line) <= limit else line[: limit - 3] + "..."


class NewThreadHandler(ChatbotHandler):
    route_name = "newthread"

    async def handle(self) -> None:
        self.reply(new_thread_id())


class UnknownRouteHandler(ChatbotHandler):
    """Anything else under api/chatbot/: a JSON 404 naming the routes, not Jupyter's HTML page."""

    route_name = ""

    async def handle(self) -> None:
        raise ApiError(404, f"Unknown route. Routes: {', '.join(r.name for r in ROUTES)}.", "Unknown route")
