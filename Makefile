# DuckPond: the two commands of the README are `make run` and `make test`.
#
# One optimisation profile (release) serves run, test and bench, and the
# target directory lives outside the clone, so DuckDB's ~19 minute C++ build
# happens once per machine, not once per clone or profile.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/duckpond/target
DUCKPOND_HOME ?= $(HOME)/.duckpond
# Extension binaries for the test suite (the daemon's own live in $(DUCKPOND_HOME)/extensions).
TEST_EXTENSION_DIR ?= $(HOME)/.cache/duckpond/extensions
TEST_POSTGRES_URL ?= postgresql://duckpond_test:duckpond_test@127.0.0.1:5432/duckpond_test
TEST_PYTHON ?= $(HOME)/.cache/duckpond/venv/bin/python
# marimo + duckdb venv of the process notebook backend, and the Docker image.
TEST_NOTEBOOK_ENV ?= $(HOME)/.cache/duckpond/notebook-venv
TEST_NOTEBOOK_IMAGE ?= duckpond-notebook:latest
BIN := $(CARGO_TARGET_DIR)/release/duckpond

BENCH_RESULTS := $(CARGO_TARGET_DIR)/bench-results.jsonl
SOAK_SECONDS ?= 600
# Everything a benchmark or the soak needs to find (extensions, venv, image).
BENCH_ENV := DUCKPOND_TEST_EXTENSION_DIR=$(TEST_EXTENSION_DIR) DUCKPOND_TEST_NOTEBOOK_ENV=$(TEST_NOTEBOOK_ENV) \
	DUCKPOND_TEST_NOTEBOOK_IMAGE=$(TEST_NOTEBOOK_IMAGE)

.PHONY: run test build ui extensions services fmt lint bench soak profile bench-wal bench-compactor bench-ingest \
	bench-prometheus bench-query bench-notebooks bench-security proto fuzz

## Set up everything and serve on 127.0.0.1:8000 with embedded defaults.
run: build
	.ci/fetch-duckdb-extensions.sh $(DUCKPOND_HOME)/extensions
	.ci/notebook-env.sh $(DUCKPOND_HOME)/notebook-env
	DUCKPOND_HOME=$(DUCKPOND_HOME) .ci/first-run.sh $(BIN)
	DUCKPOND_HOME=$(DUCKPOND_HOME) $(BIN) api serve

## Set up everything (packages, PostgreSQL, extensions) and run the whole suite
## (formatting and clippy first: a warning fails the suite).
test: services ui lint
	.ci/fetch-duckdb-extensions.sh $(TEST_EXTENSION_DIR)
	DUCKPOND_TEST_EXTENSION_DIR=$(TEST_EXTENSION_DIR) DUCKPOND_TEST_POSTGRES_URL=$(TEST_POSTGRES_URL) DUCKPOND_TEST_PYTHON=$(TEST_PYTHON) \
	DUCKPOND_TEST_NOTEBOOK_ENV=$(TEST_NOTEBOOK_ENV) DUCKPOND_TEST_NOTEBOOK_IMAGE=$(TEST_NOTEBOOK_IMAGE) \
	DUCKPOND_TEST_CHROMIUM=/usr/bin/chromium \
		cargo test --release --locked --workspace --all-targets --no-fail-fast

build: ui
	cargo build --release --locked

## The web UI: npm ci (pinned by ui/package-lock.json) and a bundle into
## ui/dist, which the Rust build embeds.
ui:
	.ci/ui-deps.sh
	cd ui && npm ci --no-audit --no-fund --loglevel=error && npm run build

extensions:
	.ci/fetch-duckdb-extensions.sh $(DUCKPOND_HOME)/extensions

## Install and start what the tests talk to (PostgreSQL, Python duckdb,
## the notebook venv, dockerd and the notebook image).
services:
	.ci/services.sh
	.ci/notebook-env.sh $(TEST_NOTEBOOK_ENV)
	.ci/dockerd.sh
	.ci/notebook-image.sh $(TEST_NOTEBOOK_IMAGE)
	.ci/ui-deps.sh --browser

