"""FrevaGPT as a Jupyter server extension."""

from __future__ import annotations

from typing import Any

try:
    # Written by the build from labextension/package.json, the one version source.
    from ._version import __version__
except ImportError:  # a checkout that was never installed
    __version__ = "0.0.0+unknown"


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .app import FrevaGPT

    return [{"module": "freva_gpt_ext", "app": FrevaGPT}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "freva-gpt-ext"}]
