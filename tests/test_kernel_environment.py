"""A kernel holds none of the server's secrets (issue 9), checked where it matters: `jupyter freva-gpt` as a real
process whose environment holds keys and tokens, and the code of a per-thread kernel looking for them in its own
environment and in the server's (`/proc/<server pid>/environ`).

As root, the server runs without capabilities (`setpriv`), as a service account would: root's CAP_SYS_PTRACE
reads any process's memory and environment, whatever the process says.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import parse_lines
from tests.fake_llm import catalogue_yaml
from tests.server_process import FakeLLMProcess, ServerProcess
from tests.test_kernel import directive, outputs, thread_of

pytestmark = pytest.mark.timeout(300)

SECRETS = {
    "OPENAI_API_KEY": "sk-server-openai",
    "FREVAGPT_OPENAI_API_KEY": "sk-frevagpt-openai",
    "JPY_API_TOKEN": "hub-token-of-the-user",
    "MY_TOKEN": "my-token-value",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-value",
    "DB_PASSWORD": "db-password-value",
    "LLM_ACCESS": "catalogue-read-value",  # named by the catalogue as os.environ/LLM_ACCESS
    "UNLISTED_SETTING": "unlisted-value",
}


class CaplessServer(ServerProcess):
    """The server process without capabilities when the tests run as root."""

    def command(self) -> list[str]:
        if os.geteuid() != 0:
            return super().command()
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root needs setpriv (util-linux) to start the server without capabilities")
        return [setpriv, "--bounding-set=-all", "--inh-caps=-all", "--", *super().command()]


PROBE = """import json, os
try:
    open('/proc/{pid}/environ', 'rb').read()
    server = 'readable'
except OSError as err:
    server = type(err).__name__
print(json.dumps({{'env': dict(os.environ), 'cwd': os.getcwd(), 'server': server}}))"""


def test_a_standalone_kernel_holds_none_of_the_servers_secrets(tmp_path: Path) -> None:
    with FakeLLMProcess() as llm:
        catalogue = yaml.safe_load(catalogue_yaml(llm.base_url))
        for entry in catalogue["model_list"]:
            entry["litellm_params"]["api_key"] = "os.environ/LLM_ACCESS"
        path = tmp_path / "models.yaml"
        path.write_text(yaml.safe_dump(catalogue))
        kept = {"CARTOPY_DATA_DIR": str(tmp_path / "natural-earth"), "SITE_SETTING": "site-value"}
        # The admin's list names some secrets too: they stay out all the same.
        listed = ["SITE_SETTING", "LLM_ACCESS", "MY_TOKEN", "JPY_*", "DB_*", "FREVAGPT_*"]
        env = {**SECRETS, **kept, "FREVAGPT_KERNEL_ENV": json.dumps(listed)}
        # A kernel spec without an `env` of its own (a spec's env would win over the server's variables).
        spec = tmp_path / "server" / "jupyter" / "data" / "kernels" / "plain"
        spec.mkdir(parents=True)
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "plain", "language": "python"}))
        args = [
            "--FrevaGPT.kernel_spec=plain",
            f"--FrevaGPT.litellm_config={path}",
            f"--FrevaGPT.data_dir={tmp_path / 'data'}",
            "--FrevaGPT.dev=True",
            "--FrevaGPT.dev_user=../x",  # a user name that is no safe folder name
            "--FrevaGPT.heartbeat_interval=0.5",
            "--FrevaGPT.execution_timeout=60",
        ]
        server = CaplessServer(tmp_path / "server", args=args, env=env, standalone=True, ready_timeout=90)
        with server, server.client(token=False, timeout=120) as client:
            response = client.post(
                "api/chatbot/streamresponse", json={"input": directive(PROBE.format(pid=server.proc.pid))}
            )
            assert response.status_code == 200, response.text
            lines = parse_lines(response.content)
            (output,) = outputs(lines)
            seen: dict[str, Any] = json.loads(output)
            # Standalone users have no notebook kernels to name.
            for choice in ({"kernel_id": "any"}, {"notebook_path": "any.ipynb"}):
                refused = client.post("api/chatbot/streamresponse", json={"input": "x", **choice})
                assert refused.status_code == 422, refused.text
                assert "not available on this server" in refused.json()["detail"]
        assert server.returncode == 0, server.log()
    # The start-up warning says what code under the one service account can still read.
    log = " ".join(server.log_path.read_text().split())
    assert "code of one user can still read other users' kernel folders" in log
    assert "only a kernel gateway that starts kernels per user separates them" in log

    env_seen = seen["env"]
    assert not set(SECRETS) & set(env_seen), sorted(set(SECRETS) & set(env_seen))
    assert not [name for name in env_seen if name.startswith("FREVAGPT_")]
    # jupyter_client gives each kernel its parent's pid (JPY_PARENT_PID); no other JPY_ name reaches it.
    assert [name for name in env_seen if name.startswith("JPY_")] == ["JPY_PARENT_PID"]
    text = json.dumps(env_seen)
    assert not [value for value in SECRETS.values() if value in text]
    assert {k: env_seen.get(k) for k in kept} == kept
    assert env_seen["THREAD_ID"] == thread_of(lines)
    assert "PATH" in env_seen and "HOME" in env_seen
    # The server's own environment is out of reach too.
    assert seen["server"] == "PermissionError"
    # Kernel folders per user, under a name that stays inside kernel_root.
    kernel_root = server.root_dir / "freva-gpt"
    assert seen["cwd"] == str(kernel_root / "%2E%2E%2Fx" / thread_of(lines))
    assert not (server.root_dir / "x").exists() and not (kernel_root / "x").exists()


# A kernel launcher that first writes its environment to the file named by its first argument (atomically).
DUMP_ENV = """import json, os, sys
out = sys.argv.pop(1)
with open(out + '.part', 'w') as f:
    json.dump(dict(os.environ), f)
