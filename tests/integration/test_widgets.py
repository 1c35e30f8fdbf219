"""The widgets against a real engine: after a scripted sequence of operations, each view's data
equals what the engine reports (walk, stat, pages, ps, trace, stat_engine), and the widget
objects, built in-process without a browser, hold figures with the expected numbers of marks."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from engine_process import engine_process

from engine.wire.errors import PermissionDenied
from engine.wire.records import Distribution, Event, FileStat, PageMap, ProcessInfo
from workbench.client import LIP, Client, Sample
from workbench.widgets import ForkGraphView, KVTreeView, PageMapView, TimelineView, TokenView
from workbench.widgets.kv_data import SHARED, unique_files
from workbench.widgets.timeline import BATCHES, COMPUTING, SIZES, SUSPENDED, SWAPS, TOOLS, TRACES

PROMPT = [5, 17, 42, 9, 100, 3, 77, 8, 61, 12]  # 10 tokens: pages of 4 + 4 + 2
DECODERS = 3
STEPS = 12


@pytest.fixture(scope="module")
def conn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    tmp = tmp_path_factory.mktemp("widgets")
    with engine_process(tmp, "--num-pages", "128", "--page-size", "4") as engine:
        yield engine.conn


@dataclass
class Seen:
    """What the engine reported after the scenario, and the views built from it."""

    stats: list[FileStat]
    pages: PageMap
    ps: list[ProcessInfo]
    trace: list[Event]
    engine: dict[str, Any]
    listed: list[str]  # files found by listdir, recursively
    stat: dict[str, FileStat]  # kv.stat of each
    views: dict[str, Any]
    lip_view_files: list[str]  # files a view through the builder process saw
    bob_files: list[str]
    denied: bool  # alice may not read bob's private file
    decoder_pids: list[int]
    steps: list[tuple[Distribution, int]]
    live_polls: int
    live_stopped: bool
    timeline_calls_while_live: int
    extra: dict[str, Any] = field(default_factory=dict)


async def listdir_all(client: Client, path: str = "/") -> list[str]:
    out = []
    for name in await client.listdir(path):
        full = path.rstrip("/") + "/" + name.rstrip("/")
        out += await listdir_all(client, full) if name.endswith("/") else [full]
    return sorted(out)


async def decode(lip: LIP, steps: list[tuple[Distribution, int]] | None) -> None:
    """Fork the prompt into /proc and decode greedily, keeping each step's distribution."""
    f = await lip.kv.fork("/home/alice/prompt")
    d = await lip.forward(f, [lip.pid % 200])
    for _ in range(STEPS):
        t = d.argmax()
        if steps is not None:
            steps.append((d, t))
        d = await lip.forward(f, [t])


async def scenario(conn: Path) -> Seen:
    alice = await Client.connect(conn, user="alice")
    bob = await Client.connect(conn, user="bob")
    builder = await alice.attach("builder")
    kv = builder.kv
    prompt = await kv.create("/home/alice/prompt")
    await builder.forward(prompt, PROMPT)
    a = await kv.fork(prompt, "/home/alice/a")
    await builder.forward(a, [1, 2, 3])  # writes into the shared last page: copies it
    b = await kv.fork(prompt, "/home/alice/b")
    await kv.truncate(b, 6)
    c = await kv.fork(a, "/home/alice/c")
    await builder.forward(c, [7], returns=Sample())
    await kv.link(b, "/shared/b")
    await kv.chmod("/shared/b", 0o644)
    scratch = await kv.create()  # /proc/<pid>/kv..: the builder's own
    await builder.forward(scratch, [1, 2])
    bob_lip = await bob.attach("bob")
    await bob_lip.forward(await bob_lip.kv.create("/home/bob/secret"), [4, 4, 4])
    await bob_lip.exit()

    live = TimelineView(alice, interval=0.05)  # polls while the decoders run
    decoders = [await alice.attach(f"decoder-{i}") for i in range(DECODERS)]
    steps: list[tuple[Distribution, int]] = []
    await asyncio.gather(
        *(decode(lip, steps if i == 0 else None) for i, lip in enumerate(decoders))
    )
    for lip in decoders:
        await lip.exit()
    await asyncio.sleep(0.2)
    live_polls, calls_while_live = live.polls, len(live.data.calls) if live.data else 0
    live.close()
    await asyncio.sleep(0.1)

    views = {
        "tree": KVTreeView(alice, live=False),
        "forks": ForkGraphView(alice, live=False),
        "pages": PageMapView(alice, live=False),
        "timeline": TimelineView(alice, live=False),
    }
    for view in views.values():
        await view.refresh()
    tokens = TokenView(builder)
    for d, t in steps:
        tokens.add(d, t)
    tokens.draw()
    views["tokens"] = tokens
    await views["tree"].load_file("/home/alice/a")
    views["forks"].select("/home/alice/a")
    lip_view = KVTreeView(builder, live=False)
    await lip_view.refresh()

    stats = await alice.walk()
    listed = await listdir_all(alice)
    try:
        await alice.read("/home/bob/secret")
        denied = False
    except PermissionDenied:
        denied = True
    seen = Seen(
        stats=stats,
        pages=await alice.pages(),
        ps=await alice.ps(),
        trace=await alice.trace(),
        engine=await alice.stat_engine(),
        listed=listed,
        stat={p: await alice.stat(p) for p in listed},
        views=views,
        lip_view_files=[n.id for n in lip_view.data if n.kind == "file"],
        bob_files=[s.path for s in await bob.walk()],
        denied=denied,
        decoder_pids=[lip.pid for lip in decoders],
        steps=steps,
        live_polls=live_polls,
        live_stopped=not live.live,
        timeline_calls_while_live=calls_while_live,
    )
    seen.extra["builder_pid"] = builder.pid
    seen.extra["tokens_of"] = {s.path: await alice.read(s.path) for s in stats}
    await builder.exit()
    await alice.close()
    await bob.close()
    return seen


