"""The Jupyter server extension: the shared engine lives with the server, and a REST API shows it.

Enabled by `jupyter-config/server-config/symphony-workbench.json` (installed into
`etc/jupyter/jupyter_server_config.d/` by the wheel). At server start it finds the engine through
the connection file in the server's runtime directory, the one its kernels read, or starts one
there (`symphony serve`, as `workbench.autostart` does for a kernel); an engine it started is
stopped with the server. The endpoints sit behind Jupyter's own authentication and talk to the
engine only through the public client API (`workbench.client.Client`), as the server's user:

    GET  /symphony/status              state, model, device, pages used/free, batches per second
    GET  /symphony/processes[?exited=N] the process table, each process with its notebook
    GET  /symphony/kvfs?path=/         a KV directory's entries (files with their stat), or a file
    POST /symphony/kill   {"pid": N}   end a process: 403 when it is someone else's

Settings (`c.SymphonyWorkbench.<name>` in a Jupyter config file, or `--SymphonyWorkbench.<name>=`):
`start_engine`, `model`, `device`, `num_pages` (also read as `pages`, its old name), `threads`,
`engine_args`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import getpass
import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import tornado.web
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.application import ExtensionApp
from jupyter_server.serverapp import ServerApp
from tornado.httputil import responses
from traitlets import Bool, Int, List, Unicode

from engine.wire import connection
from engine.wire.engine_config import EngineConfig
from engine.wire.errors import (
    BadPath,
    EngineError,
    EngineNotRunning,
    FileNotFound,
    InvalidArgument,
    NoSuchProcess,
    PermissionDenied,
    SessionEnded,
    UnknownOperation,
)
from workbench import autostart
from workbench.client import USER_ENV, Client

CALL_TIMEOUT = 10.0  # seconds an endpoint waits for the engine
RATE_WINDOW = 10.0  # batches per second: over the samples of the last this many seconds
EXITED_SHOWN = 20  # /processes: the most recently ended processes listed beside the live ones
KVFS_STATS = 200  # /kvfs: files in one directory listed with their stat
STOP_TIMEOUT = 10.0


class EngineService:
    """The server's connection to the shared engine, and the engine itself when started here."""

    def __init__(
        self,
        path: Path,
        start: bool,
        args: list[str],
        log: logging.Logger | logging.LoggerAdapter[Any],
    ) -> None:
        self.path = path
        self.start_engine = start
        self.args = args
        self.log = log
        self.state = "stopped"  # starting, running, stopped, error
        self.error: str | None = None
        self.proc: subprocess.Popen | None = None  # the engine, when this server started it
        self.client: Client | None = None
        self._lock = asyncio.Lock()
        self._starting: asyncio.Task | None = None
        self._batches: collections.deque[tuple[float, int]] = collections.deque()

    # --- life ------------------------------------------------------------------------------------

    def begin(self) -> None:
        """Start (or find) the engine in the background; until then /status says "starting"."""
        self._starting = asyncio.create_task(self._start(), name="symphony-engine-start")

    async def _start(self) -> None:
        if not self.start_engine:
            with contextlib.suppress(EngineError):
                await self.connect()
            return
        self.state = "starting"
        try:
            _, self.proc = await asyncio.to_thread(
                autostart.start_engine, self.path, autostart.START_TIMEOUT, self.args
            )
            await self.connect()
            how = f"started pid {self.proc.pid}" if self.proc else "found a running one"
            self.log.info("Symphony engine: %s (%s)", how, self.path)
        except Exception as e:  # reported by /status; the server itself keeps running
            self.state, self.error = "error", f"{type(e).__name__}: {e}"
            self.log.error("Symphony engine did not start: %s", self.error)

    async def stop(self) -> None:
        """Close the connection; stop the engine if this server started it."""
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            with contextlib.suppress(BaseException):
                await self._starting
        await self._drop_client()
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            self.log.info("Symphony engine: stopping pid %d", proc.pid)
            proc.send_signal(signal.SIGTERM)  # the engine removes its connection file
            try:
                await asyncio.to_thread(proc.wait, STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
                connection.remove(self.path)
        self.state = "stopped"

    # --- the connection --------------------------------------------------------------------------

    async def connect(self) -> Client:
        """The connected client: reconnects when the engine behind the file changed or died."""
        async with self._lock:
            try:
                info = connection.read(self.path)
            except EngineNotRunning as e:
                await self._drop_client()
                if self.state != "error":  # a failed start stays reported
                    self.state, self.error = "stopped", str(e)
                raise
            if self.client is not None and self.client.info.token != info.token:
                await self._drop_client()  # another engine (restarted) now owns the file
            if self.client is None:
                user = os.environ.get(USER_ENV) or getpass.getuser()
                self.client = await Client.connect(info, user=user, name="jupyter-server")
                self._batches.clear()
            self.state, self.error = "running", None
            return self.client

    async def _drop_client(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 3.0)

    async def call(self, method: str, *args: Any) -> Any:
        """One client call, with a timeout; a dead connection is dropped (and retried once)."""
        if self._starting is not None and not self._starting.done():
            raise EngineNotRunning("the engine is starting")
        for attempt in (0, 1):
            client = await self.connect()
            try:
                return await asyncio.wait_for(getattr(client, method)(*args), CALL_TIMEOUT)
            except (EngineNotRunning, SessionEnded, asyncio.TimeoutError) as e:
                await self._drop_client()  # the next attempt connects afresh
                if attempt:
                    self.state, self.error = "stopped", str(e) or "no answer from the engine"
                    raise EngineNotRunning(self.error) from None
        raise AssertionError("unreachable")

    # --- what the endpoints return ---------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "error": self.error,
            "connection_file": str(self.path),
            "started_by_server": self.proc is not None and self.proc.poll() is None,
        }

    def batch_rate(self, batches: int) -> float:
        """Forward batches per second over the last RATE_WINDOW seconds of samples."""
        now = time.monotonic()
        samples = self._batches
        if samples and batches < samples[-1][1]:
            samples.clear()  # a new engine: its count started again
        samples.append((now, batches))
        while len(samples) > 2 and now - samples[0][0] > RATE_WINDOW:
            samples.popleft()
        (t0, b0), (t1, b1) = samples[0], samples[-1]
        return round((b1 - b0) / (t1 - t0), 2) if t1 - t0 >= 0.2 else 0.0


