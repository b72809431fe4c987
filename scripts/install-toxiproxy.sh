#!/usr/bin/env bash
# Make Toxiproxy (Shopify's TCP fault proxy) available for the network fault suite
# (tests/reliability/test_network_faults.py): built once per machine and version with Go from the Go
# module proxy into ~/.cache/trialroute/toxiproxy-<version>/ (go checks every module against go.sum and
# the checksum database, so what is built is what the version's tag holds). A build already there is
# reused; two checkouts installing at once build once (flock).
# Prints the server binary's path. Idempotent.
# Env: TRIALROUTE_TOXIPROXY_VERSION (v2.5.0), TRIALROUTE_CACHE_DIR (~/.cache/trialroute),
#      GO (the go command; default: go on PATH, else /usr/local/go/bin/go).
# Usage: scripts/install-toxiproxy.sh
set -euo pipefail

VERSION="${TRIALROUTE_TOXIPROXY_VERSION:-v2.5.0}"
CACHE="${TRIALROUTE_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/trialroute}"
DEST="$CACHE/toxiproxy-$VERSION"
BIN="$DEST/toxiproxy-server"

if [[ -x $BIN ]]; then
  echo "$BIN"
  exit 0
fi
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
[[ -x $GO ]] || { echo "install-toxiproxy: Go is needed to build Toxiproxy $VERSION (set GO=/path/to/go)" >&2; exit 1; }
mkdir -p "$CACHE"
(
  flock 9
  [[ -x $BIN ]] && exit 0
  echo "install-toxiproxy: building Toxiproxy $VERSION into $DEST (once per machine)" >&2
  work="$(mktemp -d)"
  trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
  # A private module cache and GOPATH: nothing of the user's Go set-up is read or changed.
  GOBIN="$work/bin" GOPATH="$work/gopath" GOMODCACHE="$work/gopath/pkg/mod" GOCACHE="$work/cache" \
    GOTOOLCHAIN=local \
    "$GO" install "github.com/Shopify/toxiproxy/v2/cmd/server@$VERSION" >&2
  mkdir -p "$DEST"
  mv "$work/bin/server" "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
) 9>"$CACHE/.toxiproxy.lock"
"$BIN" -version >&2 || true
echo "$BIN"
