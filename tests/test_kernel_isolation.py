"""Kernels and turns belong to their owner (issue 9): foreign kernel ids, memory-only turns on another user's
thread id, one id in both stores, an id whose thread is gone, and forks that never replay another user's code
unasked.

Real jupyter_server with two identities (alice owns the server, see conftest), real ipykernel kernels, the fake LLM.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from freva_gpt_ext.tools.kernel_pool import user_folder
from tests.conftest import body_json, parse_lines
from tests.test_kernel import AUTH, UserKernel, code_turn, directive, hints, outputs, thread_of, wait_until
from tests.test_turns import LiveStream

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def freva_config() -> dict[str, Any]:
    return {"execution_timeout": 30.0, "kernel_idle_timeout": 0.0}


async def refused(api, status: int, **params: Any) -> str:
    response = await api("streamresponse", method="POST", raise_error=False, **params)
    assert response.code == status, (response.code, response.body)
    return body_json(response)["detail"]


def user_messages(fake_llm) -> list[str]:
    """The user messages of the fake LLM's last request."""
    return [str(m.get("content")) for m in fake_llm.requests[-1]["body"]["messages"] if m.get("role") == "user"]


async def test_a_kernel_of_another_user_answers_like_an_unknown_one(api, jp_fetch, jp_serverapp):
    km = jp_serverapp.kernel_manager
    await code_turn(api, "secret = 'alice'")
    (alice_thread_kernel,) = km.list_kernel_ids()
    notebook = await UserKernel.start(jp_fetch, jp_serverapp)  # a notebook kernel of the server: its owner's
    try:
        await jp_fetch(
            "api",
            "sessions",
            method="POST",
            headers=AUTH,
            body=json.dumps({"path": "nb.ipynb", "type": "notebook", "kernel": {"id": notebook.kernel_id}}),
        )
        unknown_id = await refused(api, 404, user="bob", input=directive("1"), kernel_id="no-such-kernel")
        unknown_path = await refused(api, 404, user="bob", input=directive("1"), notebook_path="none.ipynb")
        grab = directive("print(secret)")
        for kernel_id in (alice_thread_kernel, notebook.kernel_id):
            detail = await refused(api, 404, user="bob", input=grab, kernel_id=kernel_id)
            assert detail == unknown_id.replace("no-such-kernel", kernel_id)
        detail = await refused(api, 404, user="bob", input=grab, notebook_path="nb.ipynb")
        assert detail == unknown_path.replace("none.ipynb", "nb.ipynb")
        # Each owner still uses their own: bob his thread's kernel, alice the server's notebook kernel.
        before = set(km.list_kernel_ids())
        await code_turn(api, "x = 'bob'", user="bob")
        (bob_thread_kernel,) = set(km.list_kernel_ids()) - before
        assert outputs(await code_turn(api, "print(x)", user="bob", kernel_id=bob_thread_kernel)) == ["bob\n"]
        assert outputs(await code_turn(api, "print(1 + 1)", kernel_id=notebook.kernel_id)) == ["2\n"]
        await refused(api, 404, input=directive("print(x)"), kernel_id=bob_thread_kernel)
    finally:
        notebook.close()


async def test_a_memory_only_turn_on_another_users_id_forks_it(api, jp_serverapp, fake_llm):
    km = jp_serverapp.kernel_manager
    bob = await code_turn(api, "secret = 'bob'", user="bob")
    bob_thread = thread_of(bob)
    (bob_kernel,) = km.list_kernel_ids()
    lines = await code_turn(api, "print(globals().get('secret'))", thread_id=bob_thread, store_thread=False)
    fork = thread_of(lines)
    assert fork != bob_thread
    assert directive("secret = 'bob'") in user_messages(fake_llm)  # a fork: bob's conversation came along
    assert outputs(lines) == ["None\n"]  # in a kernel of its own, which did not run bob's code
    assert hints(lines, "not_replayed") == [1]
    assert bob_kernel in km.list_kernel_ids() and len(km.list_kernel_ids()) == 2
    # The fork lives in memory only; bob's thread is as it was.
    assert (await api("getthread", thread_id=fork, raise_error=False)).code == 404
    assert [t["thread_id"] for t in body_json(await api("getuserthreads"))[0]] == []
    stored = body_json(await api("getthread", user="bob", thread_id=bob_thread, show_tools=True))
    assert [v["variant"] for v in stored].count("User") == 1
    # The next memory-only turn on the fork is the same thread, in the same kernel.
    lines = await code_turn(api, "print(globals().get('secret'), 'again')", thread_id=fork, store_thread=False)
    assert thread_of(lines) == fork and outputs(lines) == ["None again\n"] and len(km.list_kernel_ids()) == 2


