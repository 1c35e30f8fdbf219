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
    with engine_process(tmp_path_factory.mktemp("users"), "--num-pages", "256") as e:
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


def test_prefix_sharing_over_rpc_keeps_users_apart_and_only_the_owner_drops_caches(
    engine: EngineProcess, tmp_path: Path
) -> None:
    carol_file = tmp_path / "carol.json"
    assert symphony(engine, "user", "add", "carol", "--out", str(carol_file)).returncode == 0
    prompt = list(range(10, 10 + 40))  # two full pages of 16, and 8 tokens

    async def body() -> None:
        alice = await Client.connect(engine.conn, user="alice")  # the owner's token
        carol = await Client.connect(carol_file)
        a, c = await alice.attach("a"), await carol.attach("c")
        first = await a.kv.create("/home/alice/prompt")
        await a.forward(first, prompt)
        again = await a.kv.create("/home/alice/again")
        await a.forward(again, prompt)
        report = await alice.explain("/home/alice/again")  # a typed record, nested ones in it
        (reuse,) = report.reuses
        assert report.tokens_cached == 32 and reuse.sources == ["/home/alice/prompt"] * 2
        assert reuse.stop.kind == "floor" and reuse.stop.at == 32
        theirs = await c.kv.create()
        await c.forward(theirs, prompt)  # alice's private pages: carol computes her own
        stop = (await c.kv.explain(theirs)).reuses[-1].stop
        assert (stop.kind, stop.owner) == ("other_user", "alice")
        with pytest.raises(PermissionDenied, match="only the engine's owner"):
            await carol.drop_caches()
        await a.kv.close(first)
        await a.kv.close(again)
        await alice.unlink("/home/alice/prompt")
        await alice.unlink("/home/alice/again")
        assert (await alice.stat_engine())["pages_cached"] >= 2
        assert await alice.drop_caches() >= 2
        assert (await alice.stat_engine())["pages_cached"] == 0
        await alice.close()
        await carol.close()

    asyncio.run(body())
