#!/usr/bin/env bash
# Create .venv with Python 3.11 if missing, and (re)install the project with its dev extras whenever
# pyproject.toml differs from the one last installed (a checksum stamp in .venv).
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

stamp=.venv/.pyproject.sha1
want="$(sha1sum pyproject.toml | cut -d' ' -f1)"
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "bootstrap.sh: installing the project and its dev dependencies into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]' \
    || { echo "bootstrap.sh: FAILED: pip install -e '.[dev]'" >&2; exit 1; }
  echo "$want" >"$stamp"
fi