@pytest.mark.parametrize("freva_config", [{"thread_sharing": False}])
async def test_without_sharing_a_memory_only_turn_on_another_users_id_starts_afresh(api, fake_llm):
    bob_thread = thread_of(parse_lines((await api("streamresponse", user="bob", input="bob's private words")).body))
    lines = parse_lines((await api("streamresponse", input="hello", thread_id=bob_thread, store_thread=False)).body)
    assert thread_of(lines) != bob_thread
    assert not any("bob's private words" in m for m in user_messages(fake_llm))


async def test_stop_and_409_stay_with_the_threads_owner(api, jp_fetch):
    bob = LiveStream(jp_fetch, user="bob", input="[[fake:tokens=400 delay=0.05]]", chatbot="fake-slow")
    await bob.wait_for(lambda lines: len(lines) >= 2)
    thread_id = bob.thread_id
    # alice's memory-only turn on bob's id is a turn of her own: no 409, another id.
    lines = parse_lines((await api("streamresponse", input="hi", thread_id=thread_id, store_thread=False)).body)
    assert thread_of(lines) != thread_id and lines[-1] == {"variant": "StreamEnd", "content": "Stream ended."}
    # Bob's second turn on his streaming thread is 409; alice cannot stop his turn, and bob still can.
    await refused(api, 409, user="bob", input="more", thread_id=thread_id)
    response = await api("stop", thread_id=thread_id, raise_error=False)
    assert response.code == 403, response.body
    assert not bob.task.done()
    assert body_json(await api("stop", user="bob", thread_id=thread_id)) == {"detail": "Conversation stopped."}
    assert (await bob.finish())[-1] == {"variant": "StreamEnd", "content": "Stream is stopped by user."}


async def test_one_id_in_both_stores_is_two_threads(api, jp_serverapp):
    km = jp_serverapp.kernel_manager
    thread_id = "both-stores-1"
    await code_turn(api, "where = 'stored'", thread_id=thread_id)
    (stored_kernel,) = km.list_kernel_ids()
    lines = await code_turn(api, "print(globals().get('where'))", thread_id=thread_id, store_thread=False)
    assert thread_of(lines) == thread_id
    assert outputs(lines) == ["None\n"]  # not the stored thread's kernel
    (memory_kernel,) = set(km.list_kernel_ids()) - {stored_kernel}
    # An id alice holds only in memory is hers as well: bob's stored turn on it gets a new, empty thread.
    memory_only = "memory-only-1"
    await api("streamresponse", input="mine", thread_id=memory_only, store_thread=False)
    lines = parse_lines((await api("streamresponse", user="bob", input="his", thread_id=memory_only)).body)
    assert thread_of(lines) != memory_only
    stored = body_json(await api("getthread", user="bob", thread_id=thread_of(lines)))
    assert [v["content"] for v in stored if v["variant"] == "User"] == ["his"]
    # Stop finds the caller's own turn in either store (nothing runs now) and never another user's; to every
    # route another user's memory-only id is an unknown one.
    assert (await api("stop", thread_id=memory_only, raise_error=False)).code == 404
    for route, params in (
        ("stop", {"thread_id": memory_only}),
        ("getthread", {"thread_id": memory_only}),
        ("editthread", {"source_thread_id": memory_only, "user_index": 0}),
        ("setthreadtopic", {"thread_id": memory_only, "topic": "mine"}),
        ("userfeedback", {"thread_id": memory_only, "feedback_index": 0, "feedback": "up"}),
        ("deletethread", {"thread_id": memory_only}),
    ):
        response = await api(route, user="bob", raise_error=False, **params)
        assert response.code == 404 and body_json(response)["detail"] == "Thread not found.", route
    # deletethread shuts down the stored thread's kernel alone (not its memory-only twin's), and only for its owner.
    assert (await api("deletethread", user="bob", thread_id=thread_id, raise_error=False)).code == 403
    assert {stored_kernel, memory_kernel} <= set(km.list_kernel_ids())
    await api("deletethread", thread_id=thread_id)
    assert stored_kernel not in km and memory_kernel in km


