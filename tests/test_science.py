"""The kernel's scientific stack: NetCDF with xarray, plots, offline maps, and the probe of what a kernel has.

Real kernels throughout; the `test` extra includes the `science` extra, so nothing here skips for a missing
package.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from freva_gpt_ext.app import FrevaGPT
from freva_gpt_ext.core.prompts import KERNEL_UNKNOWN
from freva_gpt_ext.tools.kernel_probe import NATURAL_EARTH, PACKAGES
from tests.fake_llm import FakeLLM, catalogue_yaml
from tests.server_process import REPO, FakeLLMProcess, ServerProcess
from tests.test_kernel import UserKernel, code_turn, errors, outputs, wait_until
from tests.test_kernel_process import running

pytestmark = pytest.mark.timeout(180)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def freva_app(serverapp: Any) -> FrevaGPT:
    for apps in serverapp.extension_manager.extension_apps.values():
        for app in apps:
            if isinstance(app, FrevaGPT):
                return app
    raise AssertionError("the extension is not loaded")


async def started(serverapp: Any) -> FrevaGPT:
    """The extension after the server's start hook, which pytest-jupyter's server does not run by itself."""
    await serverapp.extension_manager.start_all_extensions()
    return freva_app(serverapp)


def images(lines: list[dict[str, Any]]) -> list[bytes]:
    """The PNGs of a stream (a long one arrives in several lines with one id)."""
    parts: dict[str, str] = {}
    for x in lines:
        if x["variant"] == "Image":
            parts[x["id"]] = parts.get(x["id"], "") + x["content"]
    return [base64.b64decode(b64) for b64 in parts.values()]


def system_prompt(fake_llm: FakeLLM) -> str:
    """The system prompt of the last turn's request to the LLM (not the one that names a thread)."""
    body = next(r.body for r in reversed(fake_llm.requests) if "tools" in r.body)
    return body["messages"][0]["content"]


def named_packages(prompt: str) -> set[str]:
    return {name for name in PACKAGES if name in prompt}


# What a turn's code runs in when the network is gone: every connection attempt fails at once.
OFFLINE = """
import socket
def _no_network(*args, **kwargs):
    raise OSError("no network in this test")
socket.socket.connect = _no_network
socket.create_connection = _no_network
"""


async def test_netcdf_file_written_opened_with_xarray_and_plotted_returns_png(api):
    code = (
        OFFLINE
        + """
import numpy as np, pandas as pd, xarray as xr, matplotlib.pyplot as plt
time = pd.date_range("2000-01-01", periods=12, freq="MS")
lat, lon = np.arange(-60.0, 61, 30), np.arange(0.0, 360, 60)
tas = 280 + 10 * np.cos(np.deg2rad(lat))[None, :, None] + np.arange(12)[:, None, None] * np.ones((1, 5, 6))
ds = xr.Dataset({"tas": (("time", "lat", "lon"), tas, {"units": "K"})}, coords={"time": time, "lat": lat, "lon": lon})
ds.to_netcdf("tas.nc", engine="netcdf4")
opened = xr.open_dataset("tas.nc", engine="h5netcdf")
mean = opened["tas"].weighted(np.cos(np.deg2rad(opened["lat"]))).mean(("lat", "lon"))
print(opened["tas"].attrs["units"], opened["tas"].shape, round(float(mean[0]), 2))
mean.plot()
plt.title("global mean tas")
plt.show()
"""
    )
    lines = await code_turn(api, code)
    assert errors(lines) == []
    (printed,) = outputs(lines)
    assert printed.startswith("K (12, 5, 6) "), printed
    (png,) = images(lines)
    assert png.startswith(PNG_MAGIC)


@pytest.fixture
def science_spec(jp_env_jupyter_path: Path) -> Path:
    """The `python3` kernel spec as scripts/start.sh installs it (into this test's environment prefix)."""
    prefix = jp_env_jupyter_path.parent.parent
    env = {**os.environ, "KERNEL_PYTHON": sys.executable}
    subprocess.run([str(REPO / "scripts" / "kernel_spec.sh"), str(prefix)], check=True, env=env, timeout=120)
    spec = jp_env_jupyter_path / "kernels" / "python3" / "kernel.json"
    assert "CARTOPY_DATA_DIR" in json.loads(spec.read_text())["env"]
    return spec


