"""An engine (kernel and RPC server) running in a thread of this process, on its own event loop.

What a lab needs: a notebook that experiments with the engine itself (its batch policy, a small
page pool) runs one of its own beside the shared one, and reads it through the same client and
views as any engine.

    lab = EngineThread(load_model("smollm2-135m-instruct"), num_pages=48)
    client = await Client.connect(lab.connection_info())
    results = await lab.run(workload(lab.kernel))   # the engine's loop runs it: spawn, wait

Code that touches the kernel (spawn, set_policy) runs on the engine's loop: pass it to `run`
(awaited from another loop) or `call` (blocking the caller).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from engine.kernel import Kernel
from engine.loader import LoadedModel
from engine.scheduler import BatchPolicy
from engine.server import EngineServer
from engine.wire import connection


class EngineThread:
    """A kernel over `num_pages` pages and its server, in a daemon thread until `close()`.

    data_dir: where the kernel keeps saved files and users (default: a temporary directory,
    removed on close).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        num_pages: int = 64,
        heartbeat_timeout: float = 3600,
        policy: BatchPolicy | None = None,
        data_dir: Path | None = None,
    ) -> None:
        self._temp: Path | None = None
        if data_dir is None:
            data_dir = self._temp = Path(tempfile.mkdtemp(prefix="symphony-lab-"))
        self.kernel = Kernel(loaded, num_pages=num_pages, policy=policy, data_dir=data_dir)
        self.loop = asyncio.new_event_loop()
        self.server = EngineServer(self.kernel, heartbeat_timeout=heartbeat_timeout)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.call(self.kernel.start())
        self.call(self.server.start())

    def connection_info(self) -> connection.ConnectionInfo:
        """What `Client.connect` takes to reach this engine."""
        return self.server.connection_info()

    def call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run a coroutine on the engine's loop and wait for its result, blocking this thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run a coroutine on the engine's loop; the caller's loop goes on meanwhile."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self.call(self.server.stop())
        self.call(self.kernel.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()
        if self._temp is not None:
            shutil.rmtree(self._temp, ignore_errors=True)
