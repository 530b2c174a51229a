"""Seed corpora for the fuzz targets, made by real clients (docs/FUZZING.md).

- remote_write_v1: request bodies a real Prometheus (Debian's 2.42) sends,
  captured by a loopback HTTP server it remote-writes to while scraping
  itself for a few seconds.
- remote_write_v2: 2.0 requests encoded by Python's protobuf runtime from
  the official .proto (schema/proto), compiled with grpcio-tools' protoc:
  an encoder independent of DuckPond's.
- arrow_ipc_stream: streams written by pyarrow (many types) and by DuckDB's
  own Arrow export; the first byte of each file is the target's chunk size.
- multipart: form bodies as urllib3 encodes them, with the target's boundary.
- log_record: records of every kind, framed as the target reads them.
- wal_segment: left to the target (the log's only writer is DuckPond; the
  fuzzer finds the frame layout from the magic bytes quickly), plus a few
  hand-cut segment shapes.

Usage: python fuzz/seeds.py OUT_DIR   (needs pyarrow, duckdb, urllib3,
grpcio-tools, protobuf and the `prometheus` binary).
"""
import http.server
import io
import os
import pathlib
import struct
import subprocess
import sys
import tempfile
import threading
import time

import duckdb
import pyarrow as pa

OUT = pathlib.Path(sys.argv[1])
ROOT = pathlib.Path(__file__).resolve().parent.parent


