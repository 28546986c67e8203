"""Identity: who owns the threads of a request.

Inside Jupyter the server has authenticated the request; the owner is its user, except with jupyter_server's
own token/password identity providers, which invent a random user per token request. Standalone, a freva-rest
bearer token is validated against the auth server (cached; tokens are never logged).
"""

from __future__ import annotations

import getpass
import hashlib
import os
import time
from collections import OrderedDict
from typing import Any

import httpx
from jupyter_server.auth.identity import IdentityProvider, PasswordIdentityProvider, User
from tornado import web

SYSTEMUSER_PATH = "/api/freva-nextgen/auth/v2/systemuser"
INVALID_TOKEN = "The token is invalid or expired."
# Providers that make up a new user for each token-authenticated request.
_ANONYMOUS_PROVIDERS = (IdentityProvider, PasswordIdentityProvider)


def server_owner(owner_override: str) -> str:
    """Whose Jupyter server this is: its notebook kernels are theirs."""
    # On a hub the user may edit their own config, so the override must not let them pose as another.
    return os.environ.get("JUPYTERHUB_USER") or owner_override or getpass.getuser()


def owner_for(handler: Any, owner_override: str) -> str:
    """The owner name of a request's threads (API.md, Identity)."""
    if type(handler.identity_provider) in _ANONYMOUS_PROVIDERS:
        return server_owner(owner_override)
    return str(handler.current_user.username)


class AuthError(web.HTTPError):
    """An identity failure with the status API.md gives it."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(status, log_message=detail, reason=detail[:80])


class BearerValidator:
    """Checks freva-rest bearer tokens, remembering valid ones for `ttl` and refused ones (401) for
    `negative_ttl` (bounded, expiring), so that neither costs a round trip each time."""

    def __init__(
        self, *, rest_url: str, trust_proxy_headers: bool, ttl: float, negative_ttl: float, timeout: float
    ) -> None:
        self.rest_url = rest_url.rstrip("/")
        self.trust_proxy_headers = trust_proxy_headers
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        # The user name, or None for a refused token, and until when that holds.
        self._cache: OrderedDict[tuple[str, str], tuple[str | None, float]] = OrderedDict()
        self._max = 4096
        self._http = httpx.AsyncClient(timeout=timeout, trust_env=False)

    async def aclose(self) -> None:
        await self._http.aclose()

    def _rest_for(self, headers: Any) -> str:
        if self.trust_proxy_headers and headers.get("X-Freva-Rest-URL"):
            return str(headers["X-Freva-Rest-URL"]).rstrip("/")
        if not self.rest_url:
            raise AuthError(400, "No freva-rest URL is configured to validate the token.")
        return self.rest_url

    @staticmethod
    def token_from(headers: Any) -> str | None:
        raw = headers.get("X-Freva-User-Token") or headers.get("Authorization")
        if raw is None:
            return None
        scheme, _, token = raw.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError(422, "The token must be sent as 'Bearer <token>'.")
        return token.strip()

    async def username(self, headers: Any) -> str | None:
        """The validated user name, None without a token; AuthError when the token is refused."""
        token = self.token_from(headers)
        if token is None:
            return None
        rest = self._rest_for(headers)
        key = (rest, hashlib.sha256(token.encode()).hexdigest())
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached and cached[1] > now:
            self._cache.move_to_end(key)
            if cached[0] is None:
                raise AuthError(401, INVALID_TOKEN)
            return cached[0]
        try:
            answer = await self._http.get(rest + SYSTEMUSER_PATH, headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as err:
            raise AuthError(503, f"The authentication server is unreachable ({type(err).__name__}).") from err
        if answer.status_code in (401, 422):
            # Only a refusal is remembered: an outage of the auth server (5xx) says nothing about the token.
            # With a TTL of 0 an entry would only push a valid token out of the cache.
            if self.negative_ttl > 0:
                self._remember(key, None, now + self.negative_ttl)
            raise AuthError(401, INVALID_TOKEN)
        if answer.status_code == 403:
            raise AuthError(403, "Guest users may not use the chatbot.")
        if answer.status_code >= 400:
            raise AuthError(503, f"The authentication server answered {answer.status_code}.")
        try:
            data = answer.json()
        except ValueError:
            data = {}
        name = (data.get("username") or data.get("pw_name")) if isinstance(data, dict) else None
        if not name:
            raise AuthError(502, "The authentication server named no user.")
        self._remember(key, str(name), now + self.ttl)
        return str(name)

    def _remember(self, key: tuple[str, str], name: str | None, until: float) -> None:
        self._cache[key] = (name, until)
        self._cache.move_to_end(key)
        if len(self._cache) > self._max:
            self._cache.popitem(last=False)


class FrevaRestIdentityProvider(IdentityProvider):
    """Standalone identity: a freva-rest bearer token (or, only when enabled, a fixed development user)."""

    # Set by the FrevaGPT app when it starts standalone.
    validator: BearerValidator | None = None
    dev_user: str | None = None

    async def get_user(self, handler: web.RequestHandler) -> User | None:  # type: ignore[override]
        cached = getattr(handler, "_freva_user", None)
        if cached is not None:
            return cached
        if self.validator is None:
            return None
        try:
            name = await self.validator.username(handler.request.headers)
        except AuthError as err:
            # Raised only when the route needs a user, so that `ping` still answers.
            handler._freva_auth_error = err  # type: ignore[attr-defined]
            return None
        if name is None:
            if not self.dev_user:
                return None
            name = self.dev_user
        # A header token is not a cookie session: no XSRF check applies.
        handler._token_authenticated = True  # type: ignore[attr-defined]
        user = User(username=name, name=name, display_name=name)
        handler._freva_user = user  # type: ignore[attr-defined]
        return user

    def is_token_authenticated(self, handler: web.RequestHandler) -> bool:
        return getattr(handler, "_token_authenticated", False)

    @property
    def auth_enabled(self) -> bool:
        return True

    def validate_security(self, app: Any, ssl_options: dict | None = None) -> None:
        """The bearer check replaces Jupyter's token: nothing to warn about."""
