#!/usr/bin/env bash
# Compile the lock files in requirements/ from pyproject.toml: every transitive dependency pinned, with
# its hashes, for Python 3.11 on Linux. uv (the version below) is installed on first use into
# ~/.cache/trialroute. Pins already in the files are kept unless pyproject.toml rules them out, so
# re-running changes nothing; to move them on: scripts/lock.sh --upgrade (or --upgrade-package NAME).
#   runtime.txt  what a service needs in production (the image installs exactly this)
#   local.txt    runtime + what `make run`'s local stack adds (extra `local`)
#   dev.txt      local + tests and linters (extra `dev`); scripts/bootstrap.sh installs it
#   build.txt    the build backend (pyproject's [build-system]), to build the project without the index
# The three nest: runtime and local are compiled within dev.txt's pins, so a package has one version.
# Usage: scripts/lock.sh [uv pip compile options]      Env: PYTHON (3.11 or later, default python3)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

UV_VERSION=0.13.10
uv_home="${XDG_CACHE_HOME:-${HOME}/.cache}/trialroute/uv-${UV_VERSION}"
if [[ ! -x $uv_home/bin/uv ]]; then
  rm -rf "$uv_home"
  "${PYTHON:-python3}" -m venv "$uv_home"
  "$uv_home/bin/python" -m pip install -q --disable-pip-version-check "uv==${UV_VERSION}"
fi

compile() {  # output file, then inputs and options
  local out=$1
  shift
  "$uv_home/bin/uv" pip compile --quiet --generate-hashes --python-version 3.11 --python-platform linux \
    --custom-compile-command scripts/lock.sh --output-file "$out" "$@"
}

compile requirements/dev.txt pyproject.toml --extra dev "$@"
compile requirements/local.txt pyproject.toml --extra local --constraint requirements/dev.txt "$@"
compile requirements/runtime.txt pyproject.toml --constraint requirements/dev.txt "$@"
"$uv_home/bin/python" -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
  | compile requirements/build.txt - "$@"
