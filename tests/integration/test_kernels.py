"""Two real Jupyter kernels (jupyter_client) sharing one real engine process through `%%lip`.

The kernels act as two users, alice and bob (`$SYMPHONY_USER`), and find the engine through the
connection file in their Jupyter runtime directory, as notebooks of one Jupyter server do.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from engine_process import engine_process
from jupyter_client.manager import KernelManager

from engine.cli_client import SyncClient
from engine.server import REAPED_WITHIN

INTRO = "Python is a programming language that lets you work quickly and integrate systems " * 3
DECODE = """%%lip --name {name}
f = await kv.create()
d = await forward(f, tokenize({prompt!r}))
out = []
for _ in range({n}):
    out.append(d.argmax())
    print("token", out[-1], flush=True)
    d = await forward(f, [out[-1]])
{after}
print("done", out)
"""


@dataclass
class Output:
    status: str
    stdout: str = ""
    displays: list[str] = field(default_factory=list)
    error: dict[str, Any] | None = None

    @property
    def pid(self) -> int:
        match = re.search(r"LIP (\d+)", " ".join(self.displays))
        assert match, self.displays
        return int(match.group(1))

    def done(self) -> list[int]:
        match = re.search(r"done \[(.*)\]", self.stdout)
        assert match, (self.stdout, self.error)
        return [int(x) for x in match.group(1).split(",")]


class Kernel:
    def __init__(self, user: str, runtime: Path) -> None:
        env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(runtime), "SYMPHONY_USER": user}
        env["OMP_NUM_THREADS"] = "1"
        env.pop("SYMPHONY_CONNECTION_FILE", None)
        self.user = user
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=env)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        assert self.run("%load_ext workbench").status == "ok"

    def start(self, code: str) -> str:
        return self.kc.execute(code)

    def collect(self, msg_id: str, timeout: float = 120, until: str | None = None) -> Output:
        """Outputs of one execution until it is idle (or until `until` appears in stdout)."""
        out = Output("running")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.kc.get_iopub_msg(timeout=deadline - time.monotonic())
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out.stdout += content["text"]
                if until is not None and until in out.stdout:
                    return out
            elif kind in ("display_data", "update_display_data"):
                out.displays.append(content["data"]["text/plain"])
            elif kind == "error":
                out.error = content
            elif kind == "status" and content["execution_state"] == "idle":
                out.status = "error" if out.error else "ok"
                return out
        raise TimeoutError(f"{self.user}'s cell did not finish in {timeout}s: {out}")

    def run(self, code: str, timeout: float = 120) -> Output:
        return self.collect(self.start(code), timeout)

    @property
    def pid(self) -> int:
        return self.km.provisioner.process.pid  # type: ignore[union-attr]

    def shutdown(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@dataclass
class Engine:
    proc: subprocess.Popen
    conn: Path
    runtime: Path

    def client(self, user: str = "tester") -> SyncClient:
        return SyncClient.connect(self.conn, user=user)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    runtime = tmp_path_factory.mktemp("runtime")  # the kernels' Jupyter runtime directory
    conn = runtime / "symphony-engine.json"
    # float32: batching leaves greedy outputs unchanged only there (bfloat16 matmuls round by the
    # batch's row count), and the bundled model is a bfloat16 checkpoint the machine may run so
    args = ("--num-pages", "256", "--dtype", "float32", "--model", "tiny")  # the demo model: fast
    with engine_process(runtime, *args, arch=None, conn=conn) as e:
        yield Engine(e.proc, e.conn, runtime)


@pytest.fixture(scope="module")
def kernels(engine: Engine) -> Iterator[dict[str, Kernel]]:
    started = {user: Kernel(user, engine.runtime) for user in ("alice", "bob")}
    yield started
    for k in started.values():
        k.shutdown()


def decode_cell(name: str, prompt: str, n: int, after: str = "") -> str:
    return DECODE.format(name=name, prompt=prompt, n=n, after=after)


def test_lips_in_two_kernels_run_together_and_share_batches(
    engine: Engine, kernels: dict[str, Kernel]
) -> None:
    prompts = {"alice": "The return value of", "bob": "A list is"}
    alone = {u: kernels[u].run(decode_cell("alone", p, 48)).done() for u, p in prompts.items()}
    ids = {u: kernels[u].start(decode_cell("together", p, 48)) for u, p in prompts.items()}
    outs = {u: kernels[u].collect(ids[u]) for u in ("alice", "bob")}
    for user, out in outs.items():
        assert out.status == "ok", out.error
        assert out.done() == alone[user]  # batching with the other kernel changed nothing
        assert "exited" in out.displays[-1]
    pids = {outs["alice"].pid, outs["bob"].pid}
    with engine.client() as c:
        batches = c.call("trace", {"kinds": ["batch"]})
        procs = {p.pid: p for p in c.call("ps")}
    assert any(pids <= set(b.data["pids"]) for b in batches)
    assert procs[outs["alice"].pid].owner == "alice" and procs[outs["bob"].pid].owner == "bob"
    assert all(procs[p].state == "exited" for p in pids)


def test_a_file_in_shared_is_forked_by_the_other_kernel(kernels: dict[str, Kernel]) -> None:
    alice, bob = kernels["alice"], kernels["bob"]
    made = alice.run(
        f"""%%lip --name publish
