"""Identity through a real jupyter_server (API.md, Identity): whose threads a request sees, and auth errors.

`TestJupyterTokenIdentity` runs jupyter_server's default `IdentityProvider` (token auth, a random user per token
request); `TestBearerIdentity` runs the standalone `FrevaRestIdentityProvider` against a fake freva-rest auth
server. The JUPYTERHUB_USER rule needs the server's environment and is tested in test_server_process.py.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from jupyter_server.auth.identity import IdentityProvider, PasswordIdentityProvider

from freva_gpt_ext.core.stores import VAULT_HEADER
from tests.conftest import body_json, parse_lines, serving
from tests.fake_auth import FakeAuth
from tests.mongo_server import unique_database


def _closed_url() -> str:
    """The URL of a port nobody listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


CLOSED_URL = _closed_url()


def _base_config(tmp_path: Path, catalogue: Path) -> dict[str, Any]:
    return {
        "ServerApp": {
            "jpserver_extensions": {"freva_gpt_ext": True},
            "allow_unauthenticated_access": False,
        },
        "FrevaGPT": {
            "litellm_config": str(catalogue),
            "data_dir": str(tmp_path / "data"),
            "heartbeat_interval": 0.2,
            "stop_poll_interval": 0.05,
            "lease_ttl": 5.0,
            "llm_read_timeout": 10.0,
        },
    }


@pytest.fixture
def bare_fetch(jp_serverapp, http_server_client, jp_base_url):
    """A request to a chatbot route with exactly the given headers (no server token) and no raising."""

    async def fetch(
        route: str,
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        **kwargs: Any,
    ):
        url = f"{jp_base_url}api/chatbot/{route}" + (f"?{urlencode(params)}" if params else "")
        if method == "POST":
            kwargs.setdefault("body", "")
        return await http_server_client.fetch(
            url, method=method, headers=headers or {}, raise_error=False, request_timeout=20, **kwargs
        )

    return fetch


def assert_detail(response: Any, status: int, part: str = "") -> str:
    assert response.code == status, (response.code, response.body)
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    body = body_json(response)
    assert set(body) == {"detail"}, body
    assert isinstance(body["detail"], str) and body["detail"], body
    assert part.lower() in body["detail"].lower(), body
    return body["detail"]


