#!/usr/bin/env bash
# Sets up the extension (building the JupyterLab panel) and starts JupyterLab with it, on the embedded defaults
# (threads in a SQLite file under the Jupyter data dir). The FrevaGPT panel is in the right side bar.
# The kernels get the scientific stack (the `science` extra: xarray, matplotlib, cartopy with offline map data,
# freva-client, ...). Extra arguments go to `jupyter lab`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh science
scripts/kernel_spec.sh
if [ -z "${FREVAGPT_LITELLM_CONFIG:-${LITELLM_CONFIG:-}}" ]; then
  cat <<'MSG'
FrevaGPT has no model configured yet. Point it at a model catalogue, for example:
    cp examples/litellm_config.yaml my-models.yaml   # keep the entries you use, set api_base / api_key
    FREVAGPT_LITELLM_CONFIG=$PWD/my-models.yaml scripts/start.sh
(or set c.FrevaGPT.litellm_config in jupyter_server_config.py). See README.md, "Models".
MSG
fi
args=()
[ "$(id -u)" = 0 ] && args+=(--allow-root)
exec .venv/bin/jupyter lab "${args[@]}" "$@"
