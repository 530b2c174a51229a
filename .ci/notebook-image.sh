#!/usr/bin/env bash
# Builds the Docker image of the `docker` notebook backend locally, with no
# registry: a minimal Debian root (debootstrap), a venv at /opt/nb with the
# same pinned packages as .ci/notebook-env.sh installed from a host-side
# wheelhouse, imported with `docker import`.
#
#   .ci/notebook-image.sh [IMAGE]      (default duckpond-notebook:latest)
#
# Needs root, debootstrap and a running Docker engine. Skips the build when
# the image exists and carries this script's package list (label-free images
# from `docker import` are told apart by a tag derived from that list).
set -euo pipefail
image=${1:-duckpond-notebook:latest}
pkgs=(marimo==0.25.2 duckdb==1.5.5 duckdb-extension-ducklake==1.5.5 duckdb-extension-sqlite-scanner==1.5.5
      polars==2.1.0 pyarrow==26.0.1 sqlglot==30.30.0)
stamp=$(printf '%s\n' "${pkgs[@]}" | sha256sum | cut -c1-12)
repo=${image%%:*}
if docker image inspect "$repo:pkgs-$stamp" >/dev/null 2>&1; then
  docker tag "$repo:pkgs-$stamp" "$image"
  echo "notebook image: $image (up to date)"
  exit 0
fi
command -v debootstrap >/dev/null || {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
}
# The machine's own Debian mirror (deb822 sources, or the classic list).
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
if [ -z "$mirror" ]; then
  mirror=$(awk '$1 == "deb" {print ($2 ~ /^\[/ ? $3 : $2); exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
if [ -z "$mirror" ]; then
  echo "no Debian mirror found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list" >&2
  exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log"; exit 1; }
chroot "$root" python3 -m venv /opt/nb
# pip inside the chroot cannot verify this network's TLS: fetch on the host.
python3 -m pip download --quiet --disable-pip-version-check --only-binary=:all: --python-version 3.11 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any \
  -d "$root/tmp/wh" "${pkgs[@]}"
chroot "$root" /opt/nb/bin/pip install --quiet --disable-pip-version-check --no-index --find-links /tmp/wh "${pkgs[@]}"
rm -rf "$root/tmp/wh" "$root/var/cache/apt" "$root/var/lib/apt/lists"
# The session runs as an unprivileged user with a writable home on tmpfs.
chroot "$root" useradd --uid 1000 --home-dir /home/nb --create-home nb
tar -C "$root" -c . | docker import - "$repo:pkgs-$stamp" >/dev/null
docker tag "$repo:pkgs-$stamp" "$image"
echo "notebook image: $image"
