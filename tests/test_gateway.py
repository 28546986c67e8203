"""Kernels on a Jupyter kernel gateway (issue 16): `jupyter server --GatewayClient.url=...` pointed at a real Jupyter
Kernel Gateway with a token, both as child processes; the fake LLM drives the code turns.

One gateway and one server serve the module; each test looks only at its own threads and kernels.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fake_llm import catalogue_yaml
from tests.gateway_process import KernelGatewayProcess
from tests.server_process import FakeLLMProcess, ServerProcess
from tests.test_doctor import doctor, write_catalogue
from tests.test_doctor import lines as report_lines
from tests.test_kernel import PNG_MAGIC, directive, errors, hints, outputs, thread_of
from tests.test_kernel_process import running, stream

pytestmark = pytest.mark.timeout(300)

OWNER = "tester"
FREVA_CONFIG = "/srv/freva/evaluation_system.conf"
GATEWAY_KERNEL_ROOT = "/srv/kernels"  # Kernel Gateway ignores it; Enterprise Gateway would start kernels there


class LiveTurn:
    """A turn read line by line in a thread, so that the test can act while it runs."""

    def __init__(self, server: ServerProcess, **params: Any) -> None:
        self.lines: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self.ended = 0.0
        self._thread = threading.Thread(target=self._read, args=(server, params), daemon=True)
        self._thread.start()

    def _read(self, server: ServerProcess, params: dict[str, Any]) -> None:
        try:
            with server.client(timeout=120) as http:
                with http.stream("POST", "api/chatbot/streamresponse", json=params) as response:
                    for line in response.iter_lines():
                        if line:
                            self.lines.append(json.loads(line))
        except Exception as err:
            self.error = err
        self.ended = time.monotonic()

    def join(self, timeout: float) -> list[dict[str, Any]]:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the turn did not end: {self.lines}"
        assert self.error is None, self.error
        return self.lines


class Site:
    def __init__(self, llm: FakeLLMProcess, gateway: KernelGatewayProcess, server: ServerProcess) -> None:
        self.llm = llm
        self.gateway = gateway
        self.server = server

    def turn(self, code: str, **params: Any) -> list[dict[str, Any]]:
        return stream(self.server, input=directive(code), **params)

    def live(self, code: str, **params: Any) -> LiveTurn:
        return LiveTurn(self.server, input=directive(code), **params)

    def post(self, route: str, **params: Any) -> Any:
        with self.server.client() as http:
            response = http.post(f"api/chatbot/{route}", json=params)
        assert response.status_code == 200, response.text
        return response.json()

    def server_kernels(self) -> set[str]:
        with self.server.client() as http:
            response = http.get("api/kernels")
        assert response.status_code == 200, response.text
        return {k["id"] for k in response.json()}

    def gateway_kernels(self) -> set[str]:
        return {k["id"] for k in self.gateway.kernels()}

    def marker(self, name: str) -> Path:
        """A file that code of ours writes into its kernel's working directory: the gateway's."""
        return self.gateway.workdir / name


def server_args(llm: FakeLLMProcess, gateway: KernelGatewayProcess, tmp: Path, *more: str) -> list[str]:
    catalogue = tmp / "models.yaml"
    catalogue.write_text(catalogue_yaml(llm.base_url))
    return [
        *gateway.server_args(),
        f"--FrevaGPT.litellm_config={catalogue}",
        f"--FrevaGPT.data_dir={tmp / 'data'}",
        f"--FrevaGPT.owner={OWNER}",
        "--FrevaGPT.heartbeat_interval=0.5",
        *more,
    ]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("gateway")
    with FakeLLMProcess() as llm, KernelGatewayProcess(tmp / "gateway") as gateway:
        args = server_args(
            llm,
            gateway,
            tmp,
            f"--FrevaGPT.evaluation_system_config_file={FREVA_CONFIG}",
            f"--FrevaGPT.gateway_kernel_root={GATEWAY_KERNEL_ROOT}",
            "--FrevaGPT.execution_timeout=60",
        )
        with ServerProcess(tmp / "server", args=args) as server:
            yield Site(llm, gateway, server)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


ENV_PROBE = (
    "import json, os\nx = 41\n"
    "print(json.dumps({'pid': os.getpid(), 'ppid': os.getppid(), 'cwd': os.getcwd(), 'env': {k: os.environ.get(k) "
    "for k in ('THREAD_ID', 'EVALUATION_SYSTEM_CONFIG_FILE', 'KERNEL_USERNAME', 'KERNEL_WORKING_DIR')}}))"
)


def test_code_runs_on_the_gateway_and_keeps_its_state(site: Site) -> None:
    lines = site.turn(ENV_PROBE)
    assert errors(lines) == []
    tid = thread_of(lines)
    seen = json.loads(outputs(lines)[0])
    # the kernel is a process of the gateway, not of the server
    assert seen["ppid"] == site.gateway.pid == parent_of(seen["pid"])
    assert site.server.proc is not None and seen["ppid"] != site.server.proc.pid
    assert seen["cwd"] == str(site.gateway.workdir)
    # the start named the thread's owner, and the allow-lists let the thread's variables through
    assert seen["env"] == {
        "THREAD_ID": tid,
        "EVALUATION_SYSTEM_CONFIG_FILE": FREVA_CONFIG,
        "KERNEL_USERNAME": OWNER,
        "KERNEL_WORKING_DIR": GATEWAY_KERNEL_ROOT,
    }
    # the server lists the kernel, which lives on the gateway
    assert site.server_kernels() and site.server_kernels() <= site.gateway_kernels()
    lines = site.turn("import os\nprint(x + 1, os.getpid())", thread_id=tid)
    assert outputs(lines) == [f"42 {seen['pid']}\n"] and errors(lines) == []
    assert hints(lines, "replayed") == []
    # an expression's value, an exception as readable output
    assert outputs(site.turn("x * 2", thread_id=tid)) == ["82"]
    lines = site.turn("1 / 0", thread_id=tid)
    assert "ZeroDivisionError" in outputs(lines)[0] and errors(lines) == []


def test_a_plot_arrives_as_png(site: Site) -> None:
    lines = site.turn("import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()")
    assert errors(lines) == []
    png = base64.b64decode("".join(x["content"] for x in lines if x["variant"] == "Image"), validate=True)
    assert png.startswith(PNG_MAGIC) and png[12:16] == b"IHDR"
    assert int.from_bytes(png[16:20], "big") > 100


def test_stop_interrupts_the_code_and_the_kernel_stays_usable(site: Site) -> None:
    code = "import os, time\ny = 5\nopen(f'sleeping-{os.getpid()}', 'w').close()\ntime.sleep(60)"
    before = set(site.gateway.workdir.glob("sleeping-*"))
    live = site.live(code)
    wait_until(lambda: bool(set(site.gateway.workdir.glob("sleeping-*")) - before), "the code to run")
    (marker,) = set(site.gateway.workdir.glob("sleeping-*")) - before
    pid = int(marker.name.split("-")[1])
    tid = thread_of(live.lines)
    asked = time.monotonic()
    assert site.post("stop", thread_id=tid) == {"detail": "Conversation stopped."}
    lines = live.join(timeout=30)
    assert live.ended - asked < 5
    assert lines[-1] == {"variant": "StreamEnd", "content": "Stream is stopped by user."}
    # interrupted, not killed: the same kernel answers at once, with its variables
    started = time.monotonic()
    lines = site.turn("import os\nprint(y, os.getpid())", thread_id=tid)
    assert outputs(lines) == [f"5 {pid}\n"] and errors(lines) == []
    assert time.monotonic() - started < 10


def test_a_kernel_killed_on_the_gateway_fails_the_call_then_a_fresh_kernel_replays(site: Site) -> None:
    before = site.gateway_kernels()
    lines = site.turn("import os\nx = 41\nprint(os.getpid())")
    tid = thread_of(lines)
    pid = int(outputs(lines)[0])
    (kernel_id,) = site.gateway_kernels() - before
    live = site.live("import os, time\nopen(f'doomed-{os.getpid()}', 'w').close()\ntime.sleep(60)", thread_id=tid)
    wait_until(site.marker(f"doomed-{pid}").exists, "the code to run")
    os.kill(pid, signal.SIGKILL)
    lines = live.join(timeout=60)
    (error,) = errors(lines)
    assert "died" in error
    assert lines[-1]["content"] == "Stream ended."  # the turn went on
    assert not running(pid)
    # the fresh kernel replays the thread's code that succeeded (not the call that was running)
    lines = site.turn("import os\nprint(x + 1, os.getpid())", thread_id=tid)
    (output,) = outputs(lines)
    assert output.startswith("42 ") and int(output.split()[1]) != pid
    assert hints(lines, "replayed") == [1]
    # the gateway restarted the dead kernel under its id, with nothing of the thread in it: we shut it down
    wait_until(lambda: kernel_id not in site.gateway_kernels(), "the old kernel to be shut down")
    assert kernel_id not in site.server_kernels()


def test_a_timeout_interrupts_and_an_idle_kernel_is_shut_down_then_replayed(site: Site, tmp_path: Path) -> None:
    args = server_args(
        site.llm, site.gateway, tmp_path, "--FrevaGPT.execution_timeout=1.5", "--FrevaGPT.kernel_idle_timeout=3"
    )
    with ServerProcess(tmp_path / "server", args=args) as server:
        other = Site(site.llm, site.gateway, server)
        before = site.gateway_kernels()
        lines = other.turn("y = 5")
        tid = thread_of(lines)
        (kernel_id,) = site.gateway_kernels() - before
        lines = other.turn("print('started', flush=True)\nimport time\ntime.sleep(30)", thread_id=tid)
        (output,) = outputs(lines)
        assert output.startswith("started\n") and "KeyboardInterrupt" not in output
        (error,) = errors(lines)
        assert "1.5 s" in error and "interrupted" in error
        assert lines[-1]["content"] == "Stream ended."
        # the same kernel goes on, with its variables
        assert outputs(other.turn("print(y)", thread_id=tid)) == ["5\n"]
        assert kernel_id in site.gateway_kernels()
        # idle for 3 s: shut down on the gateway; the next call replays what ran to its end
        wait_until(lambda: kernel_id not in site.gateway_kernels(), "the idle kernel to be shut down")
        lines = other.turn("print(y + 1)", thread_id=tid)
        assert outputs(lines) == ["6\n"] and hints(lines, "replayed") == [2]


def test_deleting_the_thread_shuts_its_kernel_down_on_the_gateway(site: Site) -> None:
    before = site.gateway_kernels()
    lines = site.turn("x = 1")
    (kernel_id,) = site.gateway_kernels() - before
    assert kernel_id in site.server_kernels()
    assert site.post("deletethread", thread_id=thread_of(lines)) == {"detail": "Thread deleted."}
    wait_until(lambda: kernel_id not in site.gateway_kernels(), "the gateway to shut the kernel down")
    assert kernel_id not in site.server_kernels()


def test_a_notebook_kernel_started_through_the_gateway_runs_the_turns_code(site: Site) -> None:
    with site.server.client() as http:
        response = http.post("api/kernels", json={})
    assert response.status_code == 201, response.text
    kernel_id = response.json()["id"]
    try:
        assert kernel_id in site.gateway_kernels()
        lines = site.turn("import os\nz = 3\nprint(os.getppid())", kernel_id=kernel_id)
        assert outputs(lines) == [f"{site.gateway.pid}\n"] and errors(lines) == []
        # the notebook's namespace, from another thread too; the kernel is the user's: it stays
        lines = site.turn("print(z * 2)", kernel_id=kernel_id)
        assert outputs(lines) == ["6\n"]
        assert site.post("deletethread", thread_id=thread_of(lines)) == {"detail": "Thread deleted."}
        assert kernel_id in site.gateway_kernels()
    finally:
        with site.server.client() as http:
            http.delete(f"api/kernels/{kernel_id}")


def test_doctor_checks_the_gateway(site: Site, tmp_path: Path) -> None:
    catalogue = write_catalogue(tmp_path, site.llm.base_url)
    url = f"--GatewayClient.url={site.gateway.url}"
    result = doctor(tmp_path, catalogue, *site.gateway.server_args())
    (line,) = report_lines(result, "ok", "kernel gateway")
    assert site.gateway.url in line and "kernel specs: python3" in line, result.stdout
    assert not report_lines(result, "FAIL", "kernel gateway") and not report_lines(result, "WARN", "kernel gateway")
    # the gateway's kernels are checked there, not as local kernel specs or folders
    assert not report_lines(result, "ok", "kernel") and not report_lines(result, "ok", "kernel folders"), result.stdout
    # a wrong token; an unknown kernel spec and no allow-list: each said, with what to do
    result = doctor(tmp_path, catalogue, url, "--GatewayClient.auth_token=not-the-gateway-token-7f3a")
    (line,) = report_lines(result, "FAIL", "kernel gateway")
    assert "refuses our credentials (HTTP 401)" in line and result.returncode == 1
    assert "7f3a" not in result.stdout
    result = doctor(
        tmp_path, catalogue, url, f"--GatewayClient.auth_token={site.gateway.token}", "--FrevaGPT.kernel_spec=nope"
    )
    assert report_lines(result, "FAIL", "kernel gateway") == ["FAIL  kernel gateway: it has no kernel spec 'nope'"]
    (warning,) = report_lines(result, "WARN", "kernel gateway")
    assert "THREAD_ID" in warning and "EVALUATION_SYSTEM_CONFIG_FILE" not in warning
