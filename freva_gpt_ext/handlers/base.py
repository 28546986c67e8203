"""The base of every chatbot handler: parameters from query or JSON body, `{"detail"}` errors, identity."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web

from ..auth import FrevaRestIdentityProvider, owner_for
from ..storage.base import StoreError, ThreadInfo, ThreadStore
from ..variants import THREAD_ID_RE

if TYPE_CHECKING:
    from ..app import FrevaGPT

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


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


class ChatbotHandler(ExtensionHandlerMixin, APIHandler):
    auth_resource = "freva_gpt"
    route_name = ""

    @property
    def app(self) -> FrevaGPT:
        return self.extensionapp  # type: ignore[return-value]

    # -- errors -------------------------------------------------------------------------------------------
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
        merged: dict[str, Any] = {k: self.get_query_argument(k) for k in self.request.query_arguments}
        if self.request.method == "POST" and self.request.body.strip():
            try:
                body = json.loads(self.request.body)
            except ValueError as err:
                raise ApiError(400, "The request body is not valid JSON.") from err
            if not isinstance(body, dict):
                raise ApiError(400, "The request body must be a JSON object.")
            merged.update(body)
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

    def int_param(self, name: str, *, default: int | None = None, low: int = 0, high: int | None = None) -> int:
        value = self.params().get(name)
        if value is None or value == "":
            if default is None:
                raise ApiError(422, f"The parameter '{name}' is required.")
            return default
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())
        ):
            raise ApiError(422, f"The parameter '{name}' must be a non-negative integer.")
        number = int(value)
        if number < low or (high is not None and number > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ApiError(422, f"The parameter '{name}' must be {bound}.")
        return number

    def thread_param(self, name: str = "thread_id", *, required: bool = True) -> str | None:
        """A thread id; empty means none given. Anything that could be a path or a query is refused."""
        value = self.str_param(name)
        if value is None or value == "":
            if required:
                raise ApiError(422, f"The parameter '{name}' is required.")
            return None
        if not THREAD_ID_RE.match(value):
            raise ApiError(422, f"The parameter '{name}' must match [A-Za-z0-9_-]{{1,64}}.")
        return value

    # -- identity, store, ownership -----------------------------------------------------------------------
    @property
    def owner(self) -> str:
        return owner_for(self, self.app.owner)

    def store_for(self) -> ThreadStore:
        return self.app.store_for(self.request)

    async def thread_info(self, store: ThreadStore, thread_id: str) -> ThreadInfo | None:
        try:
            return await store.info(thread_id)
        except StoreError as err:
            raise ApiError(503, f"The thread store failed: {err}") from err

    async def readable_thread(self, store: ThreadStore, thread_id: str) -> ThreadInfo:
        """A thread the caller may read: theirs, or anyone's while sharing is on."""
        info = await self.thread_info(store, thread_id)
        if info is None or (info.user_id != self.owner and not self.app.thread_sharing):
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

    async def handle(self) -> None:
        raise NotImplementedError

    async def _dispatch(self) -> None:
        try:
            await self.handle()
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
