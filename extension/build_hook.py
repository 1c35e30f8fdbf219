"""The build function hatch-jupyter-builder calls when a wheel (or an editable install) is built.

The labextension is committed prebuilt in `extension/labextension/`, so installing needs no
Node.js: this builds it (`npm install`, `npm run build`) only when it is missing, or when
`SYMPHONY_BUILD_LABEXTENSION=1` asks for a rebuild.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

BUILT = Path(__file__).parent / "labextension" / "package.json"


def build(target_name: str, version: str, **kwargs: Any) -> None:
    if BUILT.exists() and os.environ.get("SYMPHONY_BUILD_LABEXTENSION") != "1":
        return
    from hatch_jupyter_builder import npm_builder

    npm_builder(target_name, version, **kwargs)
