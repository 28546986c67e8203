"""A real JupyterHub for tests (TESTING.md, "JupyterHub"): the hub, configurable-http-proxy and one
`jupyterhub-singleuser` server per user (SimpleLocalProcessSpawner; as root with `--allow-root`), users logging in
with a password (DummyAuthenticator, allow_all), a service whose role gives the tests an admin API token.

    hub = Hub(workdir, environment={"FREVAGPT_LITELLM_CONFIG": ...})   # given to every user server
    with hub:                                   # started; waits until the hub answers through its proxy
        hub.spawn("alice", "bob")               # user servers started side by side; waits until each is ready
        hub.token("alice")                      # a new API token of alice (scopes: her own server)
        hub.server_pid("alice")                 # the pid of her server (the spawner's state)
        with hub.client("alice") as api:        # httpx on <hub>/user/alice/, sending that token
            api.get("api/chatbot/getuserthreads")
        with hub.browser("alice") as browser:   # logged in through /hub/login and OAuth: cookies only
            browser.get("api/chatbot/getthread", params=...)
            hub.xsrf(browser)                   # the value of the server's _xsrf cookie (what the panel sends)
    # stopped (user servers, proxy, hub), even when a test failed

The session fixture `hub` (registered from conftest.py) runs one hub with the users alice and bob, both servers
started, each user's threads in their own home folder, and the fake LLM as a child process. Tests that use it
are marked `hub` (`pytest -m hub`). Without configurable-http-proxy (`scripts/setup.sh test` installs it into
.cache/chp) they are skipped, except on CI (`CI` set), where that is an error.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fake_llm import catalogue_yaml
from tests.server_process import REPO, FakeLLMProcess, _stop, clean_env, free_port

CHP_BIN = REPO / ".cache" / "chp" / "node_modules" / ".bin"
PASSWORD = "hub-test-password"
USERS = ("alice", "bob")


def chp_command() -> str | None:
    """configurable-http-proxy from .cache/chp (scripts/setup.sh test), else from PATH."""
    local = CHP_BIN / "configurable-http-proxy"
    return str(local) if local.exists() else shutil.which("configurable-http-proxy")


class Hub:
    def __init__(
        self,
        workdir: Path,
        *,
        environment: dict[str, str] | None = None,
        server_args: list[str] | tuple[str, ...] = (),
        ready_timeout: float = 120.0,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.environment = dict(environment or {})
        self.server_args = list(server_args)
        self.ready_timeout = ready_timeout
        self.port = 0
        self.admin_token = secrets.token_hex(16)
        self.log_path = self.workdir / "hub.log"
        self.proc: subprocess.Popen | None = None
        self._tokens: dict[str, str] = {}
        self._spawned: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def server_url(self, user: str) -> str:
        return f"{self.url}user/{user}/"

    def home(self, user: str) -> Path:
        return self.workdir / "home" / user

    def log(self, tail: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    # -- lifecycle ----------------------------------------------------------------------------------------
    def _config(self, chp: str) -> str:
        bin_dir = Path(sys.executable).parent
        environment = {
            # JupyterHub 6 passes none of its own environment to user servers.
            "PATH": os.pathsep.join([str(bin_dir), "/usr/local/bin", "/usr/bin", "/bin"]),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            **self.environment,
        }
        return f"""