def put(target, name, data):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def prometheus_v1():
    bodies = []

    class Capture(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            n = int(self.headers.get("Content-Length", 0))
            bodies.append(self.rfile.read(n))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Capture)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as d:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        cfg = pathlib.Path(d) / "p.yml"
        cfg.write_text(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: self\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{port}']\nremote_write:\n  - url: http://127.0.0.1:{srv.server_port}/w\n"
            "    send_exemplars: true\n    metadata_config:\n      send_interval: 1s\n"
            "    queue_config:\n      batch_send_deadline: 1s\n      max_samples_per_send: 200\n"
        )
        p = subprocess.Popen(
            ["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={d}/data", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 40
        while len(bodies) < 12 and time.time() < deadline:
            time.sleep(0.5)
        p.terminate()
        p.wait()
    srv.shutdown()
    for i, b in enumerate(bodies[:40]):
        put("remote_write_v1", f"prometheus-{i}", b)
    return len(bodies)


def v2_requests():
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as d:
        proto_root = ROOT / "schema" / "proto"
        files = [str(p.relative_to(proto_root)) for p in proto_root.rglob("*.proto")]
        rc = protoc.main(["protoc", f"-I{proto_root}", f"--python_out={d}"] + files)
        assert rc == 0, "protoc failed"
        # By path: the package is called `io`, like the standard module.
        import importlib.util

        spec = importlib.util.spec_from_file_location(
            "rw2_types_pb2", pathlib.Path(d) / "io" / "prometheus" / "write" / "v2" / "types_pb2.py"
        )
        v2 = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(v2)
        reqs = []
        for n_series in [1, 3, 50]:
            r = v2.Request()
            r.symbols.extend(["", "__name__", "up", "job", "api", "instance", "a:9100", "help text", "unit"])
            for k in range(n_series):
                ts = r.timeseries.add()
                ts.labels_refs.extend([1, 2, 3, 4, 5, 6])
                s = ts.samples.add()
                s.value = float(k) + 0.5
                s.timestamp = 1_700_000_000_000 + k
                ts.metadata.type = 1
                ts.metadata.help_ref = 7
                ts.metadata.unit_ref = 8
                if k % 2:
                    h = ts.histograms.add()
                    h.count_int = 5
                    h.sum = 2.5
                    h.schema = 3
                    h.zero_threshold = 1e-128
                    h.zero_count_int = 1
                    sp = h.positive_spans.add()
                    sp.offset = 0
                    sp.length = 2
                    h.positive_deltas.extend([1, 2])
                    h.timestamp = 1_700_000_000_000 + k
                    e = ts.exemplars.add()
                    e.value = 1.0
                    e.timestamp = 1_700_000_000_000
                    e.labels_refs.extend([3, 4])
            reqs.append(r.SerializeToString())
        return reqs


def snappy_block(raw):
    """Snappy block format, literal-only: valid input the decoder must
    accept (the fuzzer mutates from there)."""
    out = bytearray()
    n = len(raw)
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            break
    i = 0
    while i < len(raw):
        chunk = raw[i : i + 60]
        out.append((len(chunk) - 1) << 2)
        out.extend(chunk)
        i += len(chunk)
    return bytes(out)


def arrow_streams():
    tables = {
        "ints": pa.table({"a": pa.array([1, None, -5], pa.int64()), "u": pa.array([1, 2, 3], pa.uint64())}),
        "strings": pa.table({"s": ["a", None, "é"], "v": pa.array(["x", "y", None], pa.string_view())}),
        "nested": pa.table({"l": pa.array([[1, 2], None], pa.list_(pa.int32())), "st": pa.array([{"a": 1}, None])}),
        "temporal": pa.table(
            {
                "t": pa.array([0, 1], pa.timestamp("ns", "UTC")),
                "d": pa.array([1, 2], pa.date64()),
                "i": pa.array([pa.MonthDayNano([1, 2, 3_000_000])] * 2, pa.month_day_nano_interval()),
                "du": pa.array([5, 6], pa.duration("ms")),
            }
        ),
        "decimal": pa.table({"d": pa.array([1, 2], pa.decimal256(40, 2))}),
        "dict": pa.table({"d": pa.array(["a", "b", "a"]).dictionary_encode()}),
        "map": pa.table({"m": pa.array([[("k", 1)]], pa.map_(pa.string(), pa.int32()))}),
        "null": pa.table({"n": pa.nulls(2), "x": [1, 2]}),
        "f16": pa.table({"h": pa.array([0.5], pa.float16())}),
    }
    c = duckdb.connect()
    r = c.sql(
        "SELECT 1 AS id, INTERVAL 90 MINUTE AS d, 18446744073709551615::HUGEINT AS h, "
        "'a5c2b7e4-1234-4abc-8def-0123456789ab'::UUID AS u, [1,2]::INT[2] AS a, "
        "union_value(n := 1)::UNION(n INT, s VARCHAR) AS un, 'x'::ENUM('x','y') AS e"
    ).arrow()
    tables["duckdb"] = r.read_all() if hasattr(r, "read_all") else r
    for name, t in tables.items():
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, t.schema) as w:
            w.write_table(t)
            w.write_table(t)
        for chunk in (0, 3, 255):
            put("arrow_ipc_stream", f"{name}-{chunk}", bytes([chunk]) + sink.getvalue())


def parquet_footers_and_json():
    import json
    import pyarrow.parquet as pq

    for name, t in {
        "flat": pa.table({"a": [1, 2], "s": ["x", None]}),
        "nested": pa.table({"l": pa.array([[1, 2], None], pa.list_(pa.int32())), "st": pa.array([{"a": {"b": 1}}, None])}),
        "map": pa.table({"m": pa.array([[("k", 1)]], pa.map_(pa.string(), pa.int32()))}),
    }.items():
        sink = io.BytesIO()
        pq.write_table(t, sink)
        data = sink.getvalue()
        footer_len = int.from_bytes(data[-8:-4], "little")
        put("parquet_footer", f"{name}-footer", data[-8 - footer_len : -8])
        put("parquet_footer", f"{name}-file", data)
    bodies = {
        "ndjson": b'{"a": 1, "b": {"c": [1, 2]}}\n{"a": "}{]["}\n',
        "document": json.dumps([{"a": {"b": [1, {"c": 2}]}}, {"d": "x\\"}]).encode(),
        "deep": b'{"v": ' + b'{"a":' * 40 + b"1" + b"}" * 40 + b"}\n",
    }
    for name, body in bodies.items():
        put("json_depth", name, bytes([32, len(body) // 2 % 256]) + body)


def multipart():
    from urllib3 import encode_multipart_formdata

    forms = [
        {"file": ("a.csv", b"id,name\n1,ann\n", "text/csv")},
        {"other": "x", "file": ("data.parquet", b"PAR1\x00\x00PAR1", "application/vnd.apache.parquet")},
        {"file": ("rows.ndjson", b'{"a":1}\n{"a":2}\n')},
    ]
    for i, f in enumerate(forms):
        body, _ = encode_multipart_formdata(f, boundary="duckpondfuzzboundary")
        for chunk in (0, 7):
            put("multipart", f"form-{i}-{chunk}", bytes([chunk]) + body)


def log_records():
    def rows(table, ipc):
        name = table.encode()
        return struct.pack("<H", 1) + struct.pack("<H", len(name)) + name + ipc

    t = pa.table({"x": [1, 2]})
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, t.schema) as w:
        w.write_table(t)
    put("log_record", "rows", rows("events", sink.getvalue()))
    put("log_record", "staged", struct.pack("<H", 2) + b'{"table":"t","file":"0123456789abcdef0123456789abcdef.parquet","rows":1,"bytes":10}')
    put("log_record", "drop", struct.pack("<H", 3) + b'{"op":"drop","table":"t"}')
    put("log_record", "view", struct.pack("<H", 3) + b'{"op":"view","table":"v","sql":"SELECT 1"}')
    put("log_record", "create", struct.pack("<H", 3) + b'{"op":"create","table":"t","schema_ipc":"ffffffff"}')


def wal_segments():
    # The target builds valid segments from a description (see
    # fuzz_targets/wal_segment.rs): mode byte, frames, damage.
    put("wal_segment", "three-frames", bytes([0, 3, 1, 0, 4]) + b"abcd" + bytes([2, 0, 0, 3, 0, 2]) + b"xy" + bytes([0, 0, 0, 0]))
    put("wal_segment", "torn-tail", bytes([0, 2, 1, 0, 8]) + b"12345678" + bytes([1, 0, 8]) + b"abcdefgh" + bytes([60, 0, 0, 0]))
    put("wal_segment", "flipped", bytes([0, 2, 1, 0, 3]) + b"abc" + bytes([1, 0, 3]) + b"def" + bytes([0, 0, 40, 0]))
    put("wal_segment", "raw-zeros", bytes([1]) + b"\x00" * 64)


if __name__ == "__main__":
    n = prometheus_v1()
    print(f"remote_write_v1: {n} bodies captured from Prometheus")
    for i, raw in enumerate(v2_requests()):
        put("remote_write_v2", f"protobuf-{i}", snappy_block(raw))
    arrow_streams()
    parquet_footers_and_json()
    multipart()
    log_records()
    wal_segments()
    for t in sorted(p.name for p in OUT.iterdir()):
        print(t, len(list((OUT / t).iterdir())), "seeds")
