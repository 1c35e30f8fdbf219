#!/usr/bin/env bash
# The whole test suite, with set-up. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check engine workbench tests
exec .venv/bin/python -m pytest -q "$@"
