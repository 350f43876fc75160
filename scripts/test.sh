#!/usr/bin/env bash
# README's test command: set up (idempotent) and run the whole suite.
# The PostgreSQL storage tests need a server: the local one is started with storage/start-postgres.sh
# (needs root or password-less sudo) and its URL exported as ACPSEARCH_TEST_PG_URL, with
# ACPSEARCH_REQUIRE_PG=1 so those tests fail rather than skip if it then cannot be reached. When it
# cannot be started, one note says why and the PostgreSQL tests skip. A preset ACPSEARCH_TEST_PG_URL
# is used as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0

start_postgres() {
  local as_root=() out err rc
  if ! command -v pg_ctlcluster >/dev/null; then
    echo "PostgreSQL is not installed (scripts/setup.sh installs it with apt when it can)"; return 1
  fi
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
      as_root=(sudo -n)
    else
      echo "starting it needs root or password-less sudo"; return 1
    fi
  fi
  err=$(mktemp)
  rc=0
  out=$(timeout 120 ${as_root[@]+"${as_root[@]}"} ./storage/start-postgres.sh </dev/null 2>"$err") || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "storage/start-postgres.sh failed (exit $rc): $(grep -v '^[[:space:]]*$' "$err" | tail -n 1)"
    rm -f "$err"; return 1
  fi
  if [[ "$(tail -n 1 <<<"$out")" != postgresql://* ]]; then
    echo "storage/start-postgres.sh printed no postgresql:// URL (last line: '$(tail -n 1 <<<"$out")')"
    rm -f "$err"; return 1
  fi
  rm -f "$err"
  tail -n 1 <<<"$out"
}

if [ -z "${ACPSEARCH_TEST_PG_URL:-}" ]; then
  if pg=$(start_postgres); then
    export ACPSEARCH_TEST_PG_URL="$pg" ACPSEARCH_REQUIRE_PG=1
  else
    echo "note: PostgreSQL not started ($pg); the PostgreSQL storage tests will be skipped" >&2
  fi
fi
exec .venv/bin/python -m pytest -q "$@"
