"""Bounds of the numeric settings: each is checked when set, and a server started with a value out of bounds
stops at once, saying which and why (real processes: `jupyter server` and `jupyter freva-gpt` alike; they fail
before they listen, so they run side by side)."""

from __future__ import annotations

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
]


@pytest.mark.parametrize(("name", "value", "message"), BAD)
def test_each_bound_is_checked(name: str, value: object, message: str) -> None:
    with pytest.raises(TraitError) as info:
        FrevaGPT(**{name: value})
    assert message in str(info.value)


def test_a_setting_out_of_bounds_stops_the_server_with_a_clear_message(tmp_path: Path) -> None:
    cases = [
        # The command line, the environment, and a bound between two settings; standalone and inside Jupyter.
        (["--FrevaGPT.heartbeat_interval=0"], {}, True, "FrevaGPT.heartbeat_interval must be greater than 0"),
        ([], {"FREVAGPT_MEMORY_THREADS": "0"}, True, "$FREVAGPT_MEMORY_THREADS is not a valid value"),
        (
            ["--ServerApp.jpserver_extensions={'freva_gpt_ext': True}", "--FrevaGPT.stop_poll_interval=0.25"],
            {"FREVAGPT_LEASE_TTL": "0.5"},
            False,
            "FrevaGPT.lease_ttl (0.5 s) must be more than twice stop_poll_interval (0.25 s)",
        ),
    ]
    servers = [
        ServerProcess(tmp_path / f"s{n}", args=args, env=env, standalone=standalone).start()
        for n, (args, env, standalone, _) in enumerate(cases)
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
