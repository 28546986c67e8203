"""A test identity provider: `Authorization: token alice|bob` names two users (a configuration seam)."""

from __future__ import annotations

from jupyter_server.auth.identity import IdentityProvider, User

USERS = ("alice", "bob")


class TwoUsersIdentityProvider(IdentityProvider):
    def get_user(self, handler):  # type: ignore[override]
        scheme, _, name = handler.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "token" and name in USERS:
            handler._token_authenticated = True
            return User(username=name, name=name, display_name=name)
        return None

    def is_token_authenticated(self, handler) -> bool:  # type: ignore[override]
        return getattr(handler, "_token_authenticated", False)
