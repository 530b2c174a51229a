#!/usr/bin/env python3
"""Turns criterion's estimates into the ratio tables of docs/BENCHMARKS.md.

Usage: .ci/bench-report.py wal [CRITERION_DIR]

Reads <CRITERION_DIR>/<group>/.../new/{estimates,benchmark}.json (criterion's
own output; CRITERION_DIR defaults to $CARGO_TARGET_DIR/criterion) and prints
a Markdown table: each figure next to its same-run reference and the ratio.
"""
import json
import os
import sys


def load(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        if os.path.basename(dirpath) != "new" or "estimates.json" not in files:
            continue
        with open(os.path.join(dirpath, "benchmark.json")) as f:
            bench = json.load(f)
        with open(os.path.join(dirpath, "estimates.json")) as f:
            est = json.load(f)
        ns = est["mean"]["point_estimate"]
        tp = bench.get("throughput") or {}
        out[bench["full_id"]] = {"ns": ns, "bytes": tp.get("Bytes"), "elements": tp.get("Elements")}
    return out


def mb_s(r):
    return r["bytes"] / (r["ns"] / 1e9) / 1e6


def wal(est):
    print("| record | appenders | WAL appends/s | WAL MB/s | raw pwrite+fdatasync MB/s (same record size) | ratio | raw MB/s, 16 MiB chunks | ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    big = est.get("raw_disk/16777216")
    for size in (100, 4096, 1048576):
        raw = est.get(f"raw_disk/{size}")
        for appenders in (1, 8, 64):
            r = est.get(f"wal/{size}/{appenders}")
            if not r or not raw:
                continue
            rate = 1e9 / r["ns"]
            cells = [f"{size} B", str(appenders), f"{rate:,.0f}", f"{mb_s(r):,.1f}", f"{mb_s(raw):,.1f}",
                     f"{mb_s(r) / mb_s(raw):.2f}x"]
            cells += [f"{mb_s(big):,.1f}", f"{mb_s(r) / mb_s(big):.2f}x"] if big else ["-", "-"]
            print("| " + " | ".join(cells) + " |")
    for key, r in sorted(est.items()):
        if key.startswith("wal_batch/"):
            n = r["elements"] or 1
            print(f"\n`{key}`: {n * 1e9 / r['ns']:,.0f} records/s acknowledged (fsync mode)")


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else "wal"
    root = sys.argv[2] if len(sys.argv) > 2 else os.path.join(
        os.environ.get("CARGO_TARGET_DIR", "target"), "criterion")
    est = load(root)
    {"wal": wal}[what](est)


if __name__ == "__main__":
    main()
