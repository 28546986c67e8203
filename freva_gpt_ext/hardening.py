"""Process hardening of the standalone server, where the code of many users runs under one account."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

PR_SET_DUMPABLE = 4


def make_undumpable() -> str | None:
    """Mark this process non-dumpable, so that other processes of the same account — the kernels among them —
    cannot read `/proc/<pid>/environ` or `/proc/<pid>/mem` (its keys) nor attach a debugger. None when done,
    else why not (not Linux, or the call failed)."""
    if not sys.platform.startswith("linux"):
        return f"not available on {sys.platform}"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            return f"prctl failed with errno {ctypes.get_errno()}"
    except (OSError, AttributeError) as err:
        return f"prctl is not reachable: {err}"
    return None
