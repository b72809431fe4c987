#!/usr/bin/env bash
# Make Prometheus's promtool available for the alert rule tests (tests/unit/deploy/test_alerts.py):
# promtool on PATH if there is one, else the one from Debian's `prometheus` package, unpacked into
# ~/.cache/trialroute/prometheus (the package is only downloaded and unpacked, never installed, so no
# Prometheus server is set up or started). Nothing comes from anywhere but Debian's archive.
# Prints promtool's path. Idempotent.
# Usage: scripts/install-promtool.sh
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
  command -v promtool
  exit 0
fi
dest="${XDG_CACHE_HOME:-${HOME}/.cache}/trialroute/prometheus"
if [[ -x $dest/usr/bin/promtool ]]; then
  echo "$dest/usr/bin/promtool"
  exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
if ! apt-get download prometheus >/dev/null 2>&1; then
  if ((EUID != 0)); then
    echo "install-promtool: run as root (apt-get update), or install promtool (Debian: prometheus)" >&2
    exit 1
  fi
  apt-get update >/dev/null
  apt-get download prometheus >/dev/null
fi
mkdir -p "$dest"
dpkg-deb -x prometheus_*.deb "$work/unpacked"
mkdir -p "$dest/usr/bin"
cp "$work/unpacked/usr/bin/promtool" "$dest/usr/bin/promtool"
"$dest/usr/bin/promtool" --version >&2
echo "$dest/usr/bin/promtool"
