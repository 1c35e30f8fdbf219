"""The engine's errors now live in `engine.wire.errors`; this old import path re-exports them
for modules not yet moved to the new one."""

from engine.wire.errors import *  # noqa: F403
