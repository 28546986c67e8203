"""Finds the data folders that live at the top of the repository and travel inside the wheel."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_folder(name: str) -> Path:
    """`prompt_library`, `tool_servers` or `resources`: inside the installed package, else the checkout's."""
    installed = _PACKAGE / name
    if installed.is_dir():
        return installed
    checkout = _PACKAGE.parent / name
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"The data folder {name!r} is neither in {_PACKAGE} nor in {_PACKAGE.parent}.")
