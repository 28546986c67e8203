"""Who may do what (issue 9): the standalone server is the chatbot API and nothing else, each route asks the
authorizer for its own action, and cookie sessions need XSRF on every route that changes or runs something.

The hub half of these rules (a real JupyterHub and its proxy) is in test_hub.py.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import tornado.httpclient
import tornado.websocket

from freva_gpt_ext.handlers.spec import ROUTES
from tests.conftest import body_json, parse_lines, serving
from tests.fake_auth import FakeAuth
from tests.fake_llm import FakeLLM
from tests.server_process import ServerProcess

CROSS_SITE = {"Referer": "https://evil.example/page", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}


def assert_refused(response: Any, part: str = "") -> None:
    assert response.code == 403, (response.code, response.body)
    detail = body_json(response)["detail"]
    assert part.lower() in detail.lower(), detail


def changing_routes(thread_id: str) -> dict[str, dict[str, Any]]:
    """Valid parameters for every route that changes or runs something (each declares it in spec.py)."""
    routes = {
        "streamresponse": {"input": "print(1)", "chatbot": "fake-text"},
        "stop": {"thread_id": thread_id},
        "setthreadtopic": {"thread_id": thread_id, "topic": "forged"},
        "deletethread": {"thread_id": thread_id},
        "editthread": {"source_thread_id": thread_id, "user_index": 0},
        "userfeedback": {"thread_id": thread_id, "feedback_index": 0, "feedback": "down"},
        "kernelcontext": {"kernel_id": "nosuchkernel"},
    }
    assert set(routes) == {r.name for r in ROUTES if r.action != "read"}
    return routes


# ---------------------------------------------------------------------------------------------------------------
# Each route declares its action: a read-only authorizer refuses what changes or runs something, on GET too.
# ---------------------------------------------------------------------------------------------------------------


class TestRouteActions:
    @pytest.fixture
    def jp_server_config(self, jp_server_config: dict[str, Any]) -> dict[str, Any]:
        config = copy.deepcopy(jp_server_config)
        config["ServerApp"]["authorizer_class"] = "tests.authorizers.ReadOnlyBobAuthorizer"
        return config

    async def test_read_only_user_may_read_but_not_change_or_run(self, api, fake_llm: FakeLLM):
        response = await api("streamresponse", method="POST", input="mine", chatbot="fake-text")
        thread_id = parse_lines(response.body)[0]["content"]["thread_id"]
        requests_before = len(fake_llm.requests)

        shared = await api("getthread", user="bob", thread_id=thread_id)
        assert body_json(shared)[0] == {"variant": "User", "content": "mine"}
        assert (await api("getuserthreads", user="bob")).code == 200

        # GET is no "read" here: streamresponse runs code, deletethread deletes (an unknown id, so that only the
        # authorizer can be what refuses it: without it the answer would be 404).
        for route, params in changing_routes("nosuchthread").items():
            for method in ("GET", "POST"):
                assert_refused(await api(route, user="bob", method=method, raise_error=False, **params), "may not")
        assert len(fake_llm.requests) == requests_before, "the refused turn never reached the LLM"
        assert body_json(await api("getthread", thread_id=thread_id))[0]["content"] == "mine"


# ---------------------------------------------------------------------------------------------------------------
# XSRF: a login cookie alone (what a cross-site link or form sends) changes and runs nothing, GET included.
# ---------------------------------------------------------------------------------------------------------------


def cookies_of(response: Any) -> dict[str, str]:
    jar: dict[str, str] = {}
    for header in response.headers.get_list("Set-Cookie"):
        parsed = SimpleCookie()
        parsed.load(header)
        jar.update({name: morsel.value for name, morsel in parsed.items() if morsel.value})
    return jar


class TestCookieXsrf:
    @pytest.fixture
    def jp_server_config(self, jp_server_config: dict[str, Any]) -> dict[str, Any]:
        """jupyter_server's own token/password identity: a token request logs the browser in with a cookie."""
        config = copy.deepcopy(jp_server_config)
        del config["ServerApp"]["identity_provider_class"]
        config["FrevaGPT"]["owner"] = "researcher"
        return config

    @pytest.fixture
    def fetch(self, jp_serverapp, http_server_client, jp_base_url):
        async def fetch(route: str, *, method: str = "GET", headers: dict[str, str] | None = None, **params: Any):
            url = f"{jp_base_url}{route}"
            body = None
            if method == "POST":
                body = json.dumps(params)
            elif params:
                url += "?" + urlencode(params)
            return await http_server_client.fetch(
                url, method=method, body=body, headers=headers or {}, raise_error=False, request_timeout=20
            )

        return fetch

    @staticmethod
    async def login(fetch, jp_auth_header) -> dict[str, str]:
        """The cookies a browser holds after logging in with the token: the login cookie and `_xsrf`."""
        login = await fetch("api/chatbot/getuserthreads", headers=jp_auth_header)
        assert login.code == 200, login.body
        jar = cookies_of(login)
        # Any page sets the _xsrf cookie (the login form, here).
        jar.update(cookies_of(await fetch("login")))
        assert "_xsrf" in jar and any(name.startswith("username-") for name in jar), jar
        return jar

    async def _thread(self, fetch, jp_auth_header) -> str:
        response = await fetch(
            "api/chatbot/streamresponse", method="POST", headers=jp_auth_header, input="hi", chatbot="fake-text"
        )
        assert response.code == 200, response.body
        return parse_lines(response.body)[0]["content"]["thread_id"]

    async def test_cookie_without_xsrf_header_changes_and_runs_nothing(self, fetch, jp_auth_header, fake_llm: FakeLLM):
        browser = await self.login(fetch, jp_auth_header)
        thread_id = await self._thread(fetch, jp_auth_header)
        requests_before = len(fake_llm.requests)
        login_only = "; ".join(f"{k}={v}" for k, v in browser.items() if k != "_xsrf")
        with_xsrf_cookie = "; ".join(f"{k}={v}" for k, v in browser.items())
        for cookie in (login_only, with_xsrf_cookie):
            for extra in (CROSS_SITE, {"Referer": "http://localhost/", "Sec-Fetch-Site": "same-origin"}, {}):
                headers = {"Cookie": cookie, **extra}
                for route, params in changing_routes(thread_id).items():
                    for method in ("GET", "POST"):
                        response = await fetch(f"api/chatbot/{route}", method=method, headers=headers, **params)
                        assert_refused(response, "xsrf")
        # A wrong token is refused as well.
        forged = {"Cookie": with_xsrf_cookie, "X-XSRFToken": "2|00000000|00000000|0"}
        response = await fetch("api/chatbot/deletethread", headers=forged, thread_id=thread_id)
        assert_refused(response, "xsrf")
        assert len(fake_llm.requests) == requests_before, "no refused turn reached the LLM"
        stored = await fetch("api/chatbot/getthread", headers=jp_auth_header, thread_id=thread_id)
        assert stored.code == 200, "the thread is still there"
        assert not [v for v in body_json(stored) if "feedback" in v]
        (listed,) = body_json(await fetch("api/chatbot/getuserthreads", headers=jp_auth_header))[0]  # no fork
        assert listed["topic"] != "forged"

    async def test_panel_token_and_cookie_reads_still_work(self, fetch, jp_auth_header):
        browser = await self.login(fetch, jp_auth_header)
        thread_id = await self._thread(fetch, jp_auth_header)
        cookie = "; ".join(f"{k}={v}" for k, v in browser.items())
        # The panel: a cookie POST with X-XSRFToken (ServerConnection.makeRequest sends the _xsrf cookie's value).
        panel = {"Cookie": cookie, "X-XSRFToken": browser["_xsrf"]}
        response = await fetch(
            "api/chatbot/setthreadtopic", method="POST", headers=panel, thread_id=thread_id, topic="T"
        )
        assert response.code == 200, response.body
        response = await fetch("api/chatbot/streamresponse", headers=panel, input="hi", chatbot="fake-text")
        assert response.code == 200, response.body
        assert parse_lines(response.body)[-1]["variant"] == "StreamEnd"
        # Reads need no XSRF header, also from a cookie session (a link to a thread opens it).
        response = await fetch("api/chatbot/getthread", headers={"Cookie": cookie}, thread_id=thread_id)
        assert response.code == 200, response.body
        # A token needs no XSRF, GET or POST.
        response = await fetch("api/chatbot/deletethread", headers=jp_auth_header, thread_id=thread_id)
        assert response.code == 200, response.body


