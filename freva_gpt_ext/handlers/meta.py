"""Routes about the service itself: ping, help, docs, openapi.json, availablechatbots, newthread."""

from __future__ import annotations

import json
import secrets
import string

from jupyter_server.auth.decorator import allow_unauthenticated

from .. import __version__
from .base import ApiError, ChatbotHandler
from .spec import BY_NAME, ROUTES, docs_markdown, help_text, openapi

_ALPHABET = string.ascii_letters + string.digits


def new_thread_id() -> str:
    """32 characters of [A-Za-z0-9]: about 190 bits, unguessable (ids double as share links)."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(32))


class PingHandler(ChatbotHandler):
    route_name = "ping"

    @allow_unauthenticated
    async def get(self) -> None:
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
        self.reply(self.app.catalogue.names)


class NewThreadHandler(ChatbotHandler):
    route_name = "newthread"

    async def handle(self) -> None:
        self.reply(new_thread_id())


class UnknownRouteHandler(ChatbotHandler):
    """Anything else under api/chatbot/: a JSON 404 naming the routes, not Jupyter's HTML page."""

    route_name = ""

    async def handle(self) -> None:
        raise ApiError(404, f"Unknown route. Routes: {', '.join(r.name for r in ROUTES)}.", "Unknown route")
