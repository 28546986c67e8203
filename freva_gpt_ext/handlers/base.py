"""The base of every chatbot handler: parameters from query or JSON body, `{"detail"}` errors, identity."""

from __future__ import annotations

import functools
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any, cast

from jupyter_core.utils import ensure_async
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web
from tornado.escape import to_unicode

from ..auth import FrevaRestIdentityProvider, owner_for
from ..authorizer import CHATBOT_RESOURCE
from ..core.service import SETTINGS_KEY, ChatService, Refused
from ..storage.base import StoreError, ThreadInfo, ThreadStore
from ..variants import THREAD_ID_RE
from .spec import BY_NAME

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}
# Bounds of request input: any integer parameter (page, index) stays far inside SQLite's 64 bits; a JSON body
# deeper than this is no request of this API.
MAX_INT = 10**9
MAX_JSON_DEPTH = 64


def check_value(name: str, value: Any) -> None:
    """Refuse JSON nested deeper than MAX_JSON_DEPTH and text with lone surrogates (they cannot be stored or
    sent as UTF-8), naming the parameter. Iterative: the depth is what is being checked."""
    stack: list[tuple[Any, int]] = [(name, 1), (value, 2)]  # the body object is level 1
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(422, f"The parameter {name!a} contains a lone surrogate (invalid Unicode).") from None
        elif isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise ApiError(400, f"The request body is nested deeper than {MAX_JSON_DEPTH} levels.")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


class ApiError(web.HTTPError):
    """An error answered as `{"detail": ...}`, with a short reason phrase (the web frontend shows only that)."""

    def __init__(self, status: int, detail: str, reason: str | None = None) -> None:
        phrase = (reason or detail).splitlines()[0][:80].encode("latin-1", "replace").decode("latin-1")
        super().__init__(status, log_message=detail.replace("%", "%%"), reason=phrase)
        self.detail = detail