@pytest.mark.parametrize("freva_config", [{"memory_threads": 1, "kernel_idle_timeout": 0.0}])
async def test_an_id_whose_thread_is_gone_never_reaches_its_old_kernel(api, jp_serverapp):
    """A thread can vanish while its kernel lives on: a memory-only thread dropped from memory (or a thread
    deleted through another server process). Whoever takes up its id next gets a kernel of their own."""
    km = jp_serverapp.kernel_manager
    taken = "dropped-from-memory-1"
    await code_turn(api, "secret = 'alice'", thread_id=taken, store_thread=False)
    (alice_kernel,) = km.list_kernel_ids()
    await api("streamresponse", input="next", store_thread=False)  # memory holds one thread: alice's first goes
    lines = await code_turn(api, "print(globals().get('secret'))", user="bob", thread_id=taken, store_thread=False)
    assert thread_of(lines) == taken  # no store knows the id any more: a new thread of bob's
    assert outputs(lines) == ["None\n"]
    await wait_until(lambda: alice_kernel not in km, what="the old kernel to shut down")


async def test_a_fork_replays_only_its_owners_code(api, tmp_path: Path):
    marker = tmp_path / "bob-ran.txt"
    bob = await code_turn(api, f"open({str(marker)!r}, 'a').write('ran ')\nsecret = 'bob'", user="bob")
    bob_thread = thread_of(bob)
    await code_turn(api, "print(secret)", user="bob", thread_id=bob_thread)
    assert marker.read_text() == "ran "
    # alice follows bob's share link: her turn forks his thread into a kernel of her own.
    lines = await code_turn(api, "print(globals().get('secret'))", thread_id=bob_thread)
    assert thread_of(lines) != bob_thread
    assert outputs(lines) == ["None\n"] and hints(lines, "not_replayed") == [2] and hints(lines, "replayed") == []
    assert marker.read_text() == "ran "
    # Asked for explicitly, the fork's code runs.
    lines = await code_turn(api, "print(secret)", thread_id=bob_thread, replay_forked_code=True)
    assert outputs(lines) == ["bob\n"] and hints(lines, "replayed") == [2] and hints(lines, "not_replayed") == []
    assert marker.read_text() == "ran ran "
    # editthread forks too: bob's part stays unreplayed, and so it does in a fork of that fork.
    edit = body_json(await api("editthread", source_thread_id=bob_thread, user_index=1))
    lines = await code_turn(api, "mine = 'alice'\nprint(globals().get('secret'))", thread_id=edit["new_thread_id"])
    assert outputs(lines) == ["None\n"] and hints(lines, "not_replayed") == [1]
    assert outputs(await code_turn(api, "print(mine)", thread_id=edit["new_thread_id"])) == ["alice\n"]
    again = body_json(await api("editthread", source_thread_id=edit["new_thread_id"], user_index=2))
    lines = await code_turn(api, "print(mine, globals().get('secret'))", thread_id=again["new_thread_id"])
    assert outputs(lines) == ["alice None\n"]  # alice's own code is replayed, bob's is not
    assert hints(lines, "replayed") == [1] and hints(lines, "not_replayed") == [1]
    assert marker.read_text() == "ran ran "


def test_user_folders_are_safe_and_distinct():
    names = ["alice", "Alice", "ALICE", "../x", "..", ".", "a/b", "a%2Fb", "a%2fb", "jane.doe", "jäne", "a b", "_-"]
    folders = [user_folder(name) for name in names]
    assert len({f.casefold() for f in folders}) == len(names)  # distinct even on a case-insensitive filesystem
    assert all(f and f not in (".", "..") and "/" not in f and "\\" not in f for f in folders)
    assert user_folder("../x") == "%2E%2E%2Fx" and user_folder("alice") == "alice"
