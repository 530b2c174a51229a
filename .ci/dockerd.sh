#!/usr/bin/env bash
# Installs (if missing) and starts a Docker engine for the docker notebook
# backend's tests: no bridge and no iptables, so containers can only use the
# host's loopback (host networking) or no network at all.
set -euo pipefail
if ! command -v dockerd >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends docker.io >/dev/null
fi
if docker info >/dev/null 2>&1; then
  echo "docker engine: running"
  exit 0
fi
log=${DUCKPOND_DOCKERD_LOG:-/var/log/duckpond-dockerd.log}
nohup dockerd --iptables=false --ip6tables=false --bridge=none >"$log" 2>&1 &
for _ in $(seq 1 150); do
  docker info >/dev/null 2>&1 && { echo "docker engine: started (log $log)"; exit 0; }
  sleep 0.2
done
echo "dockerd did not start; last lines of $log:" >&2
tail -20 "$log" >&2
exit 1
