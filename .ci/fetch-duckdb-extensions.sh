#!/usr/bin/env bash
# Fetches the official DuckDB 1.5.5 extension binaries the daemon LOADs
# (ducklake, sqlite_scanner, postgres_scanner, httpfs, icu) from their PyPI
# packages into DIR/v1.5.5/<platform>/, the layout DuckDB itself uses for
# `extension_directory`. Idempotent: files already present are kept.
#
# Usage: .ci/fetch-duckdb-extensions.sh DIR
#
# The packages are signed official builds, so LOAD by path works without
# allowing unsigned extensions. We deliberately avoid the alias packages
# duckdb-extension-sqlite / -postgres: their file names do not match the
# extension entry point and LOAD refuses them.
set -euo pipefail

DUCKDB_VERSION=1.5.5
EXTENSIONS=(ducklake sqlite_scanner postgres_scanner httpfs icu)

dir=${1:?usage: $0 EXTENSION_DIR}
case "$(uname -m)" in
  x86_64) platform=linux_amd64 ;;
  aarch64|arm64) platform=linux_arm64 ;;
  *) echo "unsupported machine $(uname -m)" >&2; exit 1 ;;
esac
dest="$dir/v$DUCKDB_VERSION/$platform"
mkdir -p "$dest"

missing=()
for ext in "${EXTENSIONS[@]}"; do
  [ -s "$dest/$ext.duckdb_extension" ] || missing+=("$ext")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "duckdb extensions present in $dest"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pkgs=()
for ext in "${missing[@]}"; do
  pkgs+=("duckdb-extension-${ext//_/-}==$DUCKDB_VERSION")
done
echo "fetching ${pkgs[*]}"
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$work" "${pkgs[@]}"
for whl in "$work"/*.whl; do
  python3 - "$whl" "$dest" <<'PY'
import sys, zipfile, os
whl, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        if name.endswith(".duckdb_extension"):
            target = os.path.join(dest, os.path.basename(name))
            tmp = target + ".part"
            with z.open(name) as src, open(tmp, "wb") as out:
                out.write(src.read())
            os.replace(tmp, target)
            print("installed", target)
PY
done
for ext in "${EXTENSIONS[@]}"; do
  [ -s "$dest/$ext.duckdb_extension" ] || { echo "missing $dest/$ext.duckdb_extension after fetch" >&2; exit 1; }
done
