"""Standalone authorization: bearer users reach the chatbot API and nothing else of the Jupyter server."""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.authorizer import Authorizer

CHATBOT_RESOURCE = "freva_gpt"


class ChatbotOnlyAuthorizer(Authorizer):
    """Allows the chatbot API (resource `freva_gpt`) and refuses every other resource of jupyter_server: contents,
    files, kernels, sessions, kernel specs, terminals, config, nbconvert, events, status and shutdown.

    A Freva user with a valid token is not the owner of the server: the server's files and kernels are not theirs.
    """

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        return resource == CHATBOT_RESOURCE
