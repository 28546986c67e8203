"""A kernel manager that tests configure through `ServerApp.kernel_manager_class` (a configuration seam)."""

from __future__ import annotations

from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager


class FlakyKernelManager(AsyncMappingKernelManager):
    """Fails `kernel_id in km` while `broken` is set, as a manager in a bad state (or a gateway) may."""

    broken = False

    def __contains__(self, kernel_id: object) -> bool:
        if FlakyKernelManager.broken:
            raise RuntimeError("the kernel manager is in a bad state")
        return super().__contains__(kernel_id)
