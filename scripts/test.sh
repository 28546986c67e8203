#!/usr/bin/env bash
# Installs everything the tests need, then runs the linters and the whole test suite: the panel's unit tests
# (vitest), the browser test (JupyterLab with the fake LLM in headless Chromium), then pytest (last: its
# summary line closes the log). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${NODE_EXTRA_CA_CERTS:-}" ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  export NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
fi
scripts/setup.sh test
export PATH="$PWD/.venv/bin:$PATH"
ruff check .
ruff format --check .

# The panel: lockfile-exact dependencies, lint, unit tests.
(cd labextension && jlpm install --immutable && jlpm lint:check && jlpm test)

# The browser test needs Chromium (`apt-get install chromium`; .ci/run installs it).
chromium="${CHROMIUM:-/usr/bin/chromium}"
if [ -x "$chromium" ]; then
  (cd ui-tests && jlpm install --immutable && CHROMIUM="$chromium" node --test --test-concurrency=1 panel.test.mjs)
elif [ -n "${CI:-}" ]; then
  echo "test.sh: no Chromium at $chromium: the browser test cannot run." >&2
  exit 1
else
  echo "test.sh: SKIPPED the browser test: no Chromium at $chromium (apt-get install chromium, or set CHROMIUM)." >&2
fi

# pytest last: its summary line closes the log.
python -m pytest -p no:cacheprovider "$@"