async def stream_turn(fetch: Any, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    """POST one `streamresponse` turn (fake-text) and return its lines."""
    body = {"input": "who am I?", "chatbot": "fake-text", **params}
    response = await fetch("streamresponse", method="POST", headers=headers, body=json.dumps(body))
    assert response.code == 200, response.body
    lines = parse_lines(response.body)
    assert lines[0]["variant"] == "ServerHint"
    assert lines[-1]["variant"] == "StreamEnd"
    return lines


async def listed_threads(fetch: Any, headers: dict[str, str]) -> list[dict[str, Any]]:
    response = await fetch("getuserthreads", headers=headers)
    assert response.code == 200, response.body
    threads, total = body_json(response)
    assert total == len(threads)
    return threads


async def owner_seen(fetch: Any, headers: dict[str, str]) -> str:
    """The owner a request's new thread gets (one turn, then the listing of that request's identity)."""
    lines = await stream_turn(fetch, headers)
    thread_id = lines[0]["content"]["thread_id"]
    (thread,) = [t for t in await listed_threads(fetch, headers) if t["thread_id"] == thread_id]
    return thread["user_id"]


# ---------------------------------------------------------------------------------------------------------------
# Inside Jupyter: the default token IdentityProvider invents a random user per token request.
# ---------------------------------------------------------------------------------------------------------------


class TestJupyterTokenIdentity:
    @pytest.fixture
    def jp_server_config(self, tmp_path: Path, catalogue: Path, freva_config: dict[str, Any]) -> dict[str, Any]:
        config = _base_config(tmp_path, catalogue)  # identity_provider_class unset: jupyter_server's default
        config["FrevaGPT"].update({"owner": "researcher", **freva_config})
        return config

    @pytest.fixture
    def token_fetch(self, bare_fetch, jp_auth_header):
        """A chatbot request with the server's token (what curl or jp_fetch sends)."""

        async def fetch(route: str, *, headers: dict[str, str] | None = None, **kwargs: Any):
            return await bare_fetch(route, headers={**jp_auth_header, **(headers or {})}, **kwargs)

        return fetch

    async def test_each_token_request_is_a_new_jupyter_user(self, jp_fetch):
        """The premise of the owner rule: jupyter_server names a fresh random user per token request."""
        first = body_json(await jp_fetch("api", "me"))["identity"]["username"]
        second = body_json(await jp_fetch("api", "me"))["identity"]["username"]
        assert first != second

    async def test_token_requests_share_the_configured_owner(self, jp_serverapp, token_fetch):
        expected = os.environ.get("JUPYTERHUB_USER") or "researcher"
        # jupyter_server's own default (PasswordIdentityProvider, which also serves tokens).
        assert type(jp_serverapp.identity_provider) in (IdentityProvider, PasswordIdentityProvider)
        lines = await stream_turn(token_fetch, {})
        thread_id = lines[0]["content"]["thread_id"]
        # A later, separate token request (another random jupyter user) sees the same thread as its own.
        threads = await listed_threads(token_fetch, {})
        assert [(t["thread_id"], t["user_id"]) for t in threads] == [(thread_id, expected)]
        stored = body_json(await token_fetch("getthread", params={"thread_id": thread_id}))
        assert stored[0] == {"variant": "User", "content": "who am I?"}
        # ... and may continue it: no fork into a new id, as for a foreign thread.
        again = await stream_turn(token_fetch, {}, thread_id=thread_id)
        assert again[0]["content"]["thread_id"] == thread_id
        response = await token_fetch(
            "setthreadtopic", method="POST", body=json.dumps({"thread_id": thread_id, "topic": "Mine"})
        )
        assert response.code == 200, response.body

    @pytest.mark.parametrize("freva_config", [{"owner": ""}])
    async def test_without_owner_the_os_user_owns(self, token_fetch):
        expected = os.environ.get("JUPYTERHUB_USER") or getpass.getuser()
        assert await owner_seen(token_fetch, {}) == expected

    async def test_no_credentials_is_403_detail(self, bare_fetch):
        for route in ("availablechatbots", "getuserthreads", "openapi.json"):
            assert_detail(await bare_fetch(route), 403)
        assert_detail(await bare_fetch("availablechatbots", headers={"Authorization": "token wrong"}), 403)

    async def test_post_without_token_is_403_detail(self, bare_fetch):
        for route, body in (("streamresponse", {"input": "hi"}), ("deletethread", {"thread_id": "abc"})):
            response = await bare_fetch(route, method="POST", body=json.dumps(body))
            assert_detail(response, 403)
        response = await bare_fetch("getuserthreads", method="POST", body="", headers={"Authorization": "token no"})
        assert_detail(response, 403)

    async def test_ping_needs_no_token(self, bare_fetch):
        response = await bare_fetch("ping")
        assert response.code == 200
        assert body_json(response)["status"] == "ok"


# ---------------------------------------------------------------------------------------------------------------
# Standalone: freva-rest bearer tokens, validated against a fake auth server.
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_auth(jp_asyncio_loop) -> Iterator[FakeAuth]:
    yield from serving(jp_asyncio_loop, FakeAuth())


@pytest.fixture
def proxy_auth(jp_asyncio_loop) -> Iterator[FakeAuth]:
    """A second auth server, as a client-supplied X-Freva-Rest-URL would name: it knows another user."""
    yield from serving(jp_asyncio_loop, FakeAuth({"good-token": (200, {"username": "proxyuser"})}))


@pytest.fixture
def rest_url(fake_auth: FakeAuth) -> str:
    return fake_auth.url


BEARER = {"Authorization": "Bearer good-token"}


class TestBearerIdentity:
    @pytest.fixture
    def jp_server_config(
        self, tmp_path: Path, catalogue: Path, freva_config: dict[str, Any], rest_url: str
    ) -> dict[str, Any]:
        config = _base_config(tmp_path, catalogue)
        config["ServerApp"]["identity_provider_class"] = "freva_gpt_ext.auth.FrevaRestIdentityProvider"
        config["ServerApp"]["authorizer_class"] = "freva_gpt_ext.authorizer.ChatbotOnlyAuthorizer"
        config["FrevaGPT"].update({"rest_url": rest_url, **freva_config})
        return config

    @pytest.fixture
    def jp_auth_header(self) -> dict[str, str]:
        """No jupyter token: only what a test sends."""
        return {}

    async def test_no_token_is_401_with_challenge(self, bare_fetch, fake_auth):
        for method in ("GET", "POST"):
            response = await bare_fetch("availablechatbots", method=method)
            assert_detail(response, 401)
            assert response.headers.get("WWW-Authenticate", "").lower().startswith("bearer")
        assert sum(fake_auth.counts.values()) == 0

    async def test_a_request_without_credentials_is_no_warning(self, bare_fetch, caplog):
        """climateclaw-client always asks without credentials first; a bad token is still worth a warning."""
        caplog.set_level(logging.DEBUG)
        assert_detail(await bare_fetch("availablechatbots"), 401)
        assert_detail(await bare_fetch("getuserthreads", headers={"Authorization": "Bearer bad-token"}), 401)
        lines = [(r.levelno, r.getMessage()) for r in caplog.records if "api/chatbot/" in r.getMessage()]
        assert max(level for level, text in lines if "availablechatbots" in text) == logging.DEBUG
        assert max(level for level, text in lines if "getuserthreads" in text) == logging.WARNING

    async def test_invalid_token_is_401(self, bare_fetch, fake_auth):
        response = await bare_fetch("availablechatbots", headers={"Authorization": "Bearer bad-token"})
        assert_detail(response, 401)
        assert "WWW-Authenticate" in response.headers
        assert fake_auth.counts["bad-token"] == 1

    async def test_not_a_bearer_token_is_422(self, bare_fetch, fake_auth):
        assert_detail(await bare_fetch("availablechatbots", headers={"Authorization": "Basic x"}), 422, "bearer")
        assert_detail(await bare_fetch("availablechatbots", headers={"X-Freva-User-Token": "token x"}), 422)
        assert sum(fake_auth.counts.values()) == 0

    async def test_guest_is_403(self, bare_fetch):
        assert_detail(await bare_fetch("availablechatbots", headers={"Authorization": "Bearer guest-token"}), 403)

    async def test_answer_without_username_is_502(self, bare_fetch):
        assert_detail(await bare_fetch("availablechatbots", headers={"Authorization": "Bearer nameless-token"}), 502)

    @pytest.mark.parametrize("rest_url", [CLOSED_URL])
    async def test_auth_server_down_is_503(self, bare_fetch):
        assert_detail(await bare_fetch("availablechatbots", headers=BEARER), 503)

    @pytest.mark.parametrize("rest_url", [""])
    async def test_no_rest_url_is_400(self, bare_fetch):
        assert_detail(await bare_fetch("availablechatbots", headers=BEARER), 400)

    async def test_ping_needs_no_token(self, bare_fetch):
        for headers in ({}, {"Authorization": "Bearer bad-token"}):
            response = await bare_fetch("ping", headers=headers)
            assert response.code == 200, response.body
            assert body_json(response)["status"] == "ok"
        response = await bare_fetch("ping", method="POST")
        assert response.code == 200, response.body

    async def test_bearer_token_works_via_jp_fetch(self, jp_fetch):
        response = await jp_fetch("api", "chatbot", "availablechatbots", headers=BEARER)
        assert body_json(response)[0] == "fake-text"

    async def test_x_freva_user_token_header_works(self, bare_fetch):
        response = await bare_fetch("availablechatbots", headers={"X-Freva-User-Token": "Bearer good-token"})
        assert response.code == 200, response.body
        assert await owner_seen(bare_fetch, {"X-Freva-User-Token": "Bearer good-token"}) == "janedoe"

    async def test_threads_are_owned_by_the_token_user(self, bare_fetch):
        # A POST with a bearer token and no XSRF cookie is accepted (token-authenticated).
        lines = await stream_turn(bare_fetch, BEARER)
        thread_id = lines[0]["content"]["thread_id"]
        threads = await listed_threads(bare_fetch, BEARER)
        assert [(t["thread_id"], t["user_id"]) for t in threads] == [(thread_id, "janedoe")]
        response = await bare_fetch(
            "setthreadtopic", method="POST", headers=BEARER, body=json.dumps({"thread_id": thread_id, "topic": "T"})
        )
        assert response.code == 200, response.body
        # Another user neither lists it nor may rename it.
        pw = {"Authorization": "Bearer pw-token"}
        assert await listed_threads(bare_fetch, pw) == []
        response = await bare_fetch(
            "setthreadtopic", method="POST", headers=pw, body=json.dumps({"thread_id": thread_id, "topic": "X"})
        )
        assert_detail(response, 403)

    async def test_pw_name_when_no_username(self, bare_fetch):
        assert await owner_seen(bare_fetch, {"Authorization": "Bearer pw-token"}) == "pwuser"

    async def test_validated_tokens_are_cached(self, bare_fetch, fake_auth):
        for _ in range(3):
            response = await bare_fetch("availablechatbots", headers=BEARER)
            assert response.code == 200, response.body
        response = await bare_fetch("availablechatbots", headers={"X-Freva-User-Token": "Bearer good-token"})
        assert response.code == 200, response.body
        assert fake_auth.counts["good-token"] == 1
        await bare_fetch("availablechatbots", headers={"Authorization": "Bearer pw-token"})
        assert fake_auth.counts["pw-token"] == 1
        # Refusals are not remembered as valid.
        for _ in range(2):
            assert_detail(await bare_fetch("availablechatbots", headers={"Authorization": "Bearer bad-token"}), 401)
        assert fake_auth.counts["bad-token"] >= 1

    @pytest.mark.parametrize("freva_config", [{"token_cache_ttl": 0.3}])
    async def test_validated_tokens_expire(self, bare_fetch, fake_auth):
        assert (await bare_fetch("availablechatbots", headers=BEARER)).code == 200
        assert (await bare_fetch("availablechatbots", headers=BEARER)).code == 200
        assert fake_auth.counts["good-token"] == 1
        await asyncio.sleep(0.5)
        assert (await bare_fetch("availablechatbots", headers=BEARER)).code == 200
        assert fake_auth.counts["good-token"] == 2

    async def test_refused_tokens_are_remembered_but_outages_are_not(self, bare_fetch, fake_auth):
        bad = {"Authorization": "Bearer bad-token"}
        for _ in range(3):
            assert_detail(await bare_fetch("availablechatbots", headers=bad), 401, "invalid")
        assert_detail(await bare_fetch("getuserthreads", headers={"X-Freva-User-Token": "Bearer bad-token"}), 401)
        assert fake_auth.counts["bad-token"] == 1
        # A failing auth server is asked again next time: its 503 is not the token's fault.
        fake_auth.answers["flaky-token"] = (503, {"detail": "down"})
        flaky = {"Authorization": "Bearer flaky-token"}
        assert_detail(await bare_fetch("availablechatbots", headers=flaky), 503)
        fake_auth.answers["flaky-token"] = (200, {"username": "flaky"})
        assert (await bare_fetch("availablechatbots", headers=flaky)).code == 200
        assert fake_auth.counts["flaky-token"] == 2

    @pytest.mark.parametrize("freva_config", [{"token_negative_cache_ttl": 0.3}])
    async def test_refused_tokens_are_asked_again_after_the_negative_ttl(self, bare_fetch, fake_auth):
        bad = {"Authorization": "Bearer bad-token"}
        assert_detail(await bare_fetch("availablechatbots", headers=bad), 401)
        assert_detail(await bare_fetch("availablechatbots", headers=bad), 401)
        assert fake_auth.counts["bad-token"] == 1
        await asyncio.sleep(0.5)
        # Now valid (e.g. the user logged in again with the same token value): accepted after the TTL.
        fake_auth.answers["bad-token"] = (200, {"username": "late"})
        assert (await bare_fetch("availablechatbots", headers=bad)).code == 200
        assert fake_auth.counts["bad-token"] == 2

    async def test_tokens_are_never_logged(self, bare_fetch, fake_auth, caplog):
        secret = "s3cret-Token-Value-4711"
        fake_auth.answers[secret] = (200, {"username": "janedoe"})
        caplog.set_level(logging.DEBUG)
        for token in (secret, secret + "-invalid"):
            for headers in ({"Authorization": f"Bearer {token}"}, {"X-Freva-User-Token": f"Bearer {token}"}):
                await bare_fetch("availablechatbots", headers=headers)
                await bare_fetch("streamresponse", method="POST", headers=headers, body='{"input": "hi"}')
        await bare_fetch("availablechatbots", headers={"Authorization": f"Basic {secret}"})
        assert fake_auth.counts[secret] == 1
        assert caplog.records, "the server logs at DEBUG in tests"
        assert secret not in caplog.text

    async def test_proxy_rest_url_header_ignored_unless_trusted(self, bare_fetch, fake_auth, proxy_auth):
        headers = {**BEARER, "X-Freva-Rest-URL": proxy_auth.url}
        assert await owner_seen(bare_fetch, headers) == "janedoe"
        assert sum(proxy_auth.counts.values()) == 0
        assert fake_auth.counts["good-token"] == 1

    @pytest.mark.parametrize(
        "freva_config", [{"trust_proxy_headers": True, "mongodb_database_name": unique_database()}]
    )
    async def test_proxy_rest_url_header_honoured_when_trusted(self, bare_fetch, fake_auth, proxy_auth, vault):
        # Behind the proxy the threads are where its vault says (test_vault.py).
        stored = {**BEARER, VAULT_HEADER: vault.url("ok")}
        headers = {**stored, "X-Freva-Rest-URL": proxy_auth.url}
        assert await owner_seen(bare_fetch, headers) == "proxyuser"
        assert proxy_auth.counts["good-token"] == 1
        assert fake_auth.counts["good-token"] == 0
        # The cache is keyed by (rest URL, token): the configured server is still asked on its own.
        assert await owner_seen(bare_fetch, stored) == "janedoe"
        assert fake_auth.counts["good-token"] == 1

    @pytest.mark.parametrize("freva_config", [{"dev": True}])
    async def test_dev_mode_acts_as_dev_user(self, bare_fetch, fake_auth):
        response = await bare_fetch("availablechatbots")
        assert response.code == 200, response.body
        assert await owner_seen(bare_fetch, {}) == "dev"
        assert sum(fake_auth.counts.values()) == 0

    @pytest.mark.parametrize("freva_config", [{"dev": True, "dev_user": "tester"}])
    async def test_dev_user_is_configurable(self, bare_fetch):
        assert await owner_seen(bare_fetch, {}) == "tester"

    @pytest.mark.parametrize("freva_config", [{"dev": False, "dev_user": "tester"}])
    async def test_without_dev_no_token_is_401(self, bare_fetch):
        assert_detail(await bare_fetch("availablechatbots"), 401)
