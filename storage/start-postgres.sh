#!/usr/bin/env bash
# Start the local PostgreSQL 15 server and create a database for acpsearch studies.
#   storage/start-postgres.sh [DBNAME] [DBUSER]        (defaults: acpsearch acpsearch; run as root)
# Prints the storage URL to use:   postgresql://DBUSER@127.0.0.1/DBNAME
# For other machines of a cluster, let PostgreSQL listen on the network (listen_addresses in
# /etc/postgresql/15/main/postgresql.conf, a host line in pg_hba.conf) and give the user a password.
set -euo pipefail
DB=${1:-acpsearch}
USER_NAME=${2:-acpsearch}
if ! command -v pg_ctlcluster >/dev/null; then
  echo "PostgreSQL is not installed (apt-get install postgresql)" >&2
  exit 2
fi
if ! pg_lsclusters -h | awk '$1=="15" && $2=="main" {print $4}' | grep -q online; then
  pg_ctlcluster 15 main start
fi
as_pg() { if [ "$(id -un)" = postgres ]; then "$@"; else su postgres -c "$(printf '%q ' "$@")"; fi; }
if ! as_pg psql -tAc "SELECT 1 FROM pg_roles WHERE rolname='$USER_NAME'" | grep -q 1; then
  as_pg createuser "$USER_NAME"
fi
if ! as_pg psql -tAc "SELECT 1 FROM pg_database WHERE datname='$DB'" | grep -q 1; then
  as_pg createdb -O "$USER_NAME" "$DB"
fi
# Local TCP connections of this user without a password (development set-up only).
HBA=$(as_pg psql -tAc "SHOW hba_file")
LINE="host $DB $USER_NAME 127.0.0.1/32 trust"
if ! grep -qxF "$LINE" "$HBA"; then
  sed -i "1i $LINE" "$HBA"
  as_pg psql -tAc "SELECT pg_reload_conf()" >/dev/null
fi
echo "postgresql://$USER_NAME@127.0.0.1/$DB"