f = await kv.create("/shared/intro")
await forward(f, tokenize({INTRO!r}))
await kv.close(f)
"""
    )
    assert made.status == "ok", made.error
    continuation = """%%lip --name {name}
g = await kv.fork("/shared/intro")
d = await forward(g, tokenize(" lets"))
st = await kv.stat(g)
print("top", d.ids[:5])
print("shared", st.num_shared_pages, sorted(st.shared_with), st.parent)
"""
    outs = [k.run(continuation.format(name=f"fork-{k.user}")) for k in (bob, alice)]
    for out in outs:
        assert out.status == "ok", out.error
        assert "'/shared/intro'] /shared/intro" in out.stdout  # shares pages with its parent
    tops = [re.search(r"top (\[.*\])", o.stdout).group(1) for o in outs]  # type: ignore[union-attr]
    assert tops[0] == tops[1]  # bob's fork continues alice's file exactly as her own fork does
    assert int(re.search(r"shared (\d+)", outs[0].stdout).group(1)) >= 1  # type: ignore[union-attr]


@pytest.mark.parametrize("owner,other", [("alice", "bob"), ("bob", "alice")])
def test_neither_kernel_can_write_or_unlink_the_others_home(
    kernels: dict[str, Kernel], owner: str, other: str
) -> None:
    made = kernels[owner].run(
        f"""%%lip
f = await kv.create("/home/{owner}/notes")
await forward(f, tokenize("private notes"))
await kv.close(f)
"""
    )
    assert made.status == "ok", made.error
    for attempt in (
        f'await kv.open("/home/{owner}/notes", write=True)',
        f'await kv.unlink("/home/{owner}/notes")',
        f'await kv.create("/home/{owner}/intruder")',
        f'await kv.chmod("/home/{owner}/notes", 0o666)',
    ):
        out = kernels[other].run(f"%%lip\n{attempt}\n")
        assert out.status == "error" and out.error is not None
        assert out.error["ename"] == "PermissionDenied", (attempt, out.error)
    check = kernels[owner].run(f'%%lip\nprint((await kv.stat("/home/{owner}/notes")).tokens)\n')
    assert check.status == "ok" and int(check.stdout.split()[-1]) > 0


def test_kill_9_of_a_kernel_mid_lip_reaps_it_and_the_other_finishes(engine: Engine) -> None:
    victim, bob = Kernel("carol", engine.runtime), Kernel("dave", engine.runtime)
    show_pages = 'print("pages", (await kv.stat(f)).num_pages, flush=True)'
    try:
        with engine.client() as c:
            before = c.call("stat_engine")["pages_used"]
        reference = bob.run(decode_cell("reference", "The module", 200, after=show_pages))
        bob_held = int(reference.stdout.split("pages")[-1].split()[0])  # the most it holds
        victim_cell = (
            decode_cell("victim", INTRO * 4, 200)  # more pages than bob's, within 512 positions
            .replace("out = []\n", f"out = []\n{show_pages}\n")
            .replace("    out.append", "    await sleep(0.01)\n    out.append")
        )  # runs for seconds
        victim_id = victim.start(victim_cell)
        bob_id = bob.start(decode_cell("survivor", "The module", 200))
        started = victim.collect(victim_id, until="token")
        pid, victim_held = started.pid, int(started.stdout.split("pages")[1].split()[0])
        assert victim_held > bob_held  # so that a page it kept would show below
        os.kill(victim.pid, signal.SIGKILL)
        killed = time.monotonic()
        with engine.client() as c:
            while next(p.state for p in c.call("ps") if p.pid == pid) != "exited":
                assert time.monotonic() - killed < REAPED_WITHIN, "not reaped in time"
                time.sleep(0.02)
            reaped = time.monotonic() - killed
            assert c.call("stat_engine")["pages_used"] <= before + bob_held
        out = bob.collect(bob_id)
        assert out.status == "ok", out.error
        assert out.done() == reference.done()  # the survivor's output is unharmed
        with engine.client() as c:
            assert c.call("stat_engine")["pages_used"] == before  # every page came back
        print(f"reaped {reaped:.2f} s after kill -9")
    finally:
        for k in (bob, victim):
            with contextlib.suppress(Exception):
                k.shutdown()


def test_a_server_cell_runs_beside_the_engine_and_calls_a_tool(kernels: dict[str, Kernel]) -> None:
    alice, bob = kernels["alice"], kernels["bob"]
    defined = alice.run(
        """from workbench import tool