## Every benchmark in release mode, each next to its reference measured in
## the same run; rewrites the summary table of docs/BENCHMARKS.md (about
## 15 minutes). The per-area bench-* targets below run one each.
bench: services build
	.ci/fetch-duckdb-extensions.sh $(TEST_EXTENSION_DIR)
	rm -f $(BENCH_RESULTS)
	$(BENCH_ENV) BENCH_RESULTS=$(BENCH_RESULTS) cargo bench --locked --bench wal --bench compactor --bench ingest \
		--bench prometheus --bench query --bench notebooks --bench security -- --noplot
	.ci/bench-report.py summary $(BENCH_RESULTS) docs/BENCHMARKS.md "make bench"

## Every fuzz target for FUZZ_SECONDS each (default 120; outside the test
## suite): the decoders of network and disk bytes (docs/FUZZING.md).
FUZZ_SECONDS ?= 120
fuzz: services
	.ci/fuzz.sh $(FUZZ_SECONDS)

## Mixed load for SOAK_SECONDS (default 600): remote write, Arrow IPC,
## uploads, 100 concurrent query clients and a notebook session; fails on
## any 5xx, lost or duplicated row, or unbounded growth.
soak: services build
	.ci/fetch-duckdb-extensions.sh $(TEST_EXTENSION_DIR)
	$(BENCH_ENV) SOAK_SECONDS=$(SOAK_SECONDS) SOAK_REPORT=$(CARGO_TARGET_DIR)/soak-report.json \
		cargo bench --locked --bench soak

## Flame graphs of the two slowest ingest paths (CSV upload, wide Arrow
## stream) into docs/profiles/ (perf record on the daemon, inferno).
profile: build
	.ci/fetch-duckdb-extensions.sh $(TEST_EXTENSION_DIR)
	$(BENCH_ENV) .ci/profile.sh docs/profiles

## WAL append throughput next to the raw disk (docs/BENCHMARKS.md).
bench-wal:
	cargo bench --locked --bench wal -- --noplot
	.ci/bench-report.py wal

## WAL -> compactor -> DuckLake rows/s and freshness (docs/BENCHMARKS.md).
bench-compactor:
	.ci/fetch-duckdb-extensions.sh $(TEST_EXTENSION_DIR)
	DUCKPOND_TEST_EXTENSION_DIR=$(TEST_EXTENSION_DIR) cargo bench --locked --bench compactor

## Uploads (CSV -> Parquet) and Arrow IPC streaming through the real daemon (docs/BENCHMARKS.md).
bench-ingest:
	.ci/fetch-duckdb-extensions.sh $(TEST_EXTENSION_DIR)
	DUCKPOND_TEST_EXTENSION_DIR=$(TEST_EXTENSION_DIR) cargo bench --locked --bench ingest

## Prometheus remote-write samples/s next to Prometheus's own receiver, and bytes/sample (docs/BENCHMARKS.md).
bench-prometheus:
	.ci/fetch-duckdb-extensions.sh $(TEST_EXTENSION_DIR)
	DUCKPOND_TEST_EXTENSION_DIR=$(TEST_EXTENSION_DIR) cargo bench --locked --bench prometheus

## SQL API latency (1M and 10M rows) and 100 concurrent clients next to in-process DuckDB (docs/BENCHMARKS.md).
bench-query:
	.ci/fetch-duckdb-extensions.sh $(TEST_EXTENSION_DIR)
	DUCKPOND_TEST_EXTENSION_DIR=$(TEST_EXTENSION_DIR) cargo bench --locked --bench query

bench-security:
	.ci/fetch-duckdb-extensions.sh $(TEST_EXTENSION_DIR)
	DUCKPOND_TEST_EXTENSION_DIR=$(TEST_EXTENSION_DIR) cargo bench --locked --bench security

## Notebook cold start to ready, per backend, next to bare marimo / docker run (docs/BENCHMARKS.md).
bench-notebooks: services
	.ci/fetch-duckdb-extensions.sh $(TEST_EXTENSION_DIR)
	DUCKPOND_TEST_EXTENSION_DIR=$(TEST_EXTENSION_DIR) DUCKPOND_TEST_NOTEBOOK_ENV=$(TEST_NOTEBOOK_ENV) \
	DUCKPOND_TEST_NOTEBOOK_IMAGE=$(TEST_NOTEBOOK_IMAGE) cargo bench --locked --bench notebooks

## Regenerate schema/src/generated/ from schema/proto/ (needs protoc).
proto:
	CARGO_TARGET_DIR=$(HOME)/.cache/duckpond/protogen-target cargo run --release --manifest-path schema/protogen/Cargo.toml -- $(CURDIR)/schema

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --release --locked --workspace --all-targets -- -D warnings
