"""The server extension's REST endpoints on a real Jupyter server (no browser needed).

Processes are made with the public client (`workbench.client.Client`) as two users: the server's
own ($SYMPHONY_USER of the server, `tester`) and `mallory`, whose process the server may list
but not kill.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

import pytest
from lab_harness import USER, Lab

from workbench.client import Client

ENDPOINTS = [
    ("status", None),
    ("processes", None),
    ("kvfs?path=/", None),
    ("kill", {"pid": 1}),
]


@pytest.mark.parametrize("endpoint,body", ENDPOINTS)
def test_every_endpoint_needs_jupyters_token(lab: Lab, endpoint: str, body: Any) -> None:
    code, _ = lab.api(endpoint, body, token=None)
    assert code == 403
    code, _ = lab.api(endpoint, body, token="not-the-token")
    assert code == 403


def test_status_names_the_engine_the_server_started(lab: Lab) -> None:
    doc = lab.status()
    assert doc["state"] == "running" and doc["started_by_server"] is True
    assert doc["model"] == "tiny" and doc["device"] == "cpu"
    assert doc["pages_total"] == 256 == doc["pages_used"] + doc["pages_free"] + doc["pages_cached"]
    assert doc["batches_per_second"] >= 0
    # the same engine the kernels find: the connection file in the server's runtime dir
    assert doc["connection_file"] == str(lab.runtime / "symphony-engine.json")


def test_processes_kvfs_and_kill_through_rest(lab: Lab) -> None:
    # a thread of its own: Playwright's sync API may hold this thread's event loop
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _processes_kvfs_and_kill(lab)).result()


async def _processes_kvfs_and_kill(lab: Lab) -> None:
    conn = lab.runtime / "symphony-engine.json"
    mine = await Client.connect(conn, user=USER, name="rest-test")
    theirs = await Client.connect(conn, user="mallory", name="rest-test-mallory")
    api = lambda *a, **kw: asyncio.to_thread(lab.api, *a, **kw)  # noqa: E731
    try:
        before = (await asyncio.to_thread(lab.status))["pages_used"]
        a = await mine.attach("rest-mine")
        b = await theirs.attach("rest-theirs")
        f = await a.kv.create("/shared/rest-prompt", mode=0o644)
        await a.forward(f, a.tokenize("The return value of a function is " * 4))

        code, doc = await api("processes")
        assert code == 200 and doc["user"] == USER
        rows = {p["pid"]: p for p in doc["processes"]}
        assert rows[a.pid]["name"] == "rest-mine" and rows[a.pid]["state"] != "exited"
        assert rows[a.pid]["owner"] == USER and rows[a.pid]["mine"] is True
        assert rows[a.pid]["tokens_in"] > 0
        assert rows[b.pid]["owner"] == "mallory" and rows[b.pid]["mine"] is False
        assert rows[a.pid]["notebook"] is None  # not a kernel of this server

        status = await asyncio.to_thread(lab.status)
        assert status["pages_used"] > before and status["processes"] >= 2
        assert status["batches"] >= 1

        code, doc = await api("kvfs?path=/shared")
        assert code == 200 and doc["kind"] == "dir"
        entry = next(e for e in doc["entries"] if e["name"] == "rest-prompt")
        assert entry["kind"] == "file" and entry["path"] == "/shared/rest-prompt"
        assert entry["stat"]["tokens"] > 0 and entry["stat"]["owner"] == USER
        code, doc = await api("kvfs?path=/shared/rest-prompt")
        assert code == 200 and doc["kind"] == "file" and doc["stat"]["mode"] == "0o644"
        code, doc = await api("kvfs?path=/")
        assert [e["name"] for e in doc["entries"]] == ["home/", "proc/", "shared/"]
        code, doc = await api("kvfs?path=relative")
        assert code == 400 and "BadPath" in doc["message"]

        # someone else's process: refused, and it keeps running
        code, doc = await api("kill", {"pid": b.pid})
        assert code == 403 and "PermissionDenied" in doc["message"], doc
        assert await _state(mine, b.pid) != "exited"
        code, doc = await api("kill", {"pid": 10_000})
        assert code == 404
        code, doc = await api("kill", {"pid": "one"})
        assert code == 400
        code, doc = await api("kill", {"pid": a.pid})
        assert code == 200 and doc == {"pid": a.pid, "killed": True}
        assert await _state(mine, a.pid) == "exited"
        code, doc = await api("processes")
        row = next(p for p in doc["processes"] if p["pid"] == a.pid)
        assert row["state"] == "exited" and row["error"] == "killed"
        await b.exit()
    finally:
        await mine.close()
        await theirs.close()
    with_file = (await asyncio.to_thread(lab.status))["pages_used"]
    assert with_file >= before  # the /shared file keeps its pages; the process's are back


async def _state(client: Client, pid: int) -> str:
    return next(p.state for p in await client.ps() if p.pid == pid)