@pytest.fixture
def freva_config(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    config: dict[str, Any] = {"execution_timeout": 60.0, "kernel_idle_timeout": 0.0}
    config.update(getattr(request, "param", {}))
    return config


@pytest.mark.parametrize("freva_config", [{"kernel_probe": True}], indirect=True)
async def test_coastlines_and_borders_draw_with_no_network(science_spec, api, fake_llm, jp_serverapp):
    probes = (await started(jp_serverapp)).kernel_probes
    assert probes is not None
    await wait_until(lambda: probes.packages("python3") is not None, 60, "the probe of python3")
    data_dir = json.loads(science_spec.read_text())["env"]["CARTOPY_DATA_DIR"]
    assert probes.packages("python3")[NATURAL_EARTH] == data_dir
    code = (
        OFFLINE
        + """
import os
import matplotlib.pyplot as plt, cartopy.crs as ccrs, cartopy.feature as cfeature
ax = plt.axes(projection=ccrs.Robinson())
ax.coastlines()
ax.add_feature(cfeature.BORDERS, linewidth=0.5)
ax.add_feature(cfeature.LAND)
plt.show()
print(os.environ["CARTOPY_DATA_DIR"])
"""
    )
    lines = await code_turn(api, code)
    assert errors(lines) == []
    (printed,) = outputs(lines)
    assert "Traceback" not in printed and "Error" not in printed and "Downloading" not in printed, printed
    # the per-thread kernel has the spec's data folder
    assert printed.splitlines()[-1] == data_dir
    (png,) = images(lines)
    assert png.startswith(PNG_MAGIC)
    # the model was told it may draw them
    assert "(with Natural Earth data offline)" in system_prompt(fake_llm)


def gated_spec(kernels: Path, name: str, hide: str = "") -> tuple[Path, Path]:
    """A kernel spec whose kernels start only once `gate` exists; (gate, pid file of its latest kernel)."""
    folder = kernels / name
    folder.mkdir(parents=True)
    gate, pidfile = folder / "gate", folder / "pid"
    argv = [sys.executable, str(REPO / "tests" / "gated_kernel.py"), str(pidfile), str(gate), hide]
    spec = {"argv": [*argv, "-f", "{connection_file}"], "display_name": name, "language": "python"}
    (folder / "kernel.json").write_text(json.dumps(spec))
    return gate, pidfile


@pytest.fixture
def gated(jp_kernel_dir: Path) -> tuple[Path, Path]:
    return gated_spec(Path(jp_kernel_dir), "gated", hide="freva_client,xarray")


@pytest.mark.parametrize("freva_config", [{"kernel_probe": True, "kernel_spec": "gated"}], indirect=True)
async def test_prompt_names_the_kernels_packages_only_once_the_probe_answered(gated, api, fake_llm, jp_serverapp):
    gate, pidfile = gated
    probes = (await started(jp_serverapp)).kernel_probes
    assert probes is not None
    # The probe started with the server; its kernel waits at the gate. Turns do not wait for it.
    await wait_until(pidfile.exists, 60, "the probe kernel")
    await api("streamresponse", method="POST", input="hello")
    prompt = system_prompt(fake_llm)
    assert KERNEL_UNKNOWN in prompt and named_packages(prompt) == set()
    gate.touch()
    await wait_until(lambda: probes.packages("gated") is not None, 60, "the probe's answer")
    # its kernel is shut down once it answered
    pid = int(pidfile.read_text())
    await wait_until(lambda: not running(pid), 30, "the probe kernel's end")
    await api("streamresponse", method="POST", input="hello again")
    prompt = system_prompt(fake_llm)
    named = named_packages(prompt)
    # the kernel's packages and what it says on using them; the hidden ones are never named
    assert {"numpy", "pandas", "matplotlib", "cartopy", "netCDF4"} <= named
    assert "xarray" not in named and "freva_client" not in named
    assert "PLOTS WITH MATPLOTLIB" in prompt and "MAPS WITH CARTOPY" in prompt
    assert "ANALYSIS WITH XARRAY" not in prompt and "FINDING DATA WITH FREVA" not in prompt
    assert KERNEL_UNKNOWN not in prompt
    # this HOME has no cartopy data and the spec sets no CARTOPY_DATA_DIR: the prompt says maps go without
    assert "cartopy 0" in prompt and "(without Natural Earth data offline)" in prompt


@pytest.mark.parametrize("freva_config", [{"kernel_probe": True}], indirect=True)
async def test_a_notebook_kernels_spec_is_probed_on_its_first_use(jp_kernel_dir, api, jp_fetch, jp_serverapp, fake_llm):
    gate, _ = gated_spec(Path(jp_kernel_dir), "notebook", hide="cartopy")
    gate.touch()
    probes = (await started(jp_serverapp)).kernel_probes
    assert probes is not None
    # the per-thread kernels' spec was probed at the start; a notebook's spec is not known yet
    await wait_until(lambda: probes.packages("python3") is not None, 60, "the probe of python3")
    response = await jp_fetch(
        "api", "kernels", method="POST", body=json.dumps({"name": "notebook"}), headers={"Authorization": "token alice"}
    )
    kernel = UserKernel(jp_serverapp, json.loads(response.body)["id"])
    try:
        await kernel.client.wait_for_ready(timeout=60)
        await api("streamresponse", method="POST", input="hello", kernel_id=kernel.kernel_id)
        assert named_packages(system_prompt(fake_llm)) == set()
        await wait_until(lambda: probes.packages("notebook") is not None, 60, "the probe of the notebook's spec")
        await api("streamresponse", method="POST", input="hello", kernel_id=kernel.kernel_id)
        named = named_packages(system_prompt(fake_llm))
        assert "xarray" in named and "cartopy" not in named
        # a turn without the notebook's kernel: the per-thread kernels have cartopy
        await api("streamresponse", method="POST", input="hello")
        assert "cartopy" in named_packages(system_prompt(fake_llm))
    finally:
        kernel.close()


async def test_no_probe_when_switched_off(api, fake_llm, jp_serverapp):
    assert (await started(jp_serverapp)).kernel_probes is None
    lines = await code_turn(api, "print(1)")
    assert outputs(lines) == ["1\n"]
    prompt = system_prompt(fake_llm)
    assert KERNEL_UNKNOWN in prompt and named_packages(prompt) == set()
    # only the thread's kernel ran
    assert len(jp_serverapp.kernel_manager.list_kernel_ids()) == 1


def test_a_running_probe_ends_with_the_server(tmp_path: Path) -> None:
    jupyter = tmp_path / "server" / "jupyter"
    gate, pidfile = gated_spec(jupyter / "data" / "kernels", "gated")
    with FakeLLMProcess() as llm:
        catalogue = tmp_path / "models.yaml"
        catalogue.write_text(catalogue_yaml(llm.base_url))
        args = [f"--FrevaGPT.litellm_config={catalogue}", f"--FrevaGPT.data_dir={tmp_path / 'data'}"]
        env = {"FREVAGPT_KERNEL_PROBE": "true", "FREVAGPT_KERNEL_SPEC": "gated"}
        with ServerProcess(tmp_path / "server", args=args, env=env) as server:
            deadline = time.monotonic() + 60
            while not pidfile.exists():
                assert time.monotonic() < deadline, f"no probe kernel started:\n{server.log()}"
                time.sleep(0.05)
            pid = int(pidfile.read_text())
            assert running(pid) and not gate.exists()
        # SIGTERM while the probe waits for its kernel: the kernel went with the server
        deadline = time.monotonic() + 15
        while running(pid):
            assert time.monotonic() < deadline, "the probe kernel outlived its server"
            time.sleep(0.1)
