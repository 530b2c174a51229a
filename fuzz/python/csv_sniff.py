"""The CSV head sniff, fuzzed with atheris: the head of an upload body as
DuckDB 1.5.5's sniffer (sniff_csv) and strict reader (read_csv) see it in
the conversion instance (same settings: no extension autoload, the file
inside an allowed directory). Only duckdb.Error is an acceptable failure;
any other exception, a hang or a crash is a finding.

Run by .ci/fuzz.sh (`make fuzz`) with the test venv plus atheris.
"""
import os
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    import duckdb

DIR = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
HEAD = os.path.join(DIR, "head.csv")
CONN = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
CONN.execute(f"SET allowed_directories = ['{DIR}/']; SET enable_external_access = false; SET lock_configuration = true")


def one(data: bytes):
    with open(HEAD, "wb") as f:
        f.write(data)
    for sql in (
        f"SELECT Delimiter, Quote, Escape, HasHeader, SkipRows, len(Columns) FROM sniff_csv('{HEAD}')",
        f"SELECT count(*) FROM read_csv('{HEAD}', strict_mode = true)",
        f"SELECT count(*) FROM read_csv('{HEAD}', encoding = 'latin-1', strict_mode = true)",
    ):
        try:
            CONN.execute(sql).fetchall()
        except duckdb.Error:
            pass


atheris.Setup(sys.argv, one)
atheris.Fuzz()
