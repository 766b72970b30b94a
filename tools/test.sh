#!/usr/bin/env bash
# The project's test command (see README):  sudo tools/test.sh [pytest args...]
# Installs what is missing (tools/install.sh), lints (ruff), then runs every test tier with
# pytest, the ovs/lab ones included (they need root). Extra arguments go to pytest.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null; then exec sudo -E -- "$0" "$@"; fi
  echo "[test] ERROR: run as root: the ovs/lab tests need network namespaces" >&2
  exit 1
fi

echo "== install =="
bash tools/install.sh

echo "== lint: ruff check . =="
lint_rc=0
.venv/bin/ruff check . || lint_rc=$?

echo "== tests: pytest $* =="
rc=0
.venv/bin/pytest -ra "$@" || rc=$?
if [ "$rc" = 5 ]; then
  echo "[test] ERROR: pytest collected no tests (exit 5); treating that as a failure" >&2
  rc=1
fi
if [ "$lint_rc" != 0 ]; then
  echo "[test] FAILED: ruff check . found problems (see the lint section above)" >&2
  [ "$rc" != 0 ] || rc=$lint_rc
fi
exit "$rc"
