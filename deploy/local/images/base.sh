#!/usr/bin/env bash
# The local base image: Debian bookworm (Python 3.11) made by debootstrap from the Debian mirror this
# machine's apt already uses, imported with `docker import`. For machines that reach no image registry;
# elsewhere the Dockerfiles' public defaults (python:3.11-slim-bookworm) are used. Built only when the
# tag is missing (cached), as root (debootstrap needs it).
# Usage: deploy/local/images/base.sh [TAG]   (default trialroute-base:bookworm)
# Env: TRIALROUTE_DEBIAN_MIRROR (default: the first .../debian URI in /etc/apt/sources.list*),
#      TRIALROUTE_CACHE_DIR (~/.cache/trialroute; the rootfs is built there and removed after import).
set -euo pipefail

TAG="${1:-trialroute-base:bookworm}"
CACHE="${TRIALROUTE_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/trialroute}"
# Python and venv for the project image; ca-certificates for apt over HTTPS in the stand-ins' builds.
PACKAGES=python3,python3-venv,python-is-python3,ca-certificates

fail() { echo "base.sh: FAILED: $1" >&2; exit 1; }

mirror() {  # the Debian archive apt is configured with here: deb822 `URIs:` or one-line `deb URI suite`
  if [[ -n ${TRIALROUTE_DEBIAN_MIRROR:-} ]]; then echo "$TRIALROUTE_DEBIAN_MIRROR"; return; fi
  {
    grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
    grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | awk '{print ($2 ~ /^\[/ ? $3 : $2)}'
  } | awk '/\/debian\/?$/ {print; exit}' || true  # (a missing sources file is no error)
}

if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "base.sh: $TAG exists (docker rmi $TAG to rebuild)"
  exit 0
fi
((EUID == 0)) || fail "debootstrap needs root"
command -v debootstrap >/dev/null || fail "debootstrap is not installed (apt-get install debootstrap)"
MIRROR="$(mirror)"
[[ -n $MIRROR ]] || fail "no Debian mirror found in /etc/apt/sources.list*: set TRIALROUTE_DEBIAN_MIRROR"

ROOTFS="$CACHE/rootfs-bookworm"
mkdir -p "$CACHE"
rm -rf "$ROOTFS"
trap 'rm -rf "$ROOTFS"' EXIT
echo "base.sh: debootstrap bookworm from $MIRROR (a few minutes; log $CACHE/debootstrap.log)"
debootstrap --variant=minbase --include="$PACKAGES" bookworm "$ROOTFS" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
  || { tail -n 30 "$CACHE/debootstrap.log" >&2; fail "debootstrap"; }
# Smaller and reproducible-ish: no package lists, caches or machine identity in the image.
chroot "$ROOTFS" apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/tmp/* "$ROOTFS"/var/log/*.log
: >"$ROOTFS/etc/machine-id"
tar -C "$ROOTFS" --numeric-owner -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["bash"]' \
  --message "debootstrap bookworm minbase + $PACKAGES" - "$TAG" >/dev/null
echo "base.sh: built $TAG ($(docker image inspect -f '{{.Size}}' "$TAG" | numfmt --to=iec))"
