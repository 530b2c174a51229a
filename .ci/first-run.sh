#!/usr/bin/env bash
# First-run set-up for `make run`: config, schema, and a demo account whose
# key is kept in $DUCKPOND_HOME/demo-api-key (mode 0600). Idempotent.
set -euo pipefail
bin=${1:?usage: $0 DUCKPOND_BINARY}
home=${DUCKPOND_HOME:?}
[ -f "$home/config.yaml" ] || "$bin" init
"$bin" db upgrade
if [ "$("$bin" account list --json)" = "[]" ]; then
  umask 077
  "$bin" account create demo --json > "$home/demo-account.json"
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["api_key"])' "$home/demo-account.json" > "$home/demo-api-key"
  rm -f "$home/demo-account.json"
  echo "created account 'demo'; its API key is in $home/demo-api-key"
fi
echo "try: curl -H \"X-API-Key: \$(cat $home/demo-api-key)\" http://127.0.0.1:8000/api/account"