# ---------------------------------------------------------------------------------------------------------------
# Standalone (`jupyter freva-gpt`): bearer users reach the chatbot API and nothing else.
# ---------------------------------------------------------------------------------------------------------------

BEARER = {"Authorization": "Bearer good-token"}
# Every route of jupyter_server that reaches files, contents, kernels, sessions, kernel specs, terminals, config,
# nbconvert, events, status or shutdown.
REFUSED = (
    ("GET", "api/contents"),
    ("GET", "api/contents/secret.txt"),
    ("PUT", "api/contents/x.txt"),
    ("POST", "api/contents"),
    ("PATCH", "api/contents/secret.txt"),
    ("DELETE", "api/contents/secret.txt"),
    ("GET", "api/contents/secret.txt/checkpoints"),
    ("POST", "api/contents/secret.txt/checkpoints"),
    ("POST", "api/contents/secret.txt/trust"),
    ("GET", "api/resolvePath?path=secret.txt"),
    ("GET", "files/secret.txt"),
    ("GET", "view/secret.txt"),
    ("GET", "api/kernels"),
    ("POST", "api/kernels"),
    ("GET", "api/sessions"),
    ("POST", "api/sessions"),
    ("GET", "api/sessions/00000000-0000-0000-0000-000000000000"),
    ("DELETE", "api/sessions/00000000-0000-0000-0000-000000000000"),
    ("GET", "api/kernelspecs"),
    ("GET", "api/kernelspecs/python3"),
    ("GET", "kernelspecs/python3/kernel.json"),
    ("GET", "api/config/notebook"),
    ("PUT", "api/config/notebook"),
    ("PATCH", "api/config/notebook"),
    ("GET", "api/nbconvert"),
    ("GET", "nbconvert/html/notebook.ipynb"),
    ("POST", "nbconvert/html"),
    ("GET", "api/status"),
    ("GET", "api/spec.yaml"),
    ("POST", "api/security/csp-report"),
    ("POST", "api/events"),
    ("POST", "api/shutdown"),
)
# jupyter_server answers these without the authorizer (login redirects a signed-in user onwards).
EXEMPT = (
    ("GET", "api"),
    ("GET", "api/me"),
    ("GET", "static/favicons/favicon.ico"),
    ("GET", "login"),
    ("GET", "logout"),
)
BODIES = {
    "PUT": {"type": "file", "format": "text", "content": "written by a Freva user"},
    "PATCH": {"path": "moved.txt"},
    "POST": {"name": "python3", "path": "x.ipynb", "type": "notebook", "kernel": {"name": "python3"}},
}


