#!/usr/bin/env bash
# The main job: JupyterLab on the gallery. The workbench's server extension starts the shared
# engine (smollm2-135m-instruct, a real chat model; $SYMPHONY_MODEL or
# --SymphonyWorkbench.model=NAME|PATH chooses another, `tiny` the demo model) with the server and stops it with the server; the sidebar (the
# bar-chart icon on the left) shows its status, processes and KV files. Extra arguments go to
# `jupyter lab` (say --port=9999, --no-browser, --SymphonyWorkbench.model=PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
args=(--ServerApp.port_retries=50)
[ "$(id -u)" = 0 ] && args+=(--allow-root)  # containers often run as root
if [ -z "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] && [ "$(uname)" != Darwin ]; then
    args+=(--no-browser)  # nowhere to open one: open the printed URL yourself
fi
exec .venv/bin/jupyter lab gallery/ "${args[@]}" "$@"
