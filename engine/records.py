"""The records now live in `engine.wire.records`; this old import path re-exports them for
modules not yet moved to the new one."""

from engine.wire.records import *  # noqa: F403
