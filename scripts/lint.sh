#!/usr/bin/env bash
# The linters, the one list of them: ruff (rules and formatting) and mypy (strict, over shared/ and
# services/, as configured in pyproject.toml). `make lint` runs this, and scripts/test.sh before any test.
# Exits non-zero at the first that fails.
# Usage: scripts/lint.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