@pytest.fixture
def fake_auth(jp_asyncio_loop) -> Iterator[FakeAuth]:
    yield from serving(jp_asyncio_loop, FakeAuth())


class TestTerminals:
    """The bearer identity inside a server that loads jupyter_server_terminals: still no terminal."""

    @pytest.fixture
    def jp_server_config(self, jp_server_config: dict[str, Any], fake_auth: FakeAuth) -> dict[str, Any]:
        config = copy.deepcopy(jp_server_config)
        config["ServerApp"]["identity_provider_class"] = "freva_gpt_ext.auth.FrevaRestIdentityProvider"
        config["ServerApp"]["authorizer_class"] = "freva_gpt_ext.authorizer.ChatbotOnlyAuthorizer"
        config["ServerApp"]["jpserver_extensions"]["jupyter_server_terminals"] = True
        config["FrevaGPT"]["rest_url"] = fake_auth.url
        return config

    async def test_no_terminal_for_bearer_users(self, jp_fetch):
        assert (await jp_fetch("api", "chatbot", "newthread", headers=BEARER)).code == 200
        for method in ("GET", "POST"):
            response = await jp_fetch(
                "api",
                "terminals",
                method=method,
                headers=BEARER,
                raise_error=False,
                **({"body": ""} if method == "POST" else {}),
            )
            assert response.code == 403, (method, response.code, response.body)


