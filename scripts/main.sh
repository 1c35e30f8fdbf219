#!/usr/bin/env bash
# The main job. Until the JupyterLab part lands: a short generation demo on the bundled model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/symphony demo "$@"
