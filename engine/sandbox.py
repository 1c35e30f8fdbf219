"""What code run beside the engine shares (`%%lip --server` workers, the tool host): a memory
cap and tracebacks that show the user's frames only. Pure Python: no torch."""

from __future__ import annotations

import os
import traceback


def limit_memory(megabytes: int) -> None:
    """Cap the address space at what is mapped now plus megabytes (Linux; elsewhere a no-op)."""
    try:
        import resource

        with open("/proc/self/statm") as f:
            cap = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE") + megabytes * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    except (ImportError, OSError, ValueError):
        pass


def cell_traceback(error: BaseException, filename: str) -> str:
    """The traceback of error showing only the frames of code compiled as filename."""
    tb = traceback.TracebackException.from_exception(error)
    seen: set[int] = set()
    todo = [tb]
    while todo:
        t = todo.pop()
        if id(t) not in seen:
            seen.add(id(t))
            t.stack = traceback.StackSummary.from_list(
                [f for f in t.stack if f.filename == filename]
            )
            todo += [c for c in (t.__cause__, t.__context__) if c is not None]
    return "".join(tb.format())
