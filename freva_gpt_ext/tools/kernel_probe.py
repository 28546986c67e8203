"""Which optional packages a kernel spec's kernels can import: probed once per spec in a kernel of its own.

The system prompt names only the packages the kernel has (the model would otherwise write imports that fail),
and none while the probe has not answered: a turn never waits for a probe. The probe kernel is started with
jupyter_client directly (not the server's kernel manager: JupyterLab does not list it), with the environment of
the per-thread kernels (`kernel_env.py`: none of the server's secrets), and shut down as soon as it has answered,
or when the extension stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from typing import Any

from jupyter_client.manager import AsyncKernelManager

# Import name -> distribution name, in the order the prompt lists them.
PACKAGES = {
    "freva_client": "freva-client",
    "numpy": "numpy",
    "pandas": "pandas",
    "xarray": "xarray",
    "netCDF4": "netCDF4",
    "h5netcdf": "h5netcdf",
    "h5py": "h5py",
    "cftime": "cftime",
    "dask": "dask",
    "scipy": "scipy",
    "zarr": "zarr",
    "matplotlib": "matplotlib",
    "cartopy": "cartopy",
}
# Not a package: the folder in which cartopy finds Natural Earth's 110m coastlines without a download.
NATURAL_EARTH = "natural_earth"
_MARK = "FREVA_GPT_PROBE "

# Runs in any Python kernel without importing the packages (except cartopy, for its data folders), leaves no
# names behind and prints one JSON line: {import name: version, NATURAL_EARTH: folder}.
PROBE_CODE = f"""
def _freva_gpt_probe():
    import importlib.metadata, importlib.util, json, os
    found = {{}}
    for module, dist in {PACKAGES!r}.items():
        try:
            if importlib.util.find_spec(module) is not None:
                found[module] = importlib.metadata.version(dist)
        except Exception:
            pass
    if "cartopy" in found:
        try:
            import cartopy
            for key in ("pre_existing_data_dir", "data_dir"):
                folder = str(cartopy.config.get(key) or "")  # a str or a Path, by cartopy version
                shp = os.path.join(folder, "shapefiles", "natural_earth", "physical", "ne_110m_coastline.shp")
                if folder and os.path.isfile(shp):
                    found[{NATURAL_EARTH!r}] = folder
                    break
        except Exception:
            pass
    print({_MARK!r} + json.dumps(found))
_freva_gpt_probe()
del _freva_gpt_probe
"""


class ProbeError(Exception):
    """The probe kernel did not start or did not answer."""


def parse_probe_output(text: str) -> dict[str, str]:
    """The probe's answer in what a kernel printed for `PROBE_CODE`."""
    for line in text.splitlines():
        if line.startswith(_MARK):
            found = json.loads(line[len(_MARK) :])
            return {str(k): str(v) for k, v in found.items()}
    raise ProbeError(f"The probe printed no answer: {text[-300:]!r}")


async def probe_kernel_spec(
    kernel_name: str, *, env: Mapping[str, str], kernel_spec_manager: Any = None, timeout: float = 60.0
) -> dict[str, str]:
    """{import name: version} of `PACKAGES` that a fresh kernel of `kernel_name` can import, plus `NATURAL_EARTH`.

    Starts a kernel of that spec with `env` (the spec's own `env` on top), runs `PROBE_CODE` and shuts the kernel
    down, also when cancelled. Raises `ProbeError` (or the kernel manager's error, e.g. for an unknown spec) when
    it cannot answer in `timeout`.
    """
    options = {"kernel_spec_manager": kernel_spec_manager} if kernel_spec_manager is not None else {}
    km = AsyncKernelManager(kernel_name=kernel_name, **options)
    start = asyncio.ensure_future(km.start_kernel(env=dict(env)))
    try:
        # A stop while the kernel starts must not leave a kernel process behind: let the start finish.
        await asyncio.shield(start)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await start
        await _shutdown(km)
        raise
    client = km.client()
    client.start_channels()
    printed: list[str] = []

    def collect(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            printed.append(msg["content"].get("text", ""))
        elif msg["msg_type"] == "error":
            printed.append("\n".join(msg["content"].get("traceback", [])))

    try:
        try:
            await client.wait_for_ready(timeout=timeout)
            await client.execute_interactive(PROBE_CODE, store_history=False, timeout=timeout, output_hook=collect)
        except (TimeoutError, RuntimeError) as err:
            raise ProbeError(f"The kernel {kernel_name!r} did not answer the probe: {err}") from err
        return parse_probe_output("".join(printed))
    finally:
        client.stop_channels()
        await _shutdown(km)


async def _shutdown(km: AsyncKernelManager) -> None:
    # Never cut short: a half-done shutdown leaves the kernel process running.
    with contextlib.suppress(Exception):
        await asyncio.shield(km.shutdown_kernel(now=True))


class KernelProbes:
    """Probe results per kernel spec, each probed once in the background on the first ask."""

    def __init__(
        self,
        kernel_spec_manager: Any = None,
        *,
        env: Mapping[str, str],
        timeout: float = 60.0,
        log: logging.Logger | None = None,
    ):
        self.kernel_spec_manager = kernel_spec_manager
        self.env = env
        self.timeout = timeout
        self.log = log or logging.getLogger(__name__)
        self._results: dict[str, dict[str, str]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    def packages(self, kernel_name: str) -> dict[str, str] | None:
        """The spec's packages once probed; else None, and its probe starts (nobody waits for it)."""
        result = self._results.get(kernel_name)
        if result is None and kernel_name not in self._tasks and not self._closed:
            self._tasks[kernel_name] = asyncio.ensure_future(self._probe(kernel_name))
        return result

    async def _probe(self, kernel_name: str) -> None:
        try:
            found = await probe_kernel_spec(
                kernel_name, env=self.env, kernel_spec_manager=self.kernel_spec_manager, timeout=self.timeout
            )
        except Exception as err:
            # Not retried: the prompt keeps naming no optional package for this spec.
            self.log.warning("Could not probe the packages of kernel spec %r: %s", kernel_name, err)
            return
        self._results[kernel_name] = found
        self.log.info("Kernel spec %r has: %s", kernel_name, ", ".join(f"{k} {v}" for k, v in found.items()))

    async def aclose(self) -> None:
        """Stop the probes still running (their kernels are shut down)."""
        self._closed = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