# ---- handlers -----------------------------------------------------------------------------------


class SymphonyHandler(APIHandler):
    auth_resource = "symphony"

    @property
    def service(self) -> EngineService:
        return self.settings["symphony_service"]

    def reply(self, doc: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(doc, default=_jsonable))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """{"message": what went wrong, "reason": the status's phrase}."""
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, Refused):
            self.set_status(status_code)
            self.reply({"message": error.detail, "reason": responses.get(status_code, "")})
        else:
            super().write_error(status_code, **kwargs)

    async def engine(self, method: str, *args: Any) -> Any:
        """A client call; the engine's errors as HTTP statuses."""
        try:
            return await self.service.call(method, *args)
        except EngineError as e:
            raise http_error(e) from None


class StatusHandler(SymphonyHandler):
    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        stats = None
        if self.service.state != "starting":
            with contextlib.suppress(tornado.web.HTTPError):
                stats = await self.engine("stat_engine")
        doc = self.service.summary()  # after the call: it may have found the engine gone
        if stats is not None and self.service.client is not None:
            doc.update(stats, **self.service.summary())
            doc["batches_per_second"] = self.service.batch_rate(stats["batches"])
            doc["engine_pid"] = self.service.client.engine.get("engine_pid")
        self.reply(doc)


class ProcessesHandler(SymphonyHandler):
    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        try:
            exited = int(self.get_argument("exited", str(EXITED_SHOWN)))
        except ValueError:
            raise Refused(400, "exited must be an integer") from None
        procs = await self.engine("ps")
        live = [p for p in procs if p.state != "exited"]
        ended = sorted((p for p in procs if p.state == "exited"), key=lambda p: -(p.ended or 0))
        shown = sorted(live + ended[: max(exited, 0)], key=lambda p: p.pid)
        notebooks = await self._notebooks()
        me = self.service.client.user if self.service.client else None
        rows = []
        for p in shown:
            row = p._asdict()
            row["notebook"] = notebooks.get(p.pid)
            row["mine"] = p.owner == me
            rows.append(row)
        self.reply({"user": me, "processes": rows, "exited_total": len(ended)})

    async def _notebooks(self) -> dict[int, str]:
        """pid -> the notebook (or console) whose kernel runs it, where known."""
        try:
            sessions = await self.engine("sessions")
        except tornado.web.HTTPError:
            return {}  # an engine without the call
        paths: dict[str, str] = {}
        with contextlib.suppress(Exception):
            for s in await self.settings["session_manager"].list_sessions():
                paths[f"kernel-{s['kernel']['id']}"] = s.get("path") or s.get("name") or ""
        return {pid: paths[s["name"]] for s in sessions if s["name"] in paths for pid in s["pids"]}


class KVFSHandler(SymphonyHandler):
    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        path = self.get_argument("path", "/") or "/"
        try:
            names = await self.service.call("listdir", path)
        except BadPath:  # a file, or no path at all (stat says which)
            st = await self.engine("stat", path)
            self.reply({"path": path, "kind": "file", "stat": _stat(st)})
            return
        except EngineError as e:
            raise http_error(e) from None
        base = path.rstrip("/") + "/"
        entries: list[dict[str, Any]] = [
            {"name": n, "path": base + n.rstrip("/"), "kind": "dir" if n.endswith("/") else "file"}
            for n in names
        ]
        files = [e for e in entries if e["kind"] == "file"][:KVFS_STATS]
        stats = await asyncio.gather(
            *(self.service.call("stat", e["path"]) for e in files), return_exceptions=True
        )
        for entry, st in zip(files, stats, strict=True):
            if not isinstance(st, BaseException):
                entry["stat"] = _stat(st)
        self.reply({"path": path, "kind": "dir", "entries": entries})


