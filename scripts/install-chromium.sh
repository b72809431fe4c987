#!/usr/bin/env bash
# Install Debian's headless-capable Chromium (the browser tests drive it with Playwright, whose own browser
# download is never used) when missing; nothing is downloaded from anywhere but Debian's archive.
# Idempotent; needs root.
# Usage: scripts/install-chromium.sh
set -euo pipefail

if [[ -x /usr/bin/chromium ]]; then
  exit 0
fi
if ((EUID != 0)); then
  echo "install-chromium: run as root (or: sudo apt-get install chromium)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends chromium
/usr/bin/chromium --version