@tool
def word_count(text: str) -> int:
    return len(text.split())
"""
    )
    assert defined.status == "ok", defined.error
    body = 'f = await kv.create()\nd = await forward(f, tokenize("The return value"))\n'
    body += 'print("top", d.ids[:3])\n'
    remote = alice.run(
        f"%%lip --server --name remote\n{body}print(await tool('word_count', 'a b c'))\n"
    )
    local = alice.run(f"%%lip --name local\n{body}")
    assert remote.status == "ok", remote.error
    assert "engine-side worker" in remote.displays[0] and "exited" in remote.displays[-1]
    top = re.search(r"top \[.*\]", remote.stdout)
    assert top is not None and top.group(0) in local.stdout  # same model, same answer
    assert remote.stdout.splitlines()[-1] == "3"
    from_bob = bob.run('%%lip\nprint(await tool("word_count", "x y"))\n')  # any LIP may call it
    assert from_bob.status == "ok" and from_bob.stdout.strip() == "2", from_bob.error
    failed = alice.run('%%lip --server\nx = 1\nraise ValueError("nope")\n')
    assert failed.status == "error" and failed.error is not None
    assert failed.error["ename"] == "ProcessFailed" and "ValueError: nope" in failed.stdout
    assert "line 3" in failed.stdout  # the worker's traceback names the cell's line


def test_the_stop_button_ends_the_process_and_reclaims_its_pages(
    engine: Engine, kernels: dict[str, Kernel]
) -> None:
    alice = kernels["alice"]
    with engine.client() as c:
        before = c.call("stat_engine")["pages_used"]
    cell = decode_cell("endless", INTRO * 4, 100_000).replace(
        "    out.append", "    await sleep(0.005)\n    out.append"
    )
    msg_id = alice.start(cell)
    running = alice.collect(msg_id, until="token")
    with engine.client() as c:
        listed = {p.pid: p for p in c.call("ps")}[running.pid]
        assert listed.state != "exited" and listed.name == "endless"  # listed while it runs
        assert c.call("stat_engine")["pages_used"] > before
    alice.km.interrupt_kernel()
    stopped = time.monotonic()
    out = alice.collect(msg_id)
    assert out.status == "error" and out.error is not None
    assert out.error["ename"] == "KeyboardInterrupt"
    assert "ended: interrupted" in out.displays[-1]
    with engine.client() as c:
        info = {p.pid: p for p in c.call("ps")}[running.pid]
        assert info.state == "exited" and info.error == "interrupted"
        assert c.call("stat_engine")["pages_used"] == before  # at once: no heartbeat involved
    assert time.monotonic() - stopped < 5
    assert alice.run("print(1 + 1)").stdout.strip() == "2"  # the kernel is fine
