#!/usr/bin/env bash
# Installs (if missing) and starts the services the test suite talks to, all
# on loopback: PostgreSQL 15 with a role that may create databases, and the
# Prometheus server binary (Debian's 2.42) that the remote-write tests run as
# a real sender.
set -euo pipefail

need_apt=()
command -v pg_ctlcluster >/dev/null 2>&1 || need_apt+=(postgresql)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-pip)
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
# The sandbox of process notebook sessions.
command -v bwrap >/dev/null 2>&1 || need_apt+=(bubblewrap)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# Start the first PostgreSQL cluster on this machine (create one if none).
if ! pg_lsclusters -h | grep -q .; then
  ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
  pg_createcluster "$ver" main
fi
read -r ver name port status _ < <(pg_lsclusters -h | head -1)
if [ "$status" != online ]; then
  pg_ctlcluster "$ver" "$name" start
fi
for _ in $(seq 1 50); do
  su postgres -c "psql -p $port -qAtc 'select 1'" >/dev/null 2>&1 && break
  sleep 0.2
done
if [ "$port" != 5432 ]; then
  echo "warning: PostgreSQL listens on $port; set TEST_POSTGRES_URL accordingly" >&2
fi
su postgres -c "psql -p $port -v ON_ERROR_STOP=1 -qAt" <<'SQL'
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'duckpond_test') THEN
    CREATE ROLE duckpond_test LOGIN CREATEDB PASSWORD 'duckpond_test';
  END IF;
END
$$;
SQL
# The database the tests connect to (DuckLake catalog schemas live in it).
if ! su postgres -c "psql -p $port -qAtc \"select 1 from pg_database where datname = 'duckpond_test'\"" | grep -q 1; then
  su postgres -c "psql -p $port -qAtc 'CREATE DATABASE duckpond_test OWNER duckpond_test'" >/dev/null
fi
# Drop databases left by earlier runs so they do not pile up.
for db in $(su postgres -c "psql -p $port -qAtc \"select datname from pg_database where datname like 'duckpond_test_%'\""); do
  su postgres -c "psql -p $port -qAtc 'DROP DATABASE IF EXISTS $db'" >/dev/null
done
echo "postgresql $ver/$name online on port $port"

# An independent DuckDB client for interoperability tests: Python duckdb at
# the same version as the daemon's (extensions are LOADed by path from the
# fetched binaries, so only the wheel is needed).
venv=${DUCKPOND_TEST_VENV:-$HOME/.cache/duckpond/venv}
if ! "$venv/bin/python" -c 'import duckdb, pyarrow, grpc_tools, sys; sys.exit(duckdb.__version__ != "1.5.5")' 2>/dev/null; then
  python3 -m venv "$venv" 2>/dev/null || {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  }
  # pyarrow: the independent Arrow IPC / Parquet writer of the ingest tests.
  # grpcio-tools: protoc and Python's protobuf runtime, an encoder of remote
  # write 2.0 independent of ours (tests/prometheus.rs).
  "$venv/bin/python" -m pip install --quiet duckdb==1.5.5 pyarrow==26.0.1 grpcio-tools==1.85.1
fi
echo "python for interop tests: $venv/bin/python (duckdb $("$venv/bin/python" -c 'import duckdb; print(duckdb.__version__)'))"