@pytest.fixture(scope="module")
def seen(conn: Path) -> Seen:
    return asyncio.run(scenario(conn))


def without_last_use(st: FileStat) -> FileStat:
    return st._replace(last_use=0.0)


def test_the_tree_is_every_readable_file_with_its_stat(seen: Seen) -> None:
    files = [n for n in seen.views["tree"].data if n.kind == "file"]
    assert [n.id for n in files] == [s.path for s in seen.stats] == seen.listed
    assert seen.listed == [
        "/home/alice/a",
        "/home/alice/b",
        "/home/alice/c",
        "/home/alice/prompt",
        "/shared/b",
    ]  # not bob's private file, not the builder's /proc file
    for n in files:
        assert without_last_use(n.stat) == without_last_use(seen.stat[n.id])
    dirs = {n.id: n for n in seen.views["tree"].data if n.kind == "dir"}
    assert dirs["/home/alice"].files == 4
    assert dirs["/"].tokens == sum(s.tokens for s in seen.stats)
    assert seen.denied and "/home/alice/a" not in seen.bob_files
    assert "/home/bob/secret" in seen.bob_files and "/shared/b" in seen.bob_files
    builder_files = [p for p in seen.lip_view_files if p.startswith("/proc/")]
    assert builder_files == [f"/proc/{seen.extra['builder_pid']}/kv0"]  # a LIP sees its own


def test_selecting_a_file_shows_its_tokens_page_by_page(seen: Seen) -> None:
    runs = seen.views["tree"].runs
    st = seen.stat["/home/alice/a"]
    assert [r.page for r in runs] == list(st.page_table)
    assert [t for r in runs for t in r.tokens] == seen.extra["tokens_of"]["/home/alice/a"]
    assert [len(r.tokens) for r in runs] == [4, 4, 4, 1]
    for r in runs:  # each page names the other readable files holding it
        holders = {p for p, s in seen.stat.items() if r.page in s.page_table} - set(st.names)
        assert set(r.sharers) == {min(seen.stat[p].names) for p in holders}
    assert runs[0].sharers and not runs[-1].sharers
    assert "border-left" in seen.views["tree"].tokens_html.value


def test_fork_graph_nodes_edges_and_shared_prefixes(seen: Seen) -> None:
    graph = seen.views["forks"].data
    files = {s.path for s in unique_files(seen.stats)}
    assert {n.id for n in graph.nodes} == files  # /shared/b is /home/alice/b: one node
    edges = {(e.parent, e.child): e for e in graph.edges}
    assert set(edges) == {
        ("/home/alice/prompt", "/home/alice/a"),
        ("/home/alice/prompt", "/home/alice/b"),
        ("/home/alice/a", "/home/alice/c"),
    }
    assert edges[("/home/alice/prompt", "/home/alice/a")].prefix == 10
    assert edges[("/home/alice/prompt", "/home/alice/b")].prefix == 6  # truncated
    assert edges[("/home/alice/a", "/home/alice/c")].prefix == 13
    for (parent, child), e in edges.items():
        assert e.num_shared_pages == seen.stat[child].shared_with[parent]
    highlight = seen.views["forks"].highlight  # a is selected
    assert highlight == {
        "/home/alice/prompt": seen.stat["/home/alice/a"].shared_with["/home/alice/prompt"],
        "/home/alice/b": seen.stat["/home/alice/a"].shared_with["/home/alice/b"],
        "/home/alice/c": seen.stat["/home/alice/a"].shared_with["/home/alice/c"],
    }


