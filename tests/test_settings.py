"""Bounds of the numeric settings: each is checked when set. A server started with a value out of bounds says
which, where it came from and why: standalone (`jupyter freva-gpt`, where FrevaGPT is the server) it stops at once;
inside Jupyter the user's server runs on and FrevaGPT is degraded, as for a broken catalogue (real processes)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from traitlets import TraitError

from freva_gpt_ext.app import FrevaGPT
from tests.server_process import ServerProcess

pytestmark = pytest.mark.timeout(300)

# (setting, value, a part of the message)
BAD = [
    ("heartbeat_interval", 0.0, "heartbeat_interval must be greater than 0"),
    ("heartbeat_interval", -1.0, "heartbeat_interval must be greater than 0"),
    ("stop_poll_interval", 0.0, "stop_poll_interval must be greater than 0"),
    ("lease_ttl", 0.0, "lease_ttl must be greater than 0"),
    ("execution_timeout", 0.0, "execution_timeout must be greater than 0"),
    ("llm_read_timeout", float("nan"), "llm_read_timeout must be greater than 0"),
    ("llm_connect_timeout", float("inf"), "llm_connect_timeout must be greater than 0"),
    ("kernel_idle_timeout", -1.0, "kernel_idle_timeout must be 0 or more"),
    ("token_cache_ttl", -1.0, "token_cache_ttl must be 0 or more"),
    ("token_negative_cache_ttl", -1.0, "token_negative_cache_ttl must be 0 or more"),
    ("tool_stop_grace", -1.0, "tool_stop_grace must be 0 or more"),
    ("memory_threads", 0, "'memory_threads' trait"),
    ("max_input_chars", 0, "'max_input_chars' trait"),
    ("max_tool_rounds", -1, "'max_tool_rounds' trait"),
    ("tool_result_chars", 10, "'tool_result_chars' trait"),
    ("memory_bytes", 1000, "'memory_bytes' trait"),
    ("store_busy_timeout", 0.0, "store_busy_timeout must be greater than 0"),
    # SQLite would silently take a longer busy timeout as none at all.
    ("store_busy_timeout", 3e6, "store_busy_timeout must be greater than 0 and at most 1000000"),
    ("kernel_idle_timeout", 2e6, "kernel_idle_timeout must be 0 or more and at most 1000000"),
]


@pytest.mark.parametrize(("name", "value", "message"), BAD)
def test_each_bound_is_checked(name: str, value: object, message: str) -> None:
    with pytest.raises(TraitError) as info:
        FrevaGPT(**{name: value})
    assert message in str(info.value)


def test_standalone_a_setting_out_of_bounds_stops_the_server_with_a_clear_message(tmp_path: Path) -> None:
    cases = [
        # The command line, the environment, and a bound between two settings.
        (
            ["--FrevaGPT.heartbeat_interval=0"],
            {},
            "FrevaGPT.heartbeat_interval of the Jupyter configuration (a config file or the command line): "
            "FrevaGPT.heartbeat_interval must be greater than 0",
        ),
        ([], {"FREVAGPT_MEMORY_THREADS": "0"}, "$FREVAGPT_MEMORY_THREADS is not a valid value for memory_threads"),
        (
            ["--FrevaGPT.stop_poll_interval=0.25"],
            {"FREVAGPT_LEASE_TTL": "0.5"},
            "FrevaGPT.lease_ttl (0.5 s, $FREVAGPT_LEASE_TTL) must be more than twice stop_poll_interval (0.25 s, "
            "FrevaGPT.stop_poll_interval of the Jupyter configuration",
        ),
    ]
    servers = [
        ServerProcess(tmp_path / f"s{n}", args=args, env=env, standalone=True).start()
        for n, (args, env, _) in enumerate(cases)
    ]
    try:
        for server, (*_, message) in zip(servers, cases, strict=True):
            assert server.proc is not None
            assert server.proc.wait(120) == 1, server.log(20_000)
            log = server.log(20_000)
            assert f"FrevaGPT configuration error: {message}" in log, log
            assert "Traceback" not in log, log
    finally:
        for server in servers:
            server.stop()


def test_inside_jupyter_a_bad_setting_degrades_the_chatbot_and_the_server_runs_on(tmp_path: Path) -> None:
    """JupyterLab must not go down for a FrevaGPT typo: the chatbot says what to fix, the rest of its settings
    (here data_dir) still apply, and SIGTERM stops the server within 5 s."""
    data = tmp_path / "data"
    args = [
        "--ServerApp.jpserver_extensions={'freva_gpt_ext': True}",
        "--FrevaGPT.tool_result_chars=10",
        f"--FrevaGPT.data_dir={data}",
    ]
    env = {"FREVAGPT_HEARTBEAT_INTERVAL": "0"}
    with ServerProcess(tmp_path / "server", args=args, env=env) as server, server.client() as client:
        assert client.get("api/status").status_code == 200  # Jupyter's own API
        ping = client.get("api/chatbot/ping").json()
        assert ping["status"] == "degraded", ping
        detail = ping["detail"]
        for part in (
            "FrevaGPT configuration error",
            "$FREVAGPT_HEARTBEAT_INTERVAL is not a valid value for heartbeat_interval",
            "must be greater than 0 and at most 1000000",
            "FrevaGPT.tool_result_chars of the Jupyter configuration",
            "should not be less than 1000",
            "restart the server",
        ):
            assert part in detail, detail
        log = server.log(100_000)
        assert log.count("FrevaGPT configuration error") == 1, log  # logged once, as an error
        assert "[E " in log.split("FrevaGPT configuration error")[0].rsplit("\n", 1)[-1], log
        assert "Traceback" not in log, log
        bots = client.get("api/chatbot/availablechatbots")
        assert bots.status_code == 200 and bots.json() == [], bots.text
        assert bots.headers["X-FrevaGPT-Detail"].startswith("FrevaGPT configuration error: FrevaGPT.tool_result_chars")
        stream = client.get("api/chatbot/streamresponse", params={"input": "hi"})
        assert stream.status_code == 503 and stream.json()["detail"] == detail, stream.text
        # The threads are where data_dir says.
        assert client.get("api/chatbot/getuserthreads").json() == [[], 0]
        assert (data / "threads.sqlite3").exists()
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        try:
            assert server.proc.wait(5) == 0, server.log()
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server did not stop within 5 s after SIGTERM:\n{server.log()}")
        assert time.monotonic() - started < 5


def test_good_bounds_start(tmp_path: Path) -> None:
    """The edges themselves are valid: 0 means never for the TTLs and the idle timeout."""
    args = [
        "--FrevaGPT.kernel_idle_timeout=0",
        "--FrevaGPT.token_cache_ttl=0",
        "--FrevaGPT.token_negative_cache_ttl=0",
        "--FrevaGPT.tool_stop_grace=0",
        "--FrevaGPT.max_tool_rounds=0",
        "--FrevaGPT.lease_ttl=0.51",
        "--FrevaGPT.stop_poll_interval=0.25",
        "--FrevaGPT.memory_threads=1",
    ]
    with ServerProcess(tmp_path, args=args, standalone=True, ready_timeout=90) as server:
        assert "configuration error" not in server.log(20_000)
