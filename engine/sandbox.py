"""What code run beside the engine shares (`%%lip --server` workers, tool hosts): a sandbox, a
memory cap and tracebacks that show the user's frames only. Pure Python: no torch.

The sandbox is what Linux gives without root: new user and PID namespaces (`unshare`). Inside,
the engine's process does not exist (it cannot be signalled, traced or named by pid), and when
the program ends, the kernel ends everything it started, `setsid` children included. A small
`sh` is the namespace's first process (its init), so the program itself keeps ordinary signal
handling, and `sh` passes on how it ended (128 + the signal's number when killed). Where
namespaces are not allowed (some distributions forbid them to unprivileged users), the program
runs in a process group of its own, as before, and `sandboxed()` says so.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import traceback
from collections.abc import Sequence

UNSHARE = ("unshare", "--user", "--pid", "--fork", "--kill-child", "--")
INIT = ("sh", "-c", '"$0" "$@"; exit $?')  # not `exec`: sh stays the namespace's init


@functools.cache
def namespaces_work() -> bool:
    """Whether this machine lets this user make user and PID namespaces (tried once)."""
    try:
        done = subprocess.run([*UNSHARE, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def sandboxed(command: Sequence[str]) -> tuple[list[str], bool]:
    """The command line that runs `command` in the sandbox, and whether the sandbox is there."""
    if namespaces_work():
        return [*UNSHARE, *INIT, *command], True
    return list(command), False


def end_signal(returncode: int | None, in_sandbox: bool) -> int | None:
    """The signal that ended a program, from its exit status (the sandbox's `sh` says 128 + n)."""
    if returncode is None:
        return None
    if returncode < 0:
        return -returncode
    if in_sandbox and 128 < returncode < 128 + signal.NSIG:
        return returncode - 128
    return None


def signal_name(number: int) -> str:
    return signal.Signals(number).name if number in signal.valid_signals() else f"signal {number}"


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
