#!/usr/bin/env python3
"""Turns benchmark results into the ratio tables of docs/BENCHMARKS.md.

Usage:
  .ci/bench-report.py wal [CRITERION_DIR]
      criterion's WAL estimates as the WAL table (printed).
  .ci/bench-report.py summary RESULTS.jsonl BENCHMARKS.md COMMAND
      the headline table of `make bench`: the end-to-end benches' figures
      (one JSON line each, written by benches/support's `record`) plus the
      WAL's criterion estimates, each next to its same-run reference and
      the original description's claim, with the machine, the date and the
      command; written between the `bench:summary` markers of BENCHMARKS.md.

CRITERION_DIR defaults to $CARGO_TARGET_DIR/criterion.
"""
import datetime
import json
import os
import platform
import subprocess
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
        if key.startswith("wal_batch/") or key.startswith("wal_pipelined/"):
            n = r["elements"] or 1
            print(f"\n`{key}`: {n * 1e9 / r['ns']:,.0f} records/s acknowledged (fsync mode)")


def criterion_dir():
    return os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "criterion")


def wal_figures(est):
    """The WAL's two targets of issue #3 as summary figures."""
    out = []
    big, small = est.get("raw_disk/16777216"), est.get("raw_disk/100")
    per_record = "pwrite + fdatasync per 100 B record (a log without group commit)"

    def add(key, ref, fid, what, unit, value_of, reference, reference_value):
        r = est.get(key)
        if r and ref:
            out.append({"bench": "wal", "id": fid, "what": what, "value": value_of(r), "unit": unit,
                        "higher_is_better": True, "reference": reference, "reference_value": reference_value,
                        "claim": None})

    records_s = lambda r: (r["elements"] or 1) * 1e9 / r["ns"]
    add("wal/1048576/64", big, "wal_1MiB_64", "WAL appends of 1 MiB records, 64 appenders, fsync mode", "MB/s", mb_s,
        "pwrite + fdatasync of 16 MiB chunks on the same disk", big and mb_s(big))
    add("wal_batch/100B_x100/64", small, "wal_100B_batched_64",
        "WAL records of 100 B acknowledged, 64 appenders x 100 records per append, fsync mode", "records/s",
        records_s, per_record, small and 1e9 / small["ns"])
    add("wal_pipelined/100B_window64/64", small, "wal_100B_pipelined_64",
        "WAL records of 100 B acknowledged, 64 appenders, one record per append, up to 64 appends in flight each, "
        "fsync mode", "records/s", records_s, per_record, small and 1e9 / small["ns"])
    add("wal/100/64", small, "wal_100B_64", "WAL appends of 100 B, 64 appenders, one record per append", "records/s",
        lambda r: 1e9 / r["ns"], per_record, small and 1e9 / small["ns"])
    return out


def fmt(v):
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 1:
        return f"{v:,.2f}"
    return f"{v:.3f}"


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    return f"{os.cpu_count()} vCPU {cpu}, {mem_gib:.0f} GiB RAM, {platform.system()} {platform.release()}, commit {commit}"


def summary(results_path, doc_path, command):
    figures = [json.loads(l) for l in open(results_path) if l.strip()]
    figures = wal_figures(load(criterion_dir())) + figures
    lines = [
        f"Run: `{command}` on {datetime.date.today().isoformat()}, {machine()}.",
        "Ratio: how many times better than the reference measured in the same run (throughput: ours / reference;",
        "latency and size: reference / ours), so 1.00x is par and above 1 is better. Claim: the original",
        "description's figure in the same unit, and how far this run is from it the same way.",
        "",
        "| bench | figure | DuckPond | reference (same run) | ratio | original claim |",
        "|---|---|---:|---|---:|---:|",
    ]
    for f in figures:
        v, ref = f["value"], f["reference_value"]
        better = f["higher_is_better"]
        ratio = (v / ref if better else ref / v) if v and ref else float("nan")
        claim = f.get("claim")
        if claim:
            beats = v / claim if better else claim / v
            claim_cell = f"{'>=' if better else '<='} {fmt(claim)} {f['unit']}: {beats:.1f}x"
        else:
            claim_cell = "-"
        lines.append(f"| {f['bench']} | {f['what']} | {fmt(v)} {f['unit']} | {f['reference']}: {fmt(ref)} {f['unit']} "
                     f"| {ratio:.2f}x | {claim_cell} |")
    table = "\n".join(lines)
    doc = open(doc_path).read()
    begin, end = "<!-- bench:summary:begin -->", "<!-- bench:summary:end -->"
    if begin not in doc or end not in doc:
        sys.exit(f"{doc_path} has no {begin} ... {end} markers")
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    with open(doc_path, "w") as out:
        out.write(f"{head}{begin}\n{table}\n{end}{tail}")
    print(table)


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else "wal"
    if what == "summary":
        summary(sys.argv[2], sys.argv[3], sys.argv[4])
        return
    root = sys.argv[2] if len(sys.argv) > 2 else criterion_dir()
    wal(load(root))


if __name__ == "__main__":
    main()
