#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 120), outside the test
# suite: the Rust targets in fuzz/ with cargo-fuzz (libFuzzer; stable
# toolchain with RUSTC_BOOTSTRAP for the sanitizer flags, as this machine
# has no nightly) and the CSV head sniff with atheris. Corpora start from
# seeds made by real clients (fuzz/seeds.py) and grow across runs in
# ~/.cache/duckpond/fuzz-corpus; crashes land in fuzz/artifacts/<target>/.
# Appends one line per target to fuzz/runs.tsv (date, commit, target,
# seconds, executions, result), which docs/FUZZING.md totals.
#
# Usage: .ci/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-120}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(remote_write_v1 remote_write_v2 arrow_ipc_stream multipart wal_segment log_record parquet_footer json_depth csv_sniff)
corpus=${FUZZ_CORPUS:-$HOME/.cache/duckpond/fuzz-corpus}
venv=${DUCKPOND_FUZZ_VENV:-$HOME/.cache/duckpond/fuzz-venv}
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$HOME/.cache/duckpond/fuzz-target}

command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --quiet
if ! "$venv/bin/python" -c 'import atheris, duckdb, pyarrow, urllib3, grpc_tools' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check duckdb==1.5.5 pyarrow urllib3 grpcio-tools atheris
fi
# Seeds for every target (again when a target is new to this corpus).
for t in "${targets[@]}"; do
  if [ "$t" != csv_sniff ] && [ ! -d "$corpus/$t" ]; then
    "$venv/bin/python" fuzz/seeds.py "$corpus"
    break
  fi
done
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
for t in "${targets[@]}"; do
  mkdir -p "$corpus/$t" "fuzz/artifacts/$t"
  log=$(mktemp)
  status=clean
  started=$(date +%s)
  if [ "$t" = csv_sniff ]; then
    "$venv/bin/python" fuzz/python/csv_sniff.py -max_total_time="$seconds" -rss_limit_mb=4096 -print_final_stats=1 \
      -artifact_prefix="fuzz/artifacts/$t/" "$corpus/$t" >"$log" 2>&1 || status=crash
  else
    RUSTC_BOOTSTRAP=1 cargo fuzz build --fuzz-dir fuzz "$t" >/dev/null 2>&1 || { echo "building $t failed" >&2; exit 1; }
    started=$(date +%s)
    RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz "$t" "$corpus/$t" -- -max_total_time="$seconds" \
      -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1 || status=crash
  fi
  # The time it really ran (a crash stops it early).
  ran=$(( $(date +%s) - started ))
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%F)" "$commit" "$t" "$ran" "${execs:-?}" "$status" >> fuzz/runs.tsv
  echo "$t: $status after ${ran}s (${execs:-?} runs)"
  if [ "$status" != clean ]; then
    tail -40 "$log"
  fi
  rm -f "$log"
done