def authenticated(method: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """tornado's `authenticated` with the precise 401/403 of API.md for GET and POST alike.

    The name matters: jupyter_server recognises authenticated endpoints by it.
    """

    @functools.wraps(method)
    async def inner(self: ChatbotHandler) -> None:
        if not self.current_user:
            self.get_login_url()
        await method(self)

    return inner


def authorized(method: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """jupyter_server's `authorized`, asking for the route's own action instead of the HTTP method's: a GET
    `streamresponse` runs code and a GET `deletethread` deletes, whatever an authorizer that maps GET to `read`
    would think."""

    @functools.wraps(method)
    async def inner(self: ChatbotHandler) -> None:
        action = self.auth_action
        if not await ensure_async(self.authorizer.is_authorized(self, self.current_user, action, self.auth_resource)):
            raise ApiError(403, f"You may not {action} on {self.auth_resource}.", "Not authorized")
        await method(self)

    return inner


class ChatbotHandler(ExtensionHandlerMixin, APIHandler):
    auth_resource = CHATBOT_RESOURCE
    route_name = ""

    @property
    def auth_action(self) -> str:
        route = BY_NAME.get(self.route_name)
        return route.action if route is not None else "read"

    @property
    def service(self) -> ChatService:
        """Everything the handlers need of the server (the app puts it into the settings)."""
        return cast(ChatService, self.settings[SETTINGS_KEY])

    # -- errors -------------------------------------------------------------------------------------------
    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        # jupyter_server's request log already has a line for every 4xx; tornado would add a second one.
        if isinstance(value, web.HTTPError) and value.status_code < 500:
            self.log.debug("%s %s: %s", value.status_code, self.request.path, getattr(value, "detail", value))
            return
        super().log_exception(typ, value, tb)

    def _log(self) -> None:
        # climateclaw-client asks without credentials first and again with its token: that first 401 is routine,
        # not a warning (tornado has no public hook for the request log line).
        if self.get_status() == 401 and not (
            self.request.headers.get("Authorization") or self.request.headers.get("X-Freva-User-Token")
        ):
            self.log.debug("401 %s %s without credentials", self.request.method, self.request.path)
            return
        super()._log()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            detail = exc.detail
        elif isinstance(exc, web.HTTPError):
            detail = exc.log_message % exc.args if exc.log_message and exc.args else exc.log_message
            detail = detail or self._reason
        else:
            detail = "Internal server error."
        if status_code == 401:
            self.set_header("WWW-Authenticate", "Bearer")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"detail": detail}))

    def get_login_url(self) -> str:
        # Reached when a route needs a user and there is none.
        error = getattr(self, "_freva_auth_error", None)
        if error is not None:
            raise error
        if isinstance(self.identity_provider, FrevaRestIdentityProvider):
            raise ApiError(401, "Not authenticated: send 'Authorization: Bearer <token>'.")
        raise ApiError(403, "Not authenticated.")

    # -- parameters ---------------------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        cached = getattr(self, "_params", None)
        if cached is not None:
            return cached
        # Query values are taken as sent (tornado would strip them), and decoded here so that bad UTF-8 is a
        # 422 naming its parameter, like a lone surrogate in a JSON body.
        merged: dict[str, Any] = {}
        for key, values in self.request.query_arguments.items():
            try:
                merged[key] = values[-1].decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(422, f"The parameter {key!a} is not valid UTF-8.") from None
        if self.request.method == "POST" and self.request.body.strip():
            try:
                body = json.loads(self.request.body)
            except RecursionError:
                raise ApiError(400, f"The request body is nested deeper than {MAX_JSON_DEPTH} levels.") from None
            except ValueError as err:
                raise ApiError(400, "The request body is not valid JSON.") from err
            if not isinstance(body, dict):
                raise ApiError(400, "The request body must be a JSON object.")
            merged.update(body)
        for key, value in merged.items():
            check_value(key, value)
        self._params = merged
        return merged

    def str_param(self, name: str, *, required: bool = False, default: str | None = None) -> str | None:
        value = self.params().get(name)
        if value is None:
            if required:
                raise ApiError(422, f"The parameter '{name}' is required.")
            return default
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ApiError(422, f"The parameter '{name}' must be a string.")
        return str(value)

    def bool_param(self, name: str, default: bool) -> bool:
        value = self.params().get(name)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return default if text == "" else False
        raise ApiError(422, f"The parameter '{name}' must be true or false.")

    def int_param(self, name: str, *, default: int | None = None, low: int = 0, high: int = MAX_INT) -> int:
        value = self.params().get(name)
        if value is None or value == "":
            if default is None:
                raise ApiError(422, f"The parameter '{name}' is required.")
            return default
        # ASCII digits only (int() takes '²' and Arabic digits), and never more of them than a bound can need:
        # int() refuses thousands of digits with a ValueError.
        if isinstance(value, str) and value.isascii() and value.isdigit():
            number = int(value) if len(value.lstrip("0")) <= len(str(MAX_INT)) else MAX_INT + 1
        elif isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            raise ApiError(422, f"The parameter '{name}' must be a non-negative integer (ASCII digits).")
        if not low <= number <= high:
            raise ApiError(422, f"The parameter '{name}' must be between {low} and {high}.")
        return number

    def thread_param(self, name: str = "thread_id", *, required: bool = True) -> str | None:
        """A thread id; empty means none given. Anything that could be a path or a query is refused."""
        value = self.str_param(name)
        if value is None or value == "":
            if required:
                raise ApiError(422, f"The parameter '{name}' is required.")
            return None
        if not THREAD_ID_RE.fullmatch(value):
            raise ApiError(422, f"The parameter '{name}' must match [A-Za-z0-9_-]{{1,64}}.")
        return value

    # -- identity, store, ownership -----------------------------------------------------------------------
    @property
    def owner(self) -> str:
        return owner_for(self, self.service.owner)

    async def store_for(self) -> ThreadStore:
        """The persistent thread store of this request (it may depend on a trusted proxy's vault header)."""
        return await self.service.store_for(self.request.headers)

    async def readable_thread(self, store: ThreadStore, thread_id: str) -> ThreadInfo:
        """A thread the caller may read: theirs, or anyone's while sharing is on."""
        info = await store.info(thread_id)
        if info is None or (info.user_id != self.owner and not self.service.thread_sharing):
            raise ApiError(404, "Thread not found.")
        return info

    async def owned_thread(self, store: ThreadStore, thread_id: str) -> ThreadInfo:
        """A thread the caller owns; 403 for another's (404 when sharing is off: nothing reveals it)."""
        info = await self.readable_thread(store, thread_id)
        if info.user_id != self.owner:
            raise ApiError(403, "This thread belongs to another user.")
        return info

    def reply(self, body: Any) -> None:
        self.finish(json.dumps(body))

    # -- dispatch -----------------------------------------------------------------------------------------
    async def prepare(self) -> None:  # type: ignore[override]
        try:
            await super().prepare()
        except web.HTTPError as err:
            # jupyter_server refuses a request without a user with a bare 403 (XSRF or login): say why,
            # with the status API.md gives (401 for a missing bearer token when standalone).
            if err.status_code == 403 and not self.current_user:
                self.get_login_url()
            raise
        if self.request.method in ("GET", "HEAD") and self.auth_action != "read":
            # jupyter_server checks XSRF only for other methods; a link is a GET.
            self.check_xsrf_cookie()

    # -- XSRF ---------------------------------------------------------------------------------------------
    def check_xsrf_cookie(self) -> None:
        """Routes that change or run something need the XSRF token from cookie sessions, on GET too.

        Defined here, not inherited: JupyterHub replaces jupyter_server's check with one that lets
        cookie-authenticated navigation GETs through. Header and bearer tokens need none (a cross-site page
        cannot send them). A same-origin request is no substitute: on JupyterHub every user's server shares
        the origin.
        """
        if self.auth_action == "read":
            super().check_xsrf_cookie()
            return
        if not getattr(self, "_jupyter_current_user", None):
            return  # called before the user is known (tornado, JupyterHub's cookie check): prepare() calls again
        if self.token_authenticated or self.settings.get("disable_check_xsrf", False):
            return
        sent = (
            self.request.headers.get("X-XSRFToken")
            or self.request.headers.get("X-CSRFToken")
            or self.get_argument("_xsrf", None)
        )
        if not sent:
            raise ApiError(
                403,
                f"The '{self.route_name}' route needs the X-XSRFToken header (the _xsrf cookie's value) when "
                "called with a login cookie.",
                "XSRF token missing",
            )
        # `xsrf_token` is the active scheme's (tornado's, or JupyterHub's session-bound one); decoding both
        # sides compares the raw tokens whatever masking either side used.
        expected = self._decode_xsrf_token(to_unicode(self.xsrf_token))[1]
        given = self._decode_xsrf_token(sent)[1]
        if not expected or not given or not hmac.compare_digest(given, expected):
            raise ApiError(403, "The XSRF token does not match the _xsrf cookie.", "XSRF token mismatch")

    async def handle(self) -> None:
        raise NotImplementedError

    async def _dispatch(self) -> None:
        try:
            await self.handle()
        except Refused as err:
            raise ApiError(err.status, err.detail, err.reason) from err
        except StoreError as err:
            self.log.error("Thread store failure on %s: %s", self.route_name, err)
            raise ApiError(503, f"The thread store failed: {err}") from err

    @authenticated
    @authorized
    async def get(self) -> None:
        await self._dispatch()

    @authenticated
    @authorized
    async def post(self) -> None:
        await self._dispatch()
