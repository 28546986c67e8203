"""An ipykernel launcher for tests: `python tests/gated_kernel.py PIDFILE GATE HIDE -f {connection_file}`.

Writes its pid to PIDFILE, starts the kernel only once the file GATE exists (so a test decides when a probe of
this kernel spec can answer), and makes the top-level modules named in HIDE (comma-separated) unimportable.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
import time
from pathlib import Path


class _Hide(importlib.abc.MetaPathFinder):
    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)", name=name)
        return None


def main() -> None:
    pidfile, gate, hide = sys.argv[1:4]
    del sys.argv[1:4]
    Path(pidfile).write_text(str(os.getpid()))
    while not os.path.exists(gate):
        time.sleep(0.02)
    sys.meta_path.insert(0, _Hide({n for n in hide.split(",") if n}))
    from ipykernel import kernelapp

    kernelapp.launch_new_instance()


if __name__ == "__main__":
    main()
