#!/usr/bin/env bash
# The whole test suite, with set-up. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The browser tests drive Debian's chromium (tests/browser skip, saying why, when it is missing).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo -n"
    echo "installing chromium for the browser tests (apt-get) ..." >&2
    { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium; } \
        >/dev/null 2>&1 || echo "could not install chromium: the browser tests will skip" >&2
fi
.venv/bin/ruff check engine workbench tests
.venv/bin/ruff format --check -q engine workbench tests
.venv/bin/mypy  # the types of engine/ and workbench/ (settings in pyproject.toml)
exec .venv/bin/python -m pytest -q "$@"