os.replace(out + '.part', out)
from ipykernel import kernelapp
kernelapp.launch_new_instance()"""


def test_the_package_probe_kernel_gets_the_kernels_environment_too(tmp_path: Path) -> None:
    """The probe of what a kernel spec has (started with the server) runs in a kernel of its own: the same
    allow-list as the per-thread kernels, so none of the server's secrets reaches it either."""
    seen = tmp_path / "probe-env.json"
    spec = tmp_path / "server" / "jupyter" / "data" / "kernels" / "dump"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-c", DUMP_ENV, str(seen), "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "dump", "language": "python"}))
    catalogue = yaml.safe_load(catalogue_yaml("http://127.0.0.1:9/v1"))
    for entry in catalogue["model_list"]:
        entry["litellm_params"]["api_key"] = "os.environ/LLM_ACCESS"
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(catalogue))
    env = {
        **SECRETS,
        "SITE_SETTING": "site-value",
        "FREVAGPT_KERNEL_ENV": json.dumps(["SITE_SETTING", "LLM_ACCESS", "MY_TOKEN", "FREVAGPT_*"]),
        "FREVAGPT_KERNEL_PROBE": "true",
        "FREVAGPT_KERNEL_SPEC": "dump",
    }
    args = [f"--FrevaGPT.litellm_config={path}", f"--FrevaGPT.data_dir={tmp_path / 'data'}"]
    with ServerProcess(tmp_path / "server", args=args, env=env) as server:
        deadline = time.monotonic() + 90
        while not seen.exists():
            assert time.monotonic() < deadline, f"no probe kernel started:\n{server.log()}"
            time.sleep(0.05)
    env_seen = json.loads(seen.read_text())
    assert not set(SECRETS) & set(env_seen), sorted(set(SECRETS) & set(env_seen))
    assert not [name for name in env_seen if name.startswith("FREVAGPT_")]
    assert not [value for value in SECRETS.values() if value in json.dumps(env_seen)]
    assert env_seen.get("SITE_SETTING") == "site-value"
    assert "PATH" in env_seen and "HOME" in env_seen
