#!/usr/bin/env bash
# Install Debian's headless-capable Chromium and its WebDriver (the browser tests drive them) when
# missing; no browser is downloaded from anywhere but Debian's archive. Idempotent; needs root.
# Usage: scripts/install-chromium.sh
set -euo pipefail

if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
  exit 0
fi
if ((EUID != 0)); then
  echo "install-chromium: run as root (or: sudo apt-get install chromium chromium-driver)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends chromium chromium-driver
/usr/bin/chromium --version
/usr/bin/chromedriver --version
