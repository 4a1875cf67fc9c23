#!/usr/bin/env bash
# Start Debian's PostgreSQL on 127.0.0.1 and create the test role; prints the SQLAlchemy URL to use.
set -euo pipefail
if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
version=$(ls /usr/lib/postgresql | sort -V | tail -1)
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -q "^$version main$"; then
  pg_createcluster "$version" main >/dev/null
fi
pg_ctlcluster "$version" main start 2>/dev/null || true
for _ in $(seq 1 30); do
  pg_isready -h 127.0.0.1 -q && break
  sleep 1
done
su postgres -c "psql -q -h 127.0.0.1 -c \"DO \\\$\\\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='medsynth') THEN CREATE ROLE medsynth LOGIN SUPERUSER PASSWORD 'medsynth'; END IF; END \\\$\\\$;\"" >/dev/null 2>&1 \
  || su postgres -c "psql -q -c \"DO \\\$\\\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='medsynth') THEN CREATE ROLE medsynth LOGIN SUPERUSER PASSWORD 'medsynth'; END IF; END \\\$\\\$;\"" >/dev/null
# A throw-away test server: no fsync. The tests kill the app, never the machine, and a committed transaction
# survives an app crash without fsync; creating and dropping a database per test gets 4-10x faster.
PGPASSWORD=medsynth psql -q -h 127.0.0.1 -U medsynth -d postgres -c "ALTER SYSTEM SET fsync = off" \
  -c "ALTER SYSTEM SET synchronous_commit = off" -c "ALTER SYSTEM SET full_page_writes = off" \
  -c "SELECT pg_reload_conf()" >/dev/null
echo "postgresql+psycopg://medsynth:medsynth@127.0.0.1:5432/postgres"