@pytest.mark.timeout(300)
async def test_standalone_serves_the_chatbot_api_and_nothing_else(tmp_path: Path, catalogue: Path, fake_auth: FakeAuth):
    server = ServerProcess(
        tmp_path / "standalone",
        args=[f"--FrevaGPT.litellm_config={catalogue}", f"--FrevaGPT.rest_url={fake_auth.url}"],
        standalone=True,
    )
    (server.root_dir / "secret.txt").write_text("the service account's file")
    with server:
        async with httpx.AsyncClient(base_url=server.url, headers=BEARER, trust_env=False, timeout=30) as client:
            chatbot = await client.get("api/chatbot/availablechatbots")
            assert chatbot.status_code == 200, chatbot.text
            statuses = {}
            for method, path in REFUSED:
                body = BODIES.get(method)
                response = await client.request(method, path, json=body)
                statuses[(method, path)] = response.status_code
            assert statuses == dict.fromkeys(REFUSED, 403)
            # Terminals are an extension the standalone server does not load (TestTerminals: refused when loaded).
            assert (await client.post("api/terminals")).status_code == 404
            # A per-thread kernel exists (a code call); its websocket is refused as well.
            turn = await client.post("api/chatbot/streamresponse", json={"input": "x = 1", "chatbot": "fake-code"})
            assert turn.status_code == 200 and parse_lines(turn.content)[-1]["variant"] == "StreamEnd", turn.text
            (connection,) = (server.workdir / "jupyter" / "runtime").glob("kernel-*.json")
            kernel_id = connection.stem.removeprefix("kernel-")
            for method, path in (
                ("GET", f"api/kernels/{kernel_id}"),
                ("POST", f"api/kernels/{kernel_id}/interrupt"),
                ("POST", f"api/kernels/{kernel_id}/restart"),
                ("DELETE", f"api/kernels/{kernel_id}"),
            ):
                assert (await client.request(method, path)).status_code == 403, (method, path)
            for path in (f"api/kernels/{kernel_id}/channels", "api/events/subscribe"):
                url = f"ws://127.0.0.1:{server.port}/{path}"
                with pytest.raises(tornado.httpclient.HTTPClientError) as refused:
                    await tornado.websocket.websocket_connect(tornado.httpclient.HTTPRequest(url, headers=BEARER))
                assert refused.value.code == 403, path
            assert connection.exists(), "the kernel was not shut down"
            for method, path in EXEMPT:
                response = await client.request(method, path)
                assert response.status_code in (200, 302), (method, path, response.status_code)
            asked = {"contents": ["read", "write"], "kernels": ["read", "execute"], "freva_gpt": ["read", "execute"]}
            me = (await client.get("api/me", params={"permissions": json.dumps(asked)})).json()
            assert me["identity"]["username"] == "janedoe"
            assert {k: me["permissions"][k] for k in asked} == {
                "contents": [],
                "kernels": [],
                "freva_gpt": asked["freva_gpt"],
            }
    assert not (server.root_dir / "x.txt").exists()
    assert (server.root_dir / "secret.txt").read_text() == "the service account's file"
    assert server.returncode == 0, server.log()


def test_bearer_identity_refuses_to_start_without_the_chatbot_authorizer(tmp_path: Path) -> None:
    """`jupyter server` with the bearer identity but the default authorizer would hand out files and kernels."""
    server = ServerProcess(
        tmp_path / "server",
        args=[
            "--ServerApp.identity_provider_class=freva_gpt_ext.auth.FrevaRestIdentityProvider",
            "--FrevaGPT.rest_url=http://127.0.0.1:9",
            "--ServerApp.reraise_server_extension_failures=True",
        ],
        ready_timeout=60,
    )
    server.start()
    try:
        assert server.proc is not None
        assert server.proc.wait(60) != 0
    finally:
        server.stop()
    assert "ChatbotOnlyAuthorizer" in server.log()
