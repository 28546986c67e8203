"""Test authorizers, configured through `ServerApp.authorizer_class` (a configuration seam, not a monkeypatch)."""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.authorizer import Authorizer


class ReadOnlyBobAuthorizer(Authorizer):
    """`alice` may do anything; `bob` may only read (jupyter_server's `read` action)."""

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        return user.username != "bob" or action == "read"


class NoContentsWritesAuthorizer(Authorizer):
    """Anyone may use the chatbot, nobody may write the server's files (the contents API's `write`)."""

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        return not (resource == "contents" and action == "write")
