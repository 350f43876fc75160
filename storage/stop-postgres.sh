#!/usr/bin/env bash
# Stop the local PostgreSQL 15 server started by start-postgres.sh.
set -euo pipefail
pg_ctlcluster 15 main stop
