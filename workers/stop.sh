#!/usr/bin/env bash
# Stop the Ray node(s) started on THIS machine by start-head.sh / join.sh.
# Note: `ray stop` stops every Ray node of this user on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/ray stop
