"""A real engine process for integration tests: `symphony serve` on a checkpoint the test wrote
(or the bundled model), with its connection file, stopped at the end."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ENV = {k: v for k, v in os.environ.items() if not k.startswith("SYMPHONY_")}
ENV.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


@dataclass
class EngineProcess:
    proc: subprocess.Popen
    conn: Path
    tmp: Path

    @property
    def log(self) -> str:
        return (self.tmp / "engine.log").read_text()


async def greedy(lip: Any, prompt: list[int], n: int) -> list[int]:
    """n tokens decoded greedily by a LIP (in process or over RPC) into a file of its own."""
    from engine.wire.records import Sample

    f = await lip.kv.create()
    out = [await lip.forward(f, prompt, returns=Sample())]
    while len(out) < n:
        out.append(await lip.forward(f, [out[-1]], returns=Sample()))
    await lip.kv.close(f)
    return out


@contextlib.contextmanager
def engine_process(
    tmp: Path, *args: str, arch: str | None = "llama-tied", conn: Path | None = None
) -> Iterator[EngineProcess]:
    """Serve a random `arch` checkpoint written to tmp (None: the bundled model) with args."""
    conn = conn or tmp / "conn.json"
    cmd = [sys.executable, "-m", "engine.cli", "serve", "--connection-file", str(conn)]
    cmd += ["--data-dir", str(tmp / "data")]  # saved files and users' credentials: the test's
    if arch is not None:
        from checkpoints import write_checkpoint

        (tmp / "ckpt").mkdir()
        write_checkpoint(tmp / "ckpt", arch)
        cmd += ["--model", str(tmp / "ckpt")]
    with open(tmp / "engine.log", "w") as log:
        proc = subprocess.Popen(
            [*cmd, "--threads", "1", *args], cwd=REPO, env=ENV, stdout=log, stderr=log
        )
    engine = EngineProcess(proc, conn, tmp)
    deadline = time.monotonic() + 120
    while not conn.exists():
        assert proc.poll() is None, engine.log
        assert time.monotonic() < deadline, "the engine did not write its connection file"
        time.sleep(0.05)
    try:
        yield engine
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
