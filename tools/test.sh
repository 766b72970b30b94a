#!/usr/bin/env bash
# The project's test command (see README):  sudo tools/test.sh [pytest args...]
# Installs what is missing (tools/install.sh), lints (ruff, mypy, import-linter's layer
# contracts), then runs every test tier with pytest, the ovs/lab ones included (they need
# root). Extra arguments go to pytest.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null; then exec sudo -E -- "$0" "$@"; fi
  echo "[test] ERROR: run as root: the ovs/lab tests need network namespaces" >&2
  exit 1
fi

echo "== install =="
bash tools/install.sh

lint_rc=0
lint() {
  echo "== lint: $* =="
  if ! .venv/bin/"$@"; then
    echo "[test] FAILED: $* found problems" >&2
    lint_rc=1
  fi
}
lint ruff check .
lint mypy                 # files and strictness: [tool.mypy] in pyproject.toml
lint lint-imports         # layer contracts: [tool.importlinter] in pyproject.toml

echo "== tests: pytest $* =="
rc=0
.venv/bin/pytest -ra --durations=15 "$@" || rc=$?
if [ "$rc" = 5 ]; then
  echo "[test] ERROR: pytest collected no tests (exit 5); treating that as a failure" >&2
  rc=1
fi
if [ "$lint_rc" != 0 ]; then
  echo "[test] FAILED: the lint step found problems (see the lint sections above)" >&2
  [ "$rc" != 0 ] || rc=$lint_rc
fi
exit "$rc"
