"""A fake freva-rest auth server for tests: `GET /api/freva-nextgen/auth/v2/systemuser` with a bearer token.

In-process (inside a running asyncio loop)::

    auth = FakeAuth()
    await auth.start()          # auth.url == "http://127.0.0.1:PORT"
    ...                         # auth.counts["good-token"]: how often that token was asked about
    await auth.stop()

Tokens (``DEFAULT_ANSWERS``): ``good-token`` → 200 ``{"username": "janedoe", ...}``, ``pw-token`` → 200
``{"pw_name": "pwuser"}``, ``guest-token`` → 403, ``nameless-token`` → 200 ``{}``, anything else → 401.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import tornado.web

from tests.local_server import LocalServer

SYSTEMUSER_PATH = "/api/freva-nextgen/auth/v2/systemuser"

DEFAULT_ANSWERS: dict[str, tuple[int, dict[str, Any]]] = {
    "good-token": (200, {"username": "janedoe", "pw_name": "jdoe", "email": "jane@example.org"}),
    "pw-token": (200, {"pw_name": "pwuser"}),
    "guest-token": (403, {"detail": "Guests are not allowed."}),
    "nameless-token": (200, {}),
}


class _SystemUser(tornado.web.RequestHandler):
    def initialize(self, fake: FakeAuth) -> None:
        self.fake = fake

    def get(self) -> None:
        scheme, _, token = self.request.headers.get("Authorization", "").partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        self.fake.counts[token] += 1
        status, body = self.fake.answers.get(token, (401, {"detail": "Invalid token."}))
        self.set_status(status)
        self.finish(body)


class FakeAuth(LocalServer):
    """The fake auth server; start it inside a running event loop."""

    def __init__(self, answers: dict[str, tuple[int, dict[str, Any]]] | None = None) -> None:
        super().__init__()
        self.answers = dict(DEFAULT_ANSWERS if answers is None else answers)
        self.counts: Counter[str] = Counter()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def routes(self) -> list[tuple[Any, ...]]:
        return [(SYSTEMUSER_PATH, _SystemUser, {"fake": self})]
