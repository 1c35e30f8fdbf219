"""Identity per user: the engine's owner issues each user a credential of their own, and a client
holding it acts as that user only. A real `symphony serve` process, the real CLI, real clients."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_process import EngineProcess, engine_process

from engine.wire import connection
from engine.wire.errors import AuthenticationFailed, PermissionDenied, ProcessFailed, SessionEnded
from workbench.client import Client

REPO = Path(__file__).resolve().parents[2]
ENV = {k: v for k, v in os.environ.items() if not k.startswith("SYMPHONY_")}
ENV.update(PYTHONPATH=str(REPO))


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    with engine_process(tmp_path_factory.mktemp("users"), "--pages", "256") as e:
        yield e


def symphony(engine: EngineProcess, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "engine.cli", *args, "--connection-file", str(engine.conn)]
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60)


def test_a_users_credential_acts_as_that_user_only(engine: EngineProcess, tmp_path: Path) -> None:
    bob_file = tmp_path / "bob.json"
    done = symphony(engine, "user", "add", "bob", "--out", str(bob_file))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(bob_file.stat().st_mode) == 0o600
    doc = json.loads(bob_file.read_text())
    owner = connection.read(engine.conn)
    assert doc["user"] == "bob" and doc["token"] != owner.token

    async def body() -> None:
        alice = await Client.connect(engine.conn, user="alice")  # the owner's token: any user
        a = await alice.attach("a")
        secret = await a.kv.create("/home/alice/secret")
        await a.forward(secret, [1, 2, 3])

        bob = await Client.connect(bob_file)
        assert bob.user == "bob"
        b = await bob.attach("b")
        f = await b.kv.create()
        await b.forward(f, [4, 5, 6])  # bob computes as bob
        with pytest.raises(PermissionDenied):
            await b.kv.open("/home/alice/secret")
        with pytest.raises(PermissionDenied, match="this credential is 'bob'"):
            await Client.connect(bob_file, user="alice")
        with pytest.raises(PermissionDenied, match="only the engine's owner"):
            await bob.call("user.add", {"user": "eve"})
        forged = dataclasses.replace(connection.read(bob_file), user="")  # bob's token as owner's
        with pytest.raises(AuthenticationFailed):
            await Client.connect(forged, user="alice")

        # bob's server run holds bob's credential, never the owner's
        cell = (
            "import json, os\n"
            "from engine.wire.connection import ConnectionInfo\n"
            "from workbench.client import Client\n"
            "info = ConnectionInfo(**json.loads(os.environ['SYMPHONY_WORKER_ENGINE']))\n"
            "print('worker credential', info.user)\n"
            "await Client.connect(info, user='alice')\n"
        )
        with pytest.raises(ProcessFailed, match="PermissionDenied"):
            await bob.run(cell, name="impostor")

        revoked = symphony(engine, "user", "remove", "bob")
        assert revoked.returncode == 0 and "revoked bob's credential" in revoked.stdout
        with pytest.raises((SessionEnded, AuthenticationFailed)):  # its token no longer signs
            await bob.ps()
        with pytest.raises(AuthenticationFailed):
            await bob.reconnect()
        await a.exit()
        await alice.close()

    asyncio.run(body())
