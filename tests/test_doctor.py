"""`jupyter freva-gpt doctor` and `--version` as a user runs them: subprocesses against the fake LLM process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from freva_gpt_ext import __version__
from freva_gpt_ext.app import AUTHORIZER_FIX
from tests.fake_auth import SYSTEMUSER_PATH, FakeAuth
from tests.fake_llm import catalogue_yaml
from tests.server_process import FakeLLMProcess, clean_env, free_port
from tests.test_science import gated_spec

pytestmark = pytest.mark.timeout(300)
ANSWERED = "ok    model '%s': answered a one-token request"


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLMProcess]:
    with FakeLLMProcess() as process:
        yield process


def jupyter(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jupyter", "freva-gpt", *args],
        cwd=tmp_path,
        env=clean_env(tmp_path / "jupyter", **(env or {})),
        capture_output=True,
        text=True,
        timeout=240,
    )


def doctor(tmp_path: Path, catalogue: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    options = [f"--FrevaGPT.data_dir={tmp_path / 'data'}", f"--FrevaGPT.kernel_root={tmp_path / 'kernels'}"]
    return jupyter(tmp_path, "doctor", *options, *args, env={"FREVAGPT_LITELLM_CONFIG": str(catalogue), **env})


def lines(result: subprocess.CompletedProcess[str], status: str, topic: str) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith(f"{status:<4}  {topic}:")]


def write_catalogue(tmp_path: Path, base_url: str, name: str = "fake-text") -> Path:
    path = tmp_path / "models.yaml"
    entry = {"model_name": name, "litellm_params": {"model": f"openai/{name}", "api_base": base_url, "api_key": "k"}}
    path.write_text(yaml.safe_dump({"model_list": [entry]}))
    return path


def test_version(tmp_path: Path) -> None:
    result = jupyter(tmp_path, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == __version__
    assert __version__.startswith("0.1.")


def test_reachable_models_pass_and_probe(tmp_path: Path, llm: FakeLLMProcess) -> None:
    catalogue = tmp_path / "models.yaml"
    chosen = {"fake-text", "fake-text-litellm", "fake-error"}
    models = [m for m in yaml.safe_load(catalogue_yaml(llm.base_url))["model_list"] if m["model_name"] in chosen]
    catalogue.write_text(yaml.safe_dump({"model_list": models}))
    result = doctor(tmp_path, catalogue, "--probe", "--FrevaGPT.code_interpreter=False")
    assert lines(result, "ok", "catalogue"), result.stdout
    reachable = f"{llm.base_url}/models is reachable and lists 'fake-text'"
    assert lines(result, "ok", "model 'fake-text'") == [f"ok    model 'fake-text': {reachable}", ANSWERED % "fake-text"]
    assert ANSWERED % "fake-text-litellm" in lines(result, "ok", "model 'fake-text-litellm'")
    (failed,) = lines(result, "FAIL", "model 'fake-error'")
    assert "answered HTTP 500" in failed, failed
    assert lines(result, "ok", "store")[0].endswith(f"{tmp_path / 'data' / 'threads.sqlite3'}, writable")
    assert lines(result, "ok", "kernel") == ["ok    kernel: the code interpreter is off (code_interpreter)"]
    assert lines(result, "ok", "identity"), result.stdout
    assert result.returncode == 1, result.stdout


def test_unreachable_model_fails_with_what_to_do(tmp_path: Path) -> None:
    port = free_port()
    catalogue = write_catalogue(tmp_path, f"http://user:pw-4711@127.0.0.1:{port}/v1")
    result = doctor(tmp_path, catalogue, "--FrevaGPT.code_interpreter=False")
    assert result.returncode == 1, result.stdout
    (failed,) = lines(result, "FAIL", "model 'fake-text'")
    assert f"GET http://127.0.0.1:{port}/v1/models failed" in failed
    assert "pw-4711" not in result.stdout + result.stderr
    after = result.stdout.splitlines()[result.stdout.splitlines().index(failed) + 1]
    assert after.strip().startswith("-> ") and "api_base" in after
    assert result.stdout.rstrip().endswith("Problems found.")


def test_broken_catalogue_fails_with_its_position(tmp_path: Path) -> None:
    catalogue = tmp_path / "models.yaml"
    catalogue.write_text("model_list:\n  - model_name: a\n    litellm_params: {model: openai/x\n")
    result = doctor(tmp_path, catalogue, "--FrevaGPT.code_interpreter=False")
    assert result.returncode == 1, result.stdout
    (failed,) = lines(result, "FAIL", "catalogue")
    assert str(catalogue) in failed and "line 4, column 1" in failed and "invalid YAML" in failed


def test_configuration_comes_from_jupyter_config_files(tmp_path: Path, llm: FakeLLMProcess) -> None:
    """A Jupyter config file wins over FREVAGPT_*, as in the server: here it points at a working catalogue."""
    good = write_catalogue(tmp_path, llm.base_url)
    config = tmp_path / "jupyter" / "config"
    config.mkdir(parents=True)
    (config / "jupyter_server_config.py").write_text(f"c.FrevaGPT.litellm_config = {str(good)!r}\n")
    result = doctor(tmp_path, tmp_path / "missing.yaml", "--FrevaGPT.code_interpreter=False")
    assert result.returncode == 0, result.stdout
    assert lines(result, "ok", "catalogue")[0].startswith(f"ok    catalogue: {good}:")
    assert "FAIL" not in result.stdout
    assert result.stdout.rstrip().endswith("All checks passed.")


def test_the_kernel_and_its_packages(tmp_path: Path, llm: FakeLLMProcess) -> None:
    result = doctor(tmp_path, write_catalogue(tmp_path, llm.base_url))
    assert lines(result, "ok", "kernel")[0].startswith("ok    kernel: spec 'python3'"), result.stdout
    (packages,) = lines(result, "ok", "kernel packages")
    assert "numpy" in packages and "matplotlib" in packages, packages
    assert lines(result, "ok", "kernel folders"), result.stdout

    missing = doctor(tmp_path, write_catalogue(tmp_path, llm.base_url), "--FrevaGPT.kernel_spec=no-such-spec")
    assert missing.returncode == 1
    (failed,) = lines(missing, "FAIL", "kernel")
    assert "'no-such-spec'" in failed and "python3" in failed, failed


def test_standalone_needs_the_chatbot_only_authorizer(tmp_path: Path, llm: FakeLLMProcess) -> None:
    """`jupyter freva-gpt` with another authorizer refuses to start: the doctor says so, and what to set."""
    catalogue = write_catalogue(tmp_path, llm.base_url)
    allow_all = "jupyter_server.auth.authorizer.AllowAllAuthorizer"
    result = doctor(
        tmp_path, catalogue, "--FrevaGPT.code_interpreter=False", f"--ServerApp.authorizer_class={allow_all}"
    )
    assert result.returncode == 1, result.stdout
    (failed,) = lines(result, "FAIL", "identity")
    assert failed == (
        f"FAIL  identity: standalone (jupyter freva-gpt): the freva-rest bearer identity with the authorizer "
        f"{allow_all}: the server refuses to start"
    )
    after = result.stdout.splitlines()[result.stdout.splitlines().index(failed) + 1]
    assert after == f"      -> {AUTHORIZER_FIX}"


async def test_rest_url_must_answer_as_freva_rest(tmp_path: Path, llm: FakeLLMProcess) -> None:
    catalogue = write_catalogue(tmp_path, llm.base_url)
    options = ["--FrevaGPT.code_interpreter=False"]
    async with FakeAuth() as auth:
        # Run without blocking the loop that serves the fake auth server.
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "jupyter", "freva-gpt", "doctor", f"--FrevaGPT.data_dir={tmp_path / 'data'}", *options),
            f"--FrevaGPT.rest_url={auth.url}",
            cwd=tmp_path,
            env=clean_env(tmp_path / "jupyter", FREVAGPT_LITELLM_CONFIG=str(catalogue)),
            stdout=asyncio.subprocess.PIPE,
        )
        stdout = (await asyncio.wait_for(proc.communicate(), 240))[0].decode()
    assert proc.returncode == 0, stdout
    assert f"ok    identity: standalone, bearer tokens are checked at {auth.url}{SYSTEMUSER_PATH}" in stdout

    # A server that is no freva-rest (here the LLM's: 404), and none at all.
    for rest_url, answer in ((llm.base_url, "answered 404"), (f"http://127.0.0.1:{free_port()}", "failed")):
        result = doctor(tmp_path, catalogue, *options, f"--FrevaGPT.rest_url={rest_url}")
        assert result.returncode == 1, result.stdout
        (failed,) = lines(result, "FAIL", "identity")
        assert failed.startswith(f"FAIL  identity: rest_url: GET {rest_url}{SYSTEMUSER_PATH} {answer}"), failed


def test_missing_kernel_packages_are_named_with_how_to_install_them(tmp_path: Path, llm: FakeLLMProcess) -> None:
    gate, _ = gated_spec(tmp_path / "jupyter" / "data" / "kernels", "gated", hide="xarray,cartopy")
    gate.touch()
    result = doctor(tmp_path, write_catalogue(tmp_path, llm.base_url), "--FrevaGPT.kernel_spec=gated")
    # A warning, not a failure: the server works, the model's code does without them.
    assert result.returncode == 0, result.stdout
    (warned,) = lines(result, "WARN", "kernel packages")
    assert warned.endswith(": missing xarray, cartopy: the model's code will not use them"), warned
    after = result.stdout.splitlines()[result.stdout.splitlines().index(warned) + 1]
    assert f"{sys.executable} -m pip install '.[science]' from a checkout" in after, after
