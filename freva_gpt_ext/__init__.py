"""FrevaGPT as a Jupyter server extension."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .app import FrevaGPT

    return [{"module": "freva_gpt_ext", "app": FrevaGPT}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "freva-gpt-ext"}]