class KillHandler(SymphonyHandler):
    @tornado.web.authenticated
    @authorized
    async def post(self) -> None:
        try:
            pid = json.loads(self.request.body or b"{}").get("pid")
        except (ValueError, AttributeError):
            pid = None
        if not isinstance(pid, int) or isinstance(pid, bool):
            raise Refused(400, 'the body must be {"pid": <integer>}')
        await self.engine("kill", pid)
        self.reply({"pid": pid, "killed": True})


class Refused(tornado.web.HTTPError):
    """An HTTP error whose body says why: {"message": detail}."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(status)
        self.detail = detail


def http_error(e: EngineError) -> Refused:
    """The HTTP status that says what went wrong in the engine."""
    if isinstance(e, EngineNotRunning):
        status = 503
    elif isinstance(e, PermissionDenied):
        status = 403
    elif isinstance(e, (FileNotFound, NoSuchProcess)):
        status = 404
    elif isinstance(e, (InvalidArgument, UnknownOperation)):
        status = 400
    else:
        status = 500
    return Refused(status, f"{type(e).__name__}: {e}")


def _stat(st: Any) -> dict[str, Any]:
    doc = st._asdict()
    doc["mode"] = oct(doc["mode"])
    doc["page_table"] = list(doc["page_table"])[:256]
    return doc


def _jsonable(value: Any) -> Any:
    if hasattr(value, "_asdict"):
        return value._asdict()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


# ---- the extension ------------------------------------------------------------------------------


class SymphonyWorkbench(ExtensionApp):
    """The shared Symphony engine of this Jupyter server, and the REST API the sidebar polls."""

    name = "symphony"
    load_other_extensions = True

    start_engine = Bool(
        True,
        help="Start the shared engine with the server when none runs "
        "(otherwise the first %%lip cell starts one, and this server attaches to it).",
    ).tag(config=True)
    model = Unicode(
        "",
        help="Model for an engine started here: a name (`symphony models`), a directory, a .gguf "
        "file or a cached HF id (default: $SYMPHONY_MODEL, else smollm2-135m-instruct).",
    ).tag(config=True)
    device = Unicode("", help="Device for an engine started here: cpu or cuda.").tag(config=True)
    num_pages = Int(0, help="KV pages in the pool of an engine started here (0: the default).").tag(
        config=True
    )
    pages = Int(0, help="The old name of num_pages, kept so that existing configs work.").tag(
        config=True
    )
    threads = Int(0, help="torch CPU threads of an engine started here (0: torch's).").tag(
        config=True
    )
    engine_args = List(
        Unicode(), help="More `symphony serve` options for an engine started here."
    ).tag(config=True)

    service: EngineService | None = None

    def engine_config(self) -> EngineConfig:
        """The settings of an engine started here (the unset traits keep the defaults)."""
        given = {
            "model": self.model,
            "device": self.device,
            "num_pages": self.num_pages or self.pages,
        }
        given["threads"] = self.threads
        return EngineConfig(**{k: v for k, v in given.items() if v})  # type: ignore[arg-type]

    def serve_args(self) -> list[str]:
        return self.engine_config().argv() + list(self.engine_args)

    def initialize_settings(self) -> None:
        assert self.serverapp is not None
        path = connection_path(self.serverapp)
        # the kernels this server starts read the same file, wherever its runtime dir is
        os.environ[connection.ENV_VAR] = str(path)
        self.service = EngineService(path, self.start_engine, self.serve_args(), self.log)
        self.settings["symphony_service"] = self.service

    def initialize_handlers(self) -> None:
        self.handlers.extend(
            [
                (r"/symphony/status", StatusHandler),
                (r"/symphony/processes", ProcessesHandler),
                (r"/symphony/kvfs", KVFSHandler),
                (r"/symphony/kill", KillHandler),
            ]
        )

    async def _start_jupyter_server_extension(self, serverapp: ServerApp) -> None:
        assert self.service is not None
        self.service.begin()

    async def stop_extension(self) -> None:
        if self.service is not None:
            await self.service.stop()


def connection_path(serverapp: ServerApp) -> Path:
    """`$SYMPHONY_CONNECTION_FILE`, else `symphony-engine.json` in the server's runtime dir."""
    override = os.environ.get(connection.ENV_VAR)
    if override:
        return Path(override)
    return Path(serverapp.runtime_dir) / connection.FILE_NAME


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    return [{"module": "workbench.server_extension", "app": SymphonyWorkbench}]
