#!/usr/bin/env bash
# Flame graphs of the daemon on the two slowest ingest paths: CSV upload
# (DuckDB's CSV -> Parquet conversion) and the wide (50-column) Arrow IPC
# stream. benches/ingest.rs attaches `perf record` to the daemon for each
# phase when BENCH_PROFILE_DIR is set; this script turns the recordings
# into SVG flame graphs and a text summary of the hottest functions.
#
# Usage: .ci/profile.sh OUT_DIR   (make profile; needs Debian's linux-perf)
set -euo pipefail
out=${1:?usage: profile.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
tools=${DUCKPOND_TOOLS:-$HOME/.cache/duckpond/tools}
if ! command -v perf >/dev/null; then
    sudo_if() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
    sudo_if apt-get install -y --no-install-recommends linux-perf
fi
# inferno (crates.io) folds perf's stacks and draws the SVG.
if [ ! -x "$tools/bin/inferno-flamegraph" ]; then
    CARGO_TARGET_DIR="$tools/target" cargo install --locked --root "$tools" inferno
fi
# The recordings stay in the target directory for `perf report -i`.
raw=${CARGO_TARGET_DIR:-$HOME/.cache/duckpond/target}/profiles
rm -rf "$raw" && mkdir -p "$raw"
BENCH_PROFILE_DIR=$raw cargo bench --locked --bench ingest
for data in "$raw"/*.perf.data; do
    name=$(basename "$data" .perf.data)
    case $name in csv_upload | arrow_wide) ;; *) continue ;; esac
    perf script -i "$data" 2>/dev/null | "$tools/bin/inferno-collapse-perf" > "$raw/$name.folded"
    "$tools/bin/inferno-flamegraph" --title "duckpond: $name" < "$raw/$name.folded" > "$out/$name.svg"
    # Self time per function, top 25: what bounds the path.
    perf report -i "$data" --stdio --no-children --sort dso,symbol -g none --percent-limit 0.5 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | head -40 | sed 's/ *$//' > "$out/$name.txt"
    echo "$out/$name.svg"
done
