"""Under a real JupyterHub (tests/hub.py): a cross-site link through the hub's proxy changes and runs nothing, a
user's token does not open another user's server, and each chatbot route given another user's thread or kernel id
knows nothing of it (API.md: an unknown thread id is a new thread with that id, an unknown kernel 404); the code
the assistant runs never sees the hub's token of the server.

End to end (issue 15): the extension is loaded in each user's server, a slow answer streams through the hub's
proxy line by line, code runs in a kernel that is a child of that user's own server, and the panel's assets load
under /user/<name>/lab.
"""

from __future__ import annotations

import json
import re
import time
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


# -- the extension end to end through the hub's proxy (issue 15) -------------------------------------------------


def test_the_extension_is_loaded_in_each_users_server(hub: Hub) -> None:
    for user in ("alice", "bob"):
        with hub.client(user) as api:
            ping = api.get("api/chatbot/ping")
            assert ping.status_code == 200 and ping.json()["status"] == "ok", (user, ping.text)
            models = api.get("api/chatbot/availablechatbots")
            assert models.status_code == 200, (user, models.text)
            assert {"fake-text", "fake-code"} <= set(models.json()), (user, models.json())
            assert "fake-embedding" not in models.json()


def test_a_turn_streams_through_the_proxy_line_by_line(hub: Hub) -> None:
    """12 words 0.25 s apart: each line passes the proxy when it is written, not when the answer is complete."""
    arrivals: list[tuple[float, dict[str, Any]]] = []
    with hub.client("alice") as alice:
        body = {"input": "[[fake:text tokens=12 delay=0.25]]", "chatbot": "fake-text"}
        with alice.stream("POST", "api/chatbot/streamresponse", json=body) as response:
            assert response.status_code == 200, response.read()
            for line in response.iter_lines():
                if line:
                    arrivals.append((time.monotonic(), json.loads(line)))
    end = arrivals[-1][0]
    assert arrivals[0][1]["variant"] == "ServerHint" and arrivals[-1][1]["variant"] == "StreamEnd", arrivals
    words = [(at, line["content"]) for at, line in arrivals if line["variant"] == "Assistant" and line["content"]]
    assert "".join(text for _, text in words).split() == [f"tok{i}" for i in range(12)], words
    assert words[-1][0] - words[0][0] >= 1.5, f"the answer arrived in one burst: {words}"
    assert end - arrivals[0][0] >= 1.5, "the first line waited for the end of the answer"


def test_code_runs_in_a_kernel_of_that_users_server(hub: Hub) -> None:
    code = (
        "import os; from ipykernel.connect import get_connection_file; "
        "print(os.getppid(), os.path.basename(get_connection_file()))"
    )
    with hub.client("alice") as alice, hub.client("bob") as bob:
        lines = turn(alice, input=f'[[fake:code code="{code}"]]', chatbot="fake-code")
        output = "".join(line["content"] for line in lines if line["variant"] == "CodeOutput")
        parent, connection_file = output.split()
        assert int(parent) == hub.server_pid("alice"), (output, hub.server_pid("alice"))
        kernel_id = connection_file.removeprefix("kernel-").removesuffix(".json")
        assert kernel_id in {k["id"] for k in alice.get("api/kernels").json()}, (kernel_id, lines)
        assert kernel_id not in {k["id"] for k in bob.get("api/kernels").json()}
        assert int(parent) != hub.server_pid("bob")


def test_the_panels_assets_load_under_the_users_lab(hub: Hub) -> None:
    with hub.browser("alice") as browser:
        lab = browser.get("lab")
        assert lab.status_code == 200, lab.text[:500]
        match = re.search(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', lab.text, re.S)
        assert match, lab.text[:2000]
        page_config = json.loads(match.group(1))
        panel = [e for e in page_config.get("federated_extensions", []) if e["name"] == "freva-gpt-ext"]
        assert panel, page_config.get("federated_extensions")
        assert re.fullmatch(r"static/remoteEntry\.[0-9a-f]+\.js", panel[0]["load"]), panel
        url = f"{hub.server_url('alice')}lab/extensions/freva-gpt-ext/{panel[0]['load']}"
        assert page_config["fullLabextensionsUrl"].rstrip("/") == "/user/alice/lab/extensions", page_config
        entry = browser.get(url)
        assert entry.status_code == 200, (url, entry.status_code)
        assert "javascript" in entry.headers["content-type"], entry.headers
        assert "freva-gpt-ext" in entry.text
