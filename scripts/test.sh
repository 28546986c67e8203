#!/usr/bin/env bash
# Installs everything the tests need, then runs every stage, also after an earlier one failed: ruff (lint and
# format), the panel's lint and unit tests (vitest), the browser test (JupyterLab in headless Chromium) and
# pytest. Ends with a summary of the stages and, as the very last line, pytest's own closing line; exits
# non-zero when any stage failed.
#
#   scripts/test.sh [--repeat N] [pytest arguments]
#
# --repeat N runs the browser test and pytest N times each (to catch flaky tests); the summary lists every run,
# and the last line is then pytest's closing line of the last run that failed (of the last run if none did).
set -uo pipefail
cd "$(dirname "$0")/.."

repeat=1
pytest_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --repeat)
      repeat="${2:-}"
      shift
      [ $# -gt 0 ] && shift
      ;;
    --repeat=*)
      repeat="${1#*=}"
      shift
      ;;
    *)
      pytest_args+=("$1")
      shift
      ;;
  esac
done
if ! [[ "$repeat" =~ ^[1-9][0-9]*$ ]]; then
  echo "test.sh: --repeat takes a number of runs (1 or more), not '$repeat'." >&2
  exit 2
fi

if [ -z "${NODE_EXTRA_CA_CERTS:-}" ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  export NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
fi
if ! scripts/setup.sh test; then
  echo "test.sh: scripts/setup.sh test failed: no test ran." >&2
  exit 1
fi
export PATH="$PWD/.venv/bin:$PATH"

logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT
summary=()
failed=0

# pass NAME RESULT / fail NAME RESULT: one line of the summary.
pass() { summary+=("$1: ${2:-ok}"); }
fail() {
  summary+=("$1: FAILED${2:+ ($2)}")
  failed=1
}

# stage NAME COMMAND...: run a stage; its outcome goes into the summary.
stage() {
  local name="$1" status
  shift
  echo "== test.sh: $name"
  "$@"
  status=$?
  if [ "$status" -eq 0 ]; then pass "$name"; else fail "$name" "exit $status"; fi
}

panel() {
  (cd labextension && jlpm install --immutable && jlpm lint:check && jlpm test)
}

stage "ruff check" ruff check .
stage "ruff format" ruff format --check .
# The panel: lockfile-exact dependencies, lint, unit tests.
stage "panel lint+vitest" panel

# The browser test needs Chromium (`apt-get install chromium`; .ci/run installs it). On CI, none is a failure.
chromium="${CHROMIUM:-/usr/bin/chromium}"
browser_tests=(catalogue.test.mjs panel.test.mjs notebook.test.mjs)
if [ ! -x "$chromium" ]; then
  if [ -n "${CI:-}" ]; then
    fail browser "no Chromium at $chromium"
  else
    summary+=("browser: SKIPPED (no Chromium at $chromium: apt-get install chromium, or set CHROMIUM)")
  fi
elif ! (cd ui-tests && jlpm install --immutable); then
  fail browser "jlpm install in ui-tests"
else
  for run in $(seq 1 "$repeat"); do
    name=browser
    [ "$repeat" -gt 1 ] && name="browser run $run/$repeat"
    log="$logs/browser-$run.log"
    echo "== test.sh: $name"
    if (cd ui-tests && CHROMIUM="$chromium" node --test --test-concurrency=1 "${browser_tests[@]}") 2>&1 | tee "$log"; then
      pass "$name" "ok ($(grep -E '^# pass ' "$log" | tail -1 | cut -d' ' -f3) passed)"
    else
      # Node's TAP report: the failed (or cancelled) tests are the indented `not ok` lines; name five.
      failures="$(grep -E '^ +not ok ' "$log" | sed -E 's/^ +not ok [0-9]+ - //' |
        awk '{ n++; if (n <= 5) s = s (n > 1 ? " | " : "") $0 } END { if (!n) { print "see its output above"; exit } if (n > 5) s = s " | and " n - 5 " more"; print n " failed: " s }')"
      fail "$name" "$failures"
    fi
  done
fi

# pytest: its closing line ("=== 170 passed in 250s ===") ends the output.
last_ok=""
last_failed=""
for run in $(seq 1 "$repeat"); do
  name=pytest
  [ "$repeat" -gt 1 ] && name="pytest run $run/$repeat"
  log="$logs/pytest-$run.log"
  echo "== test.sh: $name"
  python -m pytest -p no:cacheprovider ${pytest_args[@]+"${pytest_args[@]}"} 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
  line="$(grep -v '^[[:space:]]*$' "$log" | tail -1)"
  if [ "$status" -eq 0 ]; then
    pass "$name" "ok: $line"
    last_ok="$line"
  else
    fail "$name" "exit $status: $line"
    last_failed="$line"
  fi
done

echo
echo "== test.sh: summary"
printf '%s\n' "${summary[@]}"
echo "${last_failed:-$last_ok}"
exit "$failed"
