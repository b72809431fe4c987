#!/usr/bin/env bash
# Create .venv with Python 3.11 if missing, and install into it whenever the lock files or pyproject.toml
# differ from those last installed (a checksum stamp in .venv): first every dependency, exactly as locked
# and hash-checked (requirements/dev.txt: runtime, the local stack's and the tests' and linters'), then
# the project itself, editable, with no dependency of its own resolution and no build from the index.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

is_py311() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; }

if ! { [[ -x .venv/bin/python ]] && is_py311 .venv/bin/python; }; then
  py=""  # $PYTHON, else python3.11 on PATH, else pyenv's (CI's PATH may lack the pyenv shims)
  for c in ${PYTHON:-} python3.11 "${PYENV_ROOT:-${HOME:-}/.pyenv}"/versions/3.11*/bin/python3.11; do
    if is_py311 "$c"; then py="$c"; break; fi
  done
  [[ -n $py ]] || { echo "bootstrap.sh: FAILED: no Python 3.11 found (set PYTHON)" >&2; exit 1; }
  rm -rf .venv
  "$py" -m venv .venv
fi

lock=(requirements/build.txt requirements/dev.txt)
stamp=.venv/.lock.sha1
want="$(cat "${lock[@]}" pyproject.toml | sha1sum | cut -d' ' -f1)"
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "bootstrap.sh: installing the locked dependencies (${lock[*]}) and the project into .venv"
  pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
  "${pip[@]}" --require-hashes --only-binary=:all: -r requirements/build.txt -r requirements/dev.txt \
    || { echo "bootstrap.sh: FAILED: pip install --require-hashes ${lock[*]}" >&2; exit 1; }
  "${pip[@]}" --no-deps --no-build-isolation -e . \
    || { echo "bootstrap.sh: FAILED: pip install --no-deps -e ." >&2; exit 1; }
  echo "$want" >"$stamp"
fi
