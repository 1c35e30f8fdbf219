"""The notebook side of Symphony Workbench: the LIP client API, `%%lip` magics, widgets.

`%load_ext workbench` registers the magics; `await workbench.connect()` gives this kernel's
connection to the shared engine (starting one when none runs).
"""

from __future__ import annotations

from typing import Any

from workbench.tools import tool


def load_ipython_extension(ip: Any) -> None:
    from workbench.magics import load_ipython_extension

    load_ipython_extension(ip)


def unload_ipython_extension(ip: Any) -> None:
    from workbench.magics import unload_ipython_extension

    unload_ipython_extension(ip)


__all__ = ["connect", "tool"]


async def connect() -> Any:
    """This kernel's `Client` of the shared engine (the one `%%lip` cells use)."""
    from workbench.magics import connect

    return await connect()
