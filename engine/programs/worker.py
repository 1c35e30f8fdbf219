"""An engine-side worker: `python -m engine.programs.worker`, started by the engine for a server
run.

The engine (engine.workers) launches it with its connection info, pid and a one-time key in the
environment. It connects as a client, adopts the pid (`worker.adopt`, which hands it the cell's
code), caps its address space, runs the cell with the names a `%%lip` cell has, and reports how
it ended (`worker.exit`): a raising cell prints its traceback (the cell's frames) to stderr and
exits 1. Its stdout and stderr stream back to the cell through the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import linecache
import os
import sys
import traceback

from engine.sandbox import cell_traceback, limit_memory
from engine.wire import connection
from engine.wire.errors import EngineError
from engine.wire.protocol import packb
from workbench.client import LIP, Client
from workbench.names import compile_cell, lip_names, run_cell

CELL = "<lip-cell>"


async def main() -> int:
    env = os.environ
    info = connection.ConnectionInfo(**json.loads(env["SYMPHONY_WORKER_ENGINE"]))
    name = f"worker-{env['SYMPHONY_WORKER_PID']}"
    client = await Client.connect(info, user=env["SYMPHONY_WORKER_USER"], name=name)
    try:
        job = await client.call("worker.adopt", {"key": env.pop("SYMPHONY_WORKER_KEY", "")})
        lip = LIP(client, job["pid"], job["name"])
        namespace = {**lip_names(lip), "__name__": "__main__"}
        error, tb = await run(lip, job["code"], int(job["memory_mb"]), namespace)
        if tb:
            print(tb, end="", file=sys.stderr, flush=True)
        end = {"pid": lip.pid, "error": error, "traceback": tb, "result": None}
        try:
            packb(namespace.get("__result__"))
            end["result"] = namespace.get("__result__")  # a spawned main's return value
        except TypeError as e:
            end["error"] = {"type": "TypeError", "message": f"main's return value: {e}"}
        with contextlib.suppress(EngineError):  # the cell may have ended its process itself
            await client.call("worker.exit", end)
        return 0 if error is None else 1
    finally:
        await client.close()


async def run(
    lip: LIP, code: str, memory_mb: int, namespace: dict
) -> tuple[dict[str, str] | None, str | None]:
    """Run the cell in namespace; (None, None), or its error {type, message} and traceback."""
    linecache.cache[CELL] = (len(code), None, code.splitlines(keepends=True), CELL)
    if lip.client.tokenizer is not None:
        lip.tokenize("warm up")  # the tokenizer's own allocations are not the cell's
    limit_memory(memory_mb)
    try:
        await run_cell(compile_cell(code, CELL), namespace)
    except SystemExit as e:
        if e.code in (None, 0):
            return None, None
        return {"type": "SystemExit", "message": str(e.code)}, None
    except BaseException as e:  # the cell's failure is reported, not the worker's
        return {"type": type(e).__name__, "message": str(e)}, cell_traceback(e, CELL)
    return None, None


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except Exception:
        traceback.print_exc()
        sys.exit(2)
