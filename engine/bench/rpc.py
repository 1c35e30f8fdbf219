"""`symphony bench rpc`: what a system call costs over the wire.

The engine (kernel and RPC server) runs in a thread of this process with its own event loop. A
separate process plays the notebook kernel: `engine.programs.rpc_probe` (launched by module name;
the engine never imports it, nor `workbench`) calls it with the async `workbench.client`, as a
`%%lip` cell does, over the engine's Unix socket as any client on the same machine does.
Each row is a latency in µs:
- engine: the round trip of the call as the kernel sees it (sign, send, serve, reply, check);
- baseline: the same call made inside the engine, directly on `Syscalls`, timed in its loop.
Cases: `noop` is `ps` with one process (the cheapest system call); `forward-1` appends one token
to a 64-token KV file and samples greedily (the file is rolled back after every block of calls).
`transport` prices the wire itself: engine is the no-op's round trip again, baseline a bare
ZeroMQ echo of the same frames between the same two processes (plain blocking sockets, no
Python work on either side), so engine - baseline is what the client and server add to the
transport's floor on this machine.
p50 and p99 over `--runs` blocks of 100 calls per side, the sides alternating block by block.

For these latency rows ratio = engine / baseline, as for every bench, but LOWER is better: it
says how many times longer the call takes from a client than inside the engine. The table marks
such rows "(lower is better)".
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import zmq

from engine.bench.common import Row, timed_calls
from engine.bench.models import bench_model
from engine.engine_thread import EngineThread
from engine.kernel import Kernel
from engine.loader import LoadedModel, load_model
from engine.syscalls import Syscalls
from engine.wire import connection
from engine.wire.records import Sample

WORKLOADS = ("rpc",)
CASES = tuple(f"{c} p{q}" for c in ("noop", "forward-1", "transport") for q in (50, 99))
BLOCK = 100
PROMPT = 64


class EchoThread:
    """The transport's floor: a ROUTER in a thread of this process that sends back what it gets."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.bind(endpoint)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._sock.poll(100):
                self._sock.send_multipart(self._sock.recv_multipart())

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close(linger=0)
        self._ctx.term()


async def _attach(kernel: Kernel) -> Syscalls:
    pid = kernel.attach("rpc-inside", owner="bench")
    return Syscalls(kernel, kernel.procs[pid])


def _p(times: list[float], q: int) -> float:
    """The q-th percentile in µs."""
    cuts = statistics.quantiles(times, n=100, method="inclusive")
    return round((statistics.median(times) if q == 50 else cuts[q - 1]) * 1e6, 1)


PROBE_COMMAND = (sys.executable, "-m", "engine.programs.rpc_probe")  # a module, not an import


class Probe:
    """The kernel-side process: `block(case, n)` runs n calls there and returns their times."""

    def __init__(self, connection_file: Path, echo: str) -> None:
        cmd = [*PROBE_COMMAND, str(connection_file), str(PROMPT), echo]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self._line() != "ready":
            raise RuntimeError("the rpc probe did not start")

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the rpc probe exited with code {self.proc.wait()}")
        return line.strip()

    def block(self, case: str, n: int) -> list[float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{case} {n}\n")
        self.proc.stdin.flush()
        return json.loads(self._line())

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.proc.communicate("quit\n", timeout=10)
        if self.proc.poll() is None:
            self.proc.kill()


def measure(loaded: LoadedModel, runs: int) -> dict[str, tuple[list[float], list[float]]]:
    """Per case, (round trips from a kernel process, in-engine calls), in seconds."""
    engine = EngineThread(loaded)
    with tempfile.TemporaryDirectory() as tmp:
        conn = connection.write(engine.server.connection_info(), Path(tmp) / "engine.json")
        echo = EchoThread(f"ipc://{tmp}/echo.sock")
        probe = Probe(conn, echo.endpoint)
        try:
            calls = engine.call(_attach(engine.kernel))
            g = engine.call(calls.kv.create())
            prompt = [i % loaded.config.vocab_size for i in range(3, 3 + PROMPT)]
            engine.call(calls.forward(g, prompt, outputs=[]))
            inside = {
                "noop": calls.ps,
                "forward-1": lambda: calls.forward(g, [7], returns=Sample()),
            }
            over_wire = {"noop": "noop", "forward-1": "forward"}
            out: dict[str, tuple[list[float], list[float]]] = {c: ([], []) for c in inside}
            echoes: list[float] = []
            for _ in range(runs + 1):  # the first block of each side warms up
                for case, (remote, local) in out.items():
                    remote += probe.block(over_wire[case], BLOCK)
                    local += engine.call(timed_calls(BLOCK, inside[case]))
                    engine.call(calls.kv.truncate(g, PROMPT))
                echoes += probe.block("echo", BLOCK)
            out["transport"] = (out["noop"][0], echoes)
            return {c: (r[BLOCK:], i[BLOCK:]) for c, (r, i) in out.items()}
        finally:
            probe.close()
            echo.close()
            engine.close()


def run(
    workload: str,
    models: list[str],
    runs: int,
    dtype: str | None,
    baseline_dtype: str,
    report: Callable[[Row], None],
    cases: list[str] | None = None,
    device: str = "cpu",
) -> list[Row]:
    rows: list[Row] = []
    for name in models:
        loaded = load_model(bench_model(name), device=device, dtype=dtype, show_progress=False)
        for case, (remote, local) in measure(loaded, runs).items():
            for q in (50, 99):
                label = f"{case} p{q}"
                if cases and label not in cases:
                    continue
                e, b = _p(remote, q), _p(local, q)
                row = Row(workload, label, name, "µs", e, b, round(e / b, 3))
                report(row)
                rows.append(row)
    return rows
