#!/usr/bin/env bash
# Builds the Python environment notebook sessions run in (process backend):
# a venv at $1 with marimo, DuckDB 1.5.5 and its ducklake and sqlite_scanner
# extensions (as pip wheels, loaded by path from the setup cell), polars,
# pyarrow and sqlglot. Idempotent: a venv whose versions match is kept.
set -euo pipefail
venv=${1:?usage: notebook-env.sh VENV_DIR}
# Pinned: the versions the setup cell and the tests were checked against.
pkgs=(marimo==0.25.2 duckdb==1.5.5 duckdb-extension-ducklake==1.5.5 duckdb-extension-sqlite-scanner==1.5.5
      polars==2.1.0 pyarrow==26.0.1 sqlglot==30.30.0)
check='import marimo, duckdb, polars, pyarrow, sqlglot, duckdb_extension_ducklake, duckdb_extension_sqlite_scanner, sys
sys.exit(not (marimo.__version__ == "0.25.2" and duckdb.__version__ == "1.5.5"))'
# Process sessions run in a bubblewrap sandbox (notebooks.sandbox).
if ! command -v bwrap >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "installing bubblewrap (the notebook sandbox)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bubblewrap >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bubblewrap >/dev/null; }
fi
if "$venv/bin/python" -c "$check" 2>/dev/null; then
  echo "notebook environment: $venv (up to date)"
  exit 0
fi
if ! python3 -m venv "$venv" 2>/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pkgs[@]}"
"$venv/bin/python" -c "$check"
echo "notebook environment: $venv (marimo $("$venv/bin/marimo" --version))"
