"""A fake Freva vault for tests: `GET /<name>` answers what `answers[name]` says (a status and a body).

In-process (inside a running asyncio loop)::

    vault = FakeVault({"ok": (200, {"mongodb.url": mongo.uri})})
    await vault.start()         # vault.url("ok") == "http://127.0.0.1:PORT/ok"
    ...                         # vault.counts["ok"]: how often that path was asked
    await vault.stop()

A body that is a str is sent as it is (for answers that are not JSON).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import tornado.web

from tests.local_server import LocalServer


class _Secret(tornado.web.RequestHandler):
    def initialize(self, fake: FakeVault) -> None:
        self.fake = fake

    def get(self, name: str) -> None:
        self.fake.counts[name] += 1
        status, body = self.fake.answers.get(name, (404, {"detail": "no such secret"}))
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(body if isinstance(body, str) else json.dumps(body))


class FakeVault(LocalServer):
    def __init__(self, answers: dict[str, tuple[int, Any]]) -> None:
        super().__init__()
        self.answers = dict(answers)
        self.counts: Counter[str] = Counter()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def routes(self) -> list[tuple[Any, ...]]:
        return [(r"/(.*)", _Secret, {"fake": self})]
