"""Under a real JupyterHub (tests/hub.py): a cross-site link through the hub's proxy changes and runs nothing, a
user's token does not open another user's server, and each chatbot route given another user's thread or kernel id
knows nothing of it (API.md: an unknown thread id is a new thread with that id, an unknown kernel 404); the code
the assistant runs never sees the hub's token of the server.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import parse_lines
from tests.hub import Hub

pytestmark = [pytest.mark.hub, pytest.mark.timeout(600)]

CROSS_SITE = {"Referer": "https://evil.example/page", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}


def turn(client: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    response = client.post("api/chatbot/streamresponse", json={"chatbot": "fake-text", **params})
    assert response.status_code == 200, response.text
    lines = parse_lines(response.content)
    assert lines[-1]["variant"] == "StreamEnd", lines
    assert not [line for line in lines if line["variant"] == "ServerError"], lines
    return lines


def thread_ids(client: httpx.Client) -> set[str]:
    response = client.get("api/chatbot/getuserthreads", params={"num_threads": 100})
    assert response.status_code == 200, response.text
    return {t["thread_id"] for t in response.json()[0]}


def test_cross_site_cookie_get_is_refused_through_the_proxy(hub: Hub) -> None:
    with hub.client("alice") as alice:
        thread_id = turn(alice, input="keep me")[0]["content"]["thread_id"]
        before = thread_ids(alice)
        with hub.browser("alice") as browser:
            for route, params in (
                ("deletethread", {"thread_id": thread_id}),
                ("streamresponse", {"input": "print(os.environ['JUPYTERHUB_USER'])", "chatbot": "fake-code"}),
                ("setthreadtopic", {"thread_id": thread_id, "topic": "forged"}),
            ):
                response = browser.get(f"api/chatbot/{route}", params=params, headers=CROSS_SITE)
                assert response.status_code == 403, (route, response.status_code, response.text)
                assert "xsrf" in response.json()["detail"].lower()
            assert thread_ids(alice) == before, "nothing was deleted or started"
            # Reading by link still works; the panel (cookie + X-XSRFToken, JupyterHub's token) still changes things.
            assert browser.get("api/chatbot/getthread", params={"thread_id": thread_id}).status_code == 200
            panel = {"X-XSRFToken": hub.xsrf(browser)}
            renamed = browser.post(
                "api/chatbot/setthreadtopic", json={"thread_id": thread_id, "topic": "Renamed"}, headers=panel
            )
            assert renamed.status_code == 200, renamed.text
            lines = parse_lines(
                browser.post(
                    "api/chatbot/streamresponse", json={"input": "hi", "chatbot": "fake-text"}, headers=panel
                ).content
            )
            assert lines[-1]["variant"] == "StreamEnd", lines


def test_a_users_token_does_not_open_another_users_server(hub: Hub) -> None:
    with hub.client("alice", as_user="bob") as bob_on_alice:
        for method, route in (
            ("GET", "api/chatbot/getuserthreads"),
            ("POST", "api/chatbot/streamresponse"),
            ("GET", "api/chatbot/deletethread?thread_id=x"),
            ("GET", "api/kernels"),
            ("GET", "api/contents"),
        ):
            response = bob_on_alice.request(method, route, json={"input": "hi"} if method == "POST" else None)
            assert response.status_code == 403, (method, route, response.status_code, response.text)


def test_each_route_knows_nothing_of_the_other_users_threads_and_kernels(hub: Hub) -> None:
    with hub.client("alice") as alice, hub.client("bob") as bob:
        # alice's thread with a per-thread kernel (a code call), and bob's own.
        lines = turn(alice, input='[[fake:code code="x = 41"]]', chatbot="fake-code")
        alice_thread = lines[0]["content"]["thread_id"]
        kernels = alice.get("api/kernels")
        assert kernels.status_code == 200 and kernels.json(), kernels.text
        alice_kernels = [k["id"] for k in kernels.json()]
        bob_thread = turn(bob, input="bob's")[0]["content"]["thread_id"]
        alice_history = alice.get("api/chatbot/getthread", params={"thread_id": alice_thread}).json()

        for own, other_thread in ((bob, alice_thread), (alice, bob_thread)):
            for route, params in (
                ("getthread", {"thread_id": other_thread}),
                ("editthread", {"source_thread_id": other_thread, "user_index": 0}),
                ("setthreadtopic", {"thread_id": other_thread, "topic": "mine now"}),
                ("userfeedback", {"thread_id": other_thread, "feedback_index": 0, "feedback": "down"}),
                ("stop", {"thread_id": other_thread}),
                ("deletethread", {"thread_id": other_thread}),
            ):
                response = own.post(f"api/chatbot/{route}", json=params)
                assert response.status_code == 404, (route, response.status_code, response.text)
        for kernel_id in alice_kernels:
            response = bob.post(
                "api/chatbot/streamresponse", json={"input": "print(x)", "chatbot": "fake-code", "kernel_id": kernel_id}
            )
            assert response.status_code == 404, response.text
        # An unknown id is a new thread with that id, on bob's own server: alice's thread is untouched.
        started = turn(bob, input="take over", thread_id=alice_thread)
        assert started[0]["content"]["thread_id"] == alice_thread
        assert bob.get("api/chatbot/getthread", params={"thread_id": alice_thread}).json()[0]["content"] == "take over"
        assert alice.get("api/chatbot/getthread", params={"thread_id": alice_thread}).json() == alice_history


def test_a_kernel_on_the_hub_gets_no_hub_token(hub: Hub) -> None:
    """JupyterHub hands each user server its API token (JUPYTERHUB_API_TOKEN, JPY_API_TOKEN): code the assistant
    runs never sees it."""
    code = "import os; print(sorted(k for k in os.environ if 'TOKEN' in k or k.startswith(('JPY_API', 'JUPYTERHUB_'))))"
    with hub.client("alice") as alice:
        lines = turn(alice, input=f'[[fake:code code="{code}"]]', chatbot="fake-code")
    assert [line["content"] for line in lines if line["variant"] == "CodeOutput"] == ["[]\n"], lines
