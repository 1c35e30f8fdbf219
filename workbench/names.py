"""The names a LIP cell sees: its system calls as plain functions, plus the records they take.

    %%lip --name demo
    f = await kv.create()
    d = await forward(f, tokenize("The return value"))

The same namespace serves a `%%lip` cell in the kernel and a `%%lip --server` cell in an
engine-side worker, so a cell runs unchanged in either place.
"""

from __future__ import annotations

import ast
import inspect
from typing import Any

from engine.wire.calls import PROCESS_CALLS
from engine.wire.records import (
    Distribution,
    Grammar,
    Logits,
    LogProbs,
    Sample,
    SamplingParams,
    TopK,
)
from workbench.client import LIP

CALLS = tuple(call.name for call in PROCESS_CALLS)  # a process's calls (its `kv.*` are in kv)
RECORDS = {
    "Distribution": Distribution,
    "Grammar": Grammar,
    "Logits": Logits,
    "LogProbs": LogProbs,
    "Sample": Sample,
    "SamplingParams": SamplingParams,
    "TopK": TopK,
}


def lip_names(lip: LIP) -> dict[str, Any]:
    """`lip`, `pid`, `kv`, `home` and each system call of the process, bound to it."""
    names: dict[str, Any] = {"lip": lip, "pid": lip.pid, "kv": lip.kv}
    names["home"] = f"/home/{lip.client.user}"  # this user's KV directory, kept after exit
    names.update({name: getattr(lip, name) for name in CALLS})
    names.update(RECORDS)
    return names


def compile_cell(source: str, filename: str) -> Any:
    """Compile a cell's code, top-level `await` allowed."""
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    return compile(source, filename, "exec", flags=flags, dont_inherit=True)


async def run_cell(code: Any, namespace: dict[str, Any]) -> None:
    """Run compiled cell code in namespace, awaiting it when it awaits."""
    result = eval(code, namespace)  # noqa: S307 - the user's own cell
    if inspect.iscoroutine(result):
        await result