c = get_config()  # noqa
c.JupyterHub.bind_url = "http://127.0.0.1:{self.port}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{free_port()}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{free_port()}"
c.ConfigurableHTTPProxy.command = [{chp!r}]
c.ConfigurableHTTPProxy.pid_file = {str(self.workdir / "proxy.pid")!r}
c.JupyterHub.db_url = "sqlite:///{self.workdir / "hub.sqlite"}"
c.JupyterHub.cookie_secret_file = {str(self.workdir / "cookie_secret")!r}
c.JupyterHub.pid_file = {str(self.workdir / "hub.pid")!r}
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = {PASSWORD!r}
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = {str(self.workdir / "home" / "{username}")!r}
c.Spawner.cmd = [{str(bin_dir / "jupyterhub-singleuser")!r}]
c.Spawner.args = {["--allow-root", *self.server_args]!r}
c.Spawner.environment = {environment!r}
c.Spawner.start_timeout = {int(self.ready_timeout)}
# Answer a spawn request at once, so that several servers start side by side.
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0}}
c.Spawner.http_timeout = {int(self.ready_timeout)}
c.JupyterHub.services = [{{"name": "tests", "api_token": {self.admin_token!r}}}]
c.JupyterHub.load_roles = [
    {{
        "name": "tests-admin",
        # admin:server_state: the spawner's state (the user server's pid) in the user model.
        "scopes": ["admin:users", "admin:servers", "admin:server_state", "tokens"],
        "services": ["tests"],
    }}
]
"""

    def start(self) -> Hub:
        chp = chp_command()
        if chp is None:
            raise RuntimeError("configurable-http-proxy is not installed (scripts/setup.sh test puts it in .cache/chp)")
        self.port = free_port()
        config = self.workdir / "jupyterhub_config.py"
        config.write_text(self._config(chp))
        env = clean_env(self.workdir / "jupyter")
        env["PATH"] = os.pathsep.join([str(Path(chp).parent), str(Path(sys.executable).parent), env.get("PATH", "")])
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jupyterhub", "-f", str(config)],
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait(lambda: self.api("GET", "").status_code == 200, "the hub did not answer")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        for user in self._spawned:  # user servers first, each with its kernels
            try:
                self.api("DELETE", f"users/{user}/server")
            except httpx.HTTPError:
                pass
        _stop(self.proc, 30)

    def __enter__(self) -> Hub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait(self, ready: Any, what: str) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the hub exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if ready():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{what} within {self.ready_timeout} s:\n{self.log()}")

    # -- the hub's REST API -------------------------------------------------------------------------------
    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request to <hub>/hub/api/<path> with the admin token."""
        headers = {"Authorization": f"token {self.admin_token}"}
        with httpx.Client(trust_env=False, timeout=30) as client:
            return client.request(method, f"{self.url}hub/api/{path}", headers=headers, **kwargs)

    def spawn(self, *users: str) -> None:
        """Create the users, start their servers side by side and wait until each answers."""
        for user in users:
            created = self.api("POST", f"users/{user}")
            assert created.status_code in (201, 409), created.text
            started = self.api("POST", f"users/{user}/server")
            assert started.status_code in (201, 202, 400), started.text  # 400: already running
            self._spawned.append(user)
        for user in users:

            def ready(user: str = user) -> bool:
                server = self.api("GET", f"users/{user}").json().get("servers", {}).get("")
                if server is None:  # the hub forgets a server whose spawn failed: say why now, not at the deadline
                    raise RuntimeError(f"the server of {user} failed to start:\n{self.log()}")
                if not server.get("ready"):
                    return False
                with httpx.Client(trust_env=False, timeout=10) as client:
                    return client.get(f"{self.server_url(user)}api/chatbot/ping").status_code == 200

            self._wait(ready, f"the server of {user} was not ready")

    def server_pid(self, user: str) -> int:
        """The pid of the user's single-user server, as the hub's spawner recorded it."""
        model = self.api("GET", f"users/{user}")
        assert model.status_code == 200, model.text
        return int(model.json()["servers"][""]["state"]["pid"])

    def token(self, user: str) -> str:
        """An API token of `user` that reaches their own server (made once, then reused)."""
        if user not in self._tokens:
            response = self.api("POST", f"users/{user}/tokens", json={"note": "tests"})
            assert response.status_code in (200, 201), response.text
            self._tokens[user] = response.json()["token"]
        return self._tokens[user]

    # -- clients ------------------------------------------------------------------------------------------
    def client(self, user: str, *, as_user: str | None = None, **kwargs: Any) -> httpx.Client:
        """httpx on <hub>/user/<user>/ with the API token of `as_user` (default: `user`)."""
        kwargs.setdefault("timeout", 60)
        headers = {"Authorization": f"token {self.token(as_user or user)}", **kwargs.pop("headers", {})}
        return httpx.Client(base_url=self.server_url(user), headers=headers, trust_env=False, **kwargs)

    @contextlib.contextmanager
    def browser(self, user: str) -> Iterator[httpx.Client]:
        """httpx on <hub>/user/<user>/ holding what a browser holds after logging in: cookies, no token."""
        with httpx.Client(base_url=self.server_url(user), trust_env=False, timeout=60, follow_redirects=True) as client:
            page = client.get(f"{self.url}hub/login")
            match = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
            assert match, page.text[:2000]
            login = client.post(
                f"{self.url}hub/login",
                data={"username": user, "password": PASSWORD, "_xsrf": match.group(1)},
            )
            assert login.status_code == 200, login.text[:2000]
            # The server's OAuth round trip: its login cookie, then its page sets the server's _xsrf cookie.
            lab = client.get("lab")
            assert lab.status_code == 200 and str(lab.url).startswith(self.server_url(user)), (lab.url, lab.text[:500])
            self.xsrf(client)
            yield client

    def xsrf(self, browser: httpx.Client) -> str:
        """The value of the _xsrf cookie of the browser's user server (the panel sends it as X-XSRFToken)."""
        path = httpx.URL(str(browser.base_url)).path
        values = [c.value for c in browser.cookies.jar if c.name == "_xsrf" and c.path.rstrip("/") == path.rstrip("/")]
        assert values, [(c.name, c.path) for c in browser.cookies.jar]
        return values[0]


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """One real JupyterHub for the session, with the servers of alice and bob started (see the module doc)."""
    if chp_command() is None:
        reason = "configurable-http-proxy is not installed: run scripts/setup.sh test (it installs it to .cache/chp)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("hub")
    with FakeLLMProcess() as llm:
        catalogue = workdir / "models.yaml"
        catalogue.write_text(catalogue_yaml(llm.base_url))
        environment = {
            "FREVAGPT_LITELLM_CONFIG": str(catalogue),
            "FREVAGPT_HEARTBEAT_INTERVAL": "0.2",
            "FREVAGPT_LLM_READ_TIMEOUT": "20",
            "FREVAGPT_STOP_POLL_INTERVAL": "0.05",
            "FREVAGPT_KERNEL_PROBE": "false",
        }
        with Hub(workdir, environment=environment) as running:
            running.spawn(*USERS)
            yield running
