"""LLM failures a user can act on: the stream names the model and the endpoint's host; the server log has the
endpoint without credentials, the status and the start of the provider's answer; no key anywhere."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import parse_lines
from tests.fake_llm import FakeLLM, catalogue_yaml
from tests.server_process import free_port

CONFIGURED_KEY = "sk-configured-0123456789abcdef"
PROVIDER_KEY = "sk-live-abcdefghij0123456789"
USERINFO_SECRET = "pw-in-url-4711"
QUERY_SECRET = "qs-secret-0815"


@pytest.fixture
def closed_port() -> int:
    return free_port()


@pytest.fixture
def catalogue(tmp_path: Path, fake_llm: FakeLLM, closed_port: int) -> Path:
    """The test catalogue plus models behind a closed port and behind a URL with credentials in it."""
    models = yaml.safe_load(catalogue_yaml(fake_llm.base_url))["model_list"]
    with_userinfo = fake_llm.base_url.replace("http://", f"http://user:{USERINFO_SECRET}@")
    for via in ("", "-litellm"):
        info: dict[str, Any] = {"stream_via": "litellm"} if via else {}
        unreachable = {"model": "openai/fake-text", "api_base": f"http://127.0.0.1:{closed_port}/v1", "api_key": "k"}
        # The OpenAI SDK (litellm's path) cannot take a query in its base URL.
        secret_base = with_userinfo if via else f"{with_userinfo}?key={QUERY_SECRET}"
        secret = {"model": "openai/fake-text", "api_base": secret_base, "api_key": CONFIGURED_KEY}
        models.append({"model_name": f"unreachable{via}", "litellm_params": unreachable, "model_info": info})
        models.append({"model_name": f"secret-endpoint{via}", "litellm_params": secret, "model_info": info})
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"model_list": models}))
    return path


async def server_error(api, chatbot: str, text: str = "hello") -> str:
    lines = parse_lines((await api("streamresponse", method="POST", input=text, chatbot=chatbot)).body)
    assert [line["variant"] for line in lines[-2:]] == ["ServerError", "StreamEnd"], lines
    return lines[-2]["content"]


def server_log(caplog: pytest.LogCaptureFixture) -> str:
    """What the server logs: not the fake LLM's access log (its tornado app runs in this process), nor the HTTP
    client libraries' own loggers (a Jupyter server does not show them)."""
    return "\n".join(
        r.getMessage()
        for r in caplog.records
        if not r.name.startswith(("httpx", "httpcore")) and not Path(r.pathname).match("tornado/web.py")
    )


def failure_logs(caplog: pytest.LogCaptureFixture, model: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if "LLM failure" in r.getMessage() and repr(model) in r.getMessage()]


@pytest.mark.parametrize("via", ["", "-litellm"])
async def test_unreachable_endpoint(api, caplog, closed_port, via):
    caplog.set_level(logging.INFO)
    model = f"unreachable{via}"
    error = await server_error(api, model)
    assert f"'{model}'" in error and f"127.0.0.1:{closed_port}" in error, error
    assert "cannot be reached" in error and "api_base" in error, error
    logged = failure_logs(caplog, model)
    assert len(logged) == 1, caplog.text
    assert f"http://127.0.0.1:{closed_port}/v1" in logged[0], logged


@pytest.mark.parametrize("via", ["", "-litellm"])
async def test_provider_error_with_credentials_everywhere(api, caplog, fake_llm, via):
    caplog.set_level(logging.INFO)  # the server's own level
    model = f"secret-endpoint{via}"
    # A provider that echoes keys in a long answer (the mark lies beyond the first 300 bytes).
    message = f"Incorrect API key provided: {CONFIGURED_KEY}; also {PROVIDER_KEY}; " + "x" * 300 + " FAR-MARK"
    error = await server_error(api, model, f'[[fake:error status=500 message="{message}"]]')
    host = fake_llm.base_url.split("/")[2]
    assert error.startswith(f"The model '{model}' ({host}) answered HTTP 500: Incorrect API key provided: "), error
    logged = failure_logs(caplog, model)
    assert len(logged) == 1, caplog.text
    endpoint = fake_llm.base_url if via else f"{fake_llm.base_url}/chat/completions?key=***"
    assert f" at {endpoint} " in logged[0], logged
    assert "status 500" in logged[0] and "Incorrect API key provided: ***" in logged[0], logged
    assert "FAR-MARK" not in logged[0], "only the start of the answer is logged"
    for secret in (CONFIGURED_KEY, PROVIDER_KEY, USERINFO_SECRET, QUERY_SECRET):
        assert secret not in error, error
        assert secret not in server_log(caplog)
    assert "user:" not in error and "user:" not in logged[0]


async def test_stream_broken_off(api, caplog, fake_llm):
    caplog.set_level(logging.INFO)
    error = await server_error(api, "fake-reset")
    host = fake_llm.base_url.split("/")[2]
    assert error.startswith(f"The model 'fake-reset' ({host}) broke off the connection"), error
    assert len(failure_logs(caplog, "fake-reset")) == 1, caplog.text