def test_page_map_counts_match_the_engine(seen: Seen) -> None:
    data = seen.views["pages"].data
    e = seen.engine
    assert len(data.cells) == e["pages_total"] + e["pages_swapped"]
    assert data.counts["free"] == e["pages_free"]
    assert data.counts["cached"] == e["pages_cached"]
    assert data.counts["private"] + data.counts["shared"] == e["pages_used"]
    assert data.counts["swapped"] == e["pages_swapped"] == 0
    assert data.counts["shared"] == sum(1 for n in seen.pages.refcount if n > 1)
    assert sum(data.shared_by.values()) == data.counts["shared"]
    for s in seen.stats:
        cells = [data.cells[p] for p in s.page_table]
        assert all(set(c.files) & set(s.names) for c in cells)
        assert sum(c.state == SHARED for c in cells) == s.num_shared_pages


def test_timeline_lanes_are_the_processes_and_batches_the_trace(seen: Seen) -> None:
    data = seen.views["timeline"].data
    ran = {p.pid: p for p in seen.ps}
    assert [lane.pid for lane in data.lanes] == sorted(ran)
    assert all(lane.name == ran[lane.pid].name for lane in data.lanes)
    assert all(lane.end is not None for lane in data.lanes if ran[lane.pid].state == "exited")
    batches = [e for e in seen.trace if e.kind == "batch"]
    assert [b.batch for b in data.batches] == [e.data["batch"] for e in batches]
    assert [b.size for b in data.batches] == [len(e.data["sizes"]) for e in batches]
    assert [b.tokens for b in data.batches] == [e.data["tokens"] for e in batches]
    calls = {p.pid: p.calls for p in seen.ps}
    for pid, n in calls.items():
        assert sum(1 for c in data.calls if c.pid == pid and c.finished is not None) == n
    assert any(len(set(b.pids) & set(seen.decoder_pids)) > 1 for b in data.batches)
    assert seen.live_polls > 2 and seen.timeline_calls_while_live > 0 and seen.live_stopped


def test_timeline_filtered_by_pid(seen: Seen) -> None:
    view = seen.views["timeline"]
    pid = seen.decoder_pids[0]
    view.pid_box.value = str(pid)
    try:
        data = view.data
        assert [lane.pid for lane in data.lanes] == [pid]
        assert data.batches and all(pid in b.pids for b in data.batches)
        assert {c.pid for c in data.calls} == {pid}
    finally:
        view.pid_box.value = ""


def test_token_view_steps_are_the_distributions(seen: Seen) -> None:
    steps = seen.views["tokens"].steps
    assert len(steps) == STEPS == len(seen.steps)
    for step, (d, t) in zip(steps, seen.steps, strict=True):
        assert step.chosen.id == t and step.rank == d.ids.index(t) == 0
        assert [c.id for c in step.alternatives] == d.ids[:5]
        assert [c.prob for c in step.alternatives] == d.probs[:5]
        assert step.chosen.prob == d.probs[0]


def test_figures_hold_the_expected_marks(seen: Seen) -> None:
    tree, forks, pages, timeline = (seen.views[k] for k in ("tree", "forks", "pages", "timeline"))
    assert len(tree.figure.data[0].ids) == len(tree.data)
    lines, labels, nodes, cached, spliced = forks.figure.data
    assert len(cached.x or ()) == 3 * len(forks.data.cached)  # prefix-cache lines, if any
    assert not spliced.x and not forks.data.spliced  # forks only: nothing spliced
    assert len(nodes.x) == len(forks.data.nodes) == 4
    assert len(labels.text) == len(forks.data.edges) == 3
    assert sorted(labels.text) == ["10", "13", "6"]
    assert len(lines.x) == 3 * len(forks.data.edges)
    z = [v for row in pages.figure.data[0].z for v in row if v is not None]
    assert len(z) == seen.engine["pages_total"]
    data = timeline.data
    traces = timeline.figure.data
    computing, suspended = traces[COMPUTING], traces[SUSPENDED]
    batches, sizes = traces[BATCHES], traces[SIZES]
    assert len(traces) == TRACES and len(traces[TOOLS].x) == len(traces[SWAPS].x) == 0
    assert len(computing.x) == sum(1 for c in data.calls if c.started is not None)
    assert len(batches.x) == len(sizes.y) == len(data.batches)
    assert list(sizes.y) == [b.size for b in data.batches]
    callers = {c.pid for c in data.calls}
    assert set(computing.y) == {lane.label for lane in data.lanes if lane.pid in callers}
    assert suspended.x is None or len(suspended.x) == 0
    assert len(seen.views["tokens"].table.value) > 0
