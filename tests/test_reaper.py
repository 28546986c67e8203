"""The idle-kernel reaper survives an unexpected error: later idle kernels are still shut down."""

from __future__ import annotations

from typing import Any

import pytest

from tests.flaky_kernels import FlakyKernelManager
from tests.test_kernel import UserKernel, code_turn, outputs, wait_until

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def freva_config() -> dict[str, Any]:
    return {"execution_timeout": 30.0, "kernel_idle_timeout": 1.0}


@pytest.fixture
def jp_server_config(jp_server_config: dict[str, Any]) -> dict[str, Any]:
    server = {**jp_server_config["ServerApp"], "kernel_manager_class": "tests.flaky_kernels.FlakyKernelManager"}
    return {**jp_server_config, "ServerApp": server}


async def test_the_reaper_survives_an_error(api, jp_fetch, jp_serverapp, caplog):
    km = jp_serverapp.kernel_manager
    assert isinstance(km, FlakyKernelManager)
    user = await UserKernel.start(jp_fetch, jp_serverapp)
    try:
        # A turn in the user's kernel: the reaper runs and asks the manager whether that kernel still exists.
        assert outputs(await code_turn(api, "print(1)", kernel_id=user.kernel_id)) == ["1\n"]
        FlakyKernelManager.broken = True
        try:
            await wait_until(lambda: "The idle-kernel reaper failed" in caplog.text, what="the reaper to fail")
        finally:
            FlakyKernelManager.broken = False
        # A per-thread kernel used now is still shut down once idle.
        assert outputs(await code_turn(api, "print(2)")) == ["2\n"]
        assert len(km.list_kernel_ids()) == 2
        await wait_until(lambda: km.list_kernel_ids() == [user.kernel_id], what="the idle kernel to be shut down")
    finally:
        user.close()
