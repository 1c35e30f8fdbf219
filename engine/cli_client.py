"""`symphony ps | ls | stat | kill | stop`: the command line as a client of the running engine.

`SyncClient` is the smallest blocking client of `engine.wire.protocol` (one call at a time, no
heartbeat): enough for commands and benches. Notebooks use `workbench.client`.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import itertools
import logging
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import zmq

from engine.wire import connection
from engine.wire.engine_config import EngineConfig
from engine.wire.errors import EngineNotRunning, SessionEnded, UnknownSession
from engine.wire.protocol import REPLY, REQUEST, Wire, rebuild_error, request_body
from engine.wire.tables import ps_table, stat_table


class SyncClient:
    def __init__(
        self, info: connection.ConnectionInfo, user: str | None = None, name: str = "symphony-cli"
    ) -> None:
        self.info = info
        self.session = uuid.uuid4().hex
        self.wire = Wire(info.token, 1 << 30, info.user)
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(info.local_address)
        self._ids = itertools.count(1)
        self._hello = {"user": user or info.user or getpass.getuser(), "name": name}
        self.engine = self.call("hello", self._hello)

    @classmethod
    def connect(cls, connection_file: str | Path | None = None, **kw: Any) -> SyncClient:
        return cls(connection.read(connection_file), **kw)

    def call(
        self,
        op: str,
        args: dict[str, Any] | None = None,
        pid: int | None = None,
        timeout: float = 10,
    ) -> Any:
        try:
            return self._call(op, args, pid, timeout)
        except (SessionEnded, UnknownSession):
            if op == "hello":
                raise
        # Without heartbeats the engine ends a silent session: start a new one.
        self.session = uuid.uuid4().hex
        self.call("hello", self._hello, timeout=timeout)
        return self._call(op, args, pid, timeout)

    def _call(self, op: str, args: dict[str, Any] | None, pid: int | None, timeout: float) -> Any:
        rid = next(self._ids)
        header = {"kind": REQUEST, "session": self.session, "id": rid}
        self._sock.send_multipart(self.wire.frames(header, request_body(rid, op, args or {}, pid)))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self._sock.poll(int(left * 1000) + 1):
                break
            frames = self._sock.recv_multipart()
            rejected = Wire.rejection(frames)
            if rejected is not None:
                raise rejected
            msg = self.wire.parse(frames)
            if msg.header.get("kind") != REPLY:
                continue
            # the replies the engine made in one loop turn come in one message, as a list
            for body in msg.body if isinstance(msg.body, list) else [msg.body]:
                if isinstance(body, dict) and body.get("id") == rid:
                    if body.get("ok"):
                        return body.get("result")
                    raise rebuild_error(body.get("error"))
        raise EngineNotRunning(f"no answer from the engine at {self.info.address} in {timeout:g}s")

    def close(self) -> None:
        self._sock.close(linger=0)
        self._ctx.term()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- the commands ----


def ps(client: SyncClient, args: argparse.Namespace) -> None:
    print(ps_table(client.call("ps"), exited=args.all))


def ls(client: SyncClient, args: argparse.Namespace) -> None:
    for name in client.call("kv.listdir", {"path": args.path}):
        print(name)


def stat(client: SyncClient, args: argparse.Namespace) -> None:
    print(stat_table(client.call("kv.stat", {"path": args.path})))


def kill(client: SyncClient, args: argparse.Namespace) -> None:
    client.call("kill", {"pid": args.pid})
    print(f"killed {args.pid}")


def stop(client: SyncClient, args: argparse.Namespace) -> None:
    pid = client.engine.get("engine_pid")
    client.call("shutdown")
    print(f"stopped the engine (pid {pid})")


def user(client: SyncClient, args: argparse.Namespace) -> None:
    """`symphony user add NAME`: a connection file holding NAME's own credential (mode 0600)."""
    if args.action == "remove":
        had = client.call("user.remove", {"user": args.name})
        print(f"revoked {args.name}'s credential" if had else f"{args.name} had no credential")
        return
    issued = client.call("user.add", {"user": args.name})
    info = dataclasses.replace(client.info, token=issued["token"], user=args.name)
    out = Path(args.out or f"symphony-engine-{args.name}.json")
    connection.write(info, out)
    print(f"wrote {out}: {args.name}'s connection file (give it to {args.name} only)")


COMMANDS = {"ps": ps, "ls": ls, "stat": stat, "kill": kill, "stop": stop, "user": user}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    def add(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--connection-file", help="the engine's connection file")
        p.add_argument("--user", help="act as this user (default: your login name)")
        p.set_defaults(func=run)
        return p

    add("ps", "list the running engine's processes").add_argument(
        "-a", "--all", action="store_true", help="exited processes too"
    )
    add("ls", "list a KV directory").add_argument("path", nargs="?", default="/")
    add("stat", "show a KV file").add_argument("path")
    add("kill", "end a process (one of this user's)").add_argument("pid", type=int)
    add("stop", "stop the running engine")
    p = add("user", "issue (add) or revoke (remove) a user's own credential")
    p.add_argument("action", choices=("add", "remove"))
    p.add_argument("name", help="the user's name")
    p.add_argument("--out", help="where add writes the connection file (default: here)")


def run(args: argparse.Namespace) -> int:
    try:
        with SyncClient.connect(args.connection_file, user=args.user) as client:
            COMMANDS[args.command](client, args)
    except Exception as e:  # the engine's errors, rebuilt here: say what, not where
        print(f"symphony {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


def serve(args: argparse.Namespace) -> int:
    """`symphony serve`: load the model, start the kernel and its server, write the file."""
    from engine import event_loop
    from engine.models import DEFAULT_MODEL, resolve
    from engine.wire.errors import ModelNotFound

    model = args.model or DEFAULT_MODEL
    try:
        resolve(model)
    except ModelNotFound as e:
        print(f"symphony serve: {e}", file=sys.stderr)
        return 2
    if args.threads:
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    return event_loop.run(_serve(model, args))


async def _serve(model: str, args: argparse.Namespace) -> int:
    import torch

    from engine.kernel import Kernel
    from engine.loader import load_model
    from engine.server import EngineServer, serve
    from engine.wire.errors import ModelLoadError

    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    config = EngineConfig.from_args(args)
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        loaded = load_model(model, device=config.device, dtype=config.dtype, show_progress=False)
    except ModelLoadError as e:
        print(f"symphony serve: {e}", file=sys.stderr)
        return 2
    kernel = Kernel.from_config(loaded, config)
    dtype = str(loaded.model.dtype).removeprefix("torch.")

    def ready(server: EngineServer, path: str) -> None:
        print(
            f"symphony engine: {loaded.name} on {config.device} in {dtype} "
            f"({loaded.dtype_reason}), {config.num_pages} pages, "
            f"listening on tcp://{server.host}:{server.port}; connection file {path}",
            file=sys.stderr,
            flush=True,
        )

    await serve(
        kernel,
        args.ip,
        args.port,
        args.connection_file,
        ready,
        config.idle_exit,
        config.heartbeat_timeout,
    )
    return 0


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the engine as a shared service")
    EngineConfig.add_arguments(p)  # the engine's settings, each with its one default
    p.add_argument("--ip", default="127.0.0.1", help="the address to listen on")
    p.add_argument("--port", type=int, default=0, help="the port (default: any free one)")
    p.add_argument("--connection-file", help="where to write the connection file")
    p.set_defaults(func=serve)
