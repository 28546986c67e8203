#!/usr/bin/env bash
# Installs everything the tests need, then runs the linters and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# pytest last: its summary line closes the log.
.venv/bin/python -m pytest -p no:cacheprovider "$@"
