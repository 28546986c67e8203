#!/usr/bin/env bash
# Creates .venv and installs the extension (editable) with what the given extras need. The install builds the
# JupyterLab panel from labextension/ (Node.js >= 20 and the npm registry; `jlpm` comes with the build
# requirements) and serves it from the checkout.
# Usage: scripts/setup.sh [extras]   e.g. scripts/setup.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${PYTHON:-python3}"
# Node's TLS uses its own CA list: add the system's (registry access behind proxies that re-sign TLS).
if [ -z "${NODE_EXTRA_CA_CERTS:-}" ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  export NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
fi
if ! command -v node >/dev/null; then
  echo "setup.sh: Node.js >= 20 is needed to build the JupyterLab panel (labextension/)." >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
spec="."
[ -n "$extras" ] && spec=".[${extras}]"
# pip must not write (or uninstall) the panel's files through the link made below: drop the link first.
panel_link=.venv/share/jupyter/labextensions/freva-gpt-ext
if [ -L "$panel_link" ]; then
  rm "$panel_link"
fi
# jupyter_builder links the panel into .venv below (a development tool, not a dependency of the package).
.venv/bin/python -m pip install --quiet -e "$spec" "jupyter_builder>=1.2"
# An editable install copies the built panel into .venv; link it to the checkout instead, so that a
# `jlpm build` in labextension/ shows after a browser reload.
PATH="$PWD/.venv/bin:$PATH" .venv/bin/jupyter-builder develop --overwrite . >/dev/null
# The JupyterHub tests' proxy (tests/hub.py): configurable-http-proxy from npm, kept in .cache/chp.
chp_version=5.3.0
if [[ ",$extras," == *",test,"* ]] &&
  ! grep -q "\"version\": \"$chp_version\"" .cache/chp/node_modules/configurable-http-proxy/package.json 2>/dev/null; then
  npm install --prefix .cache/chp --no-audit --no-fund --loglevel=error "configurable-http-proxy@$chp_version"
fi
