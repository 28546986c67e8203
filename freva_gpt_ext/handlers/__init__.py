"""Tornado handlers of `<base_url>api/chatbot/*`: thin, one module per route group."""

from __future__ import annotations

from jupyter_server.utils import url_path_join
from tornado.web import RequestHandler

from .base import ChatbotHandler
from .export import ExportThreadHandler
from .kernels import KernelContextHandler
from .meta import (
    AvailableChatbotsHandler,
    DocsHandler,
    HelpHandler,
    NewThreadHandler,
    OpenAPIHandler,
    PingHandler,
    UnknownRouteHandler,
)
from .spec import BY_NAME
from .stream import StopHandler, StreamHandler
from .threads import (
    DeleteThreadHandler,
    EditThreadHandler,
    FeedbackHandler,
    GetThreadHandler,
    SearchThreadsHandler,
    SetTopicHandler,
    UserThreadsHandler,
)

HANDLERS: tuple[type[ChatbotHandler], ...] = (
    PingHandler,
    HelpHandler,
    DocsHandler,
    OpenAPIHandler,
    AvailableChatbotsHandler,
    NewThreadHandler,
    StreamHandler,
    StopHandler,
    KernelContextHandler,
    GetThreadHandler,
    ExportThreadHandler,
    UserThreadsHandler,
    SearchThreadsHandler,
    SetTopicHandler,
    DeleteThreadHandler,
    EditThreadHandler,
    FeedbackHandler,
)
assert {h.route_name for h in HANDLERS} == set(BY_NAME), "every described route has a handler"


def handlers(prefix: str = "api/chatbot") -> list[tuple[str, type[RequestHandler]]]:
    """Routes relative to the server's base_url (ExtensionApp prefixes it). A trailing slash is served like
    none (one version of the web frontend sends it): a redirect would drop a POST body."""
    routes = [(url_path_join("/", prefix, h.route_name.replace(".", r"\.")) + "/?", h) for h in HANDLERS]
    return [*routes, (url_path_join("/", prefix, ".*"), UnknownRouteHandler)]
