"""The widgets' data, from made-up engine replies: tree, fork graph, page map, timeline, tokens."""

from __future__ import annotations

import math

import pytest

from engine.wire.records import Distribution, Event, FileStat, PageMap, ProcessInfo
from workbench.lib.speculative import Verification
from workbench.widgets.kv_data import (
    FREE,
    CacheEdge,
    Filter,
    SpliceEdge,
    cell_text,
    common_prefix,
    file_pages,
    fork_graph,
    grid_shape,
    page_map,
    sharing,
    tree_nodes,
    unique_files,
)
from workbench.widgets.page_map import COLOURS, code, counts_line
from workbench.widgets.style import (
    ACCEPTED_COLOUR,
    CACHED_COLOUR,
    FREE_COLOUR,
    OTHER_COLOUR,
    REJECTED_COLOUR,
    shared_colour,
)
from workbench.widgets.timeline import summary_table
from workbench.widgets.token_data import masked_step, token_steps, top_of_logits, verification_steps
from workbench.widgets.token_view import TokenView
from workbench.widgets.trace_data import Swap, TimelineBuilder, family, summary, window


def stat(path: str, pages: tuple[int, ...] = (), **kw: object) -> FileStat:
    fields = dict(
        path=path,
        tokens=4 * len(pages),
        num_pages=len(pages),
        num_shared_pages=0,
        shared_with={},
        parent=None,
        owner="alice",
        pid=None,
        mode=0o600,
        created=0.0,
        last_use=0.0,
        hidden=0,
        page_table=pages,
        names=(path,),
        open_handles=0,
    )
    fields.update(kw)
    return FileStat(**fields)  # type: ignore[arg-type]


# ---- tree ----


def test_tree_has_the_roots_and_sums_directories() -> None:
    stats = [stat("/home/a/x", (1, 2)), stat("/home/a/deep/y", (3,)), stat("/shared/z", (4,))]
    nodes = {n.id: n for n in tree_nodes(stats)}
    assert set(nodes) == {
        "/", "/proc", "/home", "/shared", "/home/a", "/home/a/deep",
        "/home/a/x", "/home/a/deep/y", "/shared/z",
    }  # fmt: skip
    assert nodes["/"].parent == "" and nodes["/home/a/deep/y"].parent == "/home/a/deep"
    assert (nodes["/home/a"].files, nodes["/home/a"].num_pages, nodes["/"].num_pages) == (2, 3, 4)
    assert nodes["/proc"].files == 0 and nodes["/home/a/x"].stat == stats[0]


def test_tree_filters_by_path_and_pid() -> None:
    stats = [stat("/home/a/x", pid=3), stat("/home/a/y", pid=4), stat("/shared/z", pid=3)]
    files = lambda flt: [n.id for n in tree_nodes(stats, flt) if n.kind == "file"]  # noqa: E731
    assert files(Filter("/home/a")) == ["/home/a/x", "/home/a/y"]
    assert files(Filter("/home/a/")) == ["/home/a/x", "/home/a/y"]
    assert files(Filter("/home/a/x")) == ["/home/a/x"]
    assert files(Filter(pid=3)) == ["/home/a/x", "/shared/z"]
    assert files(Filter("/home", pid=4)) == ["/home/a/y"]
    assert files(Filter("/home/a/xy")) == []  # a prefix of a name is not a directory


# ---- one file's pages ----


def test_file_pages_cut_tokens_and_name_sharers() -> None:
    pm = PageMap(4, [0, 2, 3, 1], [[], ["/f"], ["/f", "/g"], ["/f"]], {}, 0)
    st = stat("/f", (1, 2, 3), tokens=10)
    runs = file_pages(st, list(range(10)), [str(i) for i in range(10)], pm)
    assert [r.tokens for r in runs] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [r.sharers for r in runs] == [(), ("/g",), ()]
    assert [r.unseen for r in runs] == [1, 1, 0]  # one holder each that this reader cannot see
    assert runs[2].start == 8 and runs[2].pieces == ["8", "9"]


# ---- fork graph ----


def test_fork_graph_labels_edges_with_the_shared_prefix() -> None:
    stats = [
        stat("/p", (1, 2)),
        stat("/a", (1, 3), parent="/p", shared_with={"/p": 1}),
        stat("/b", (1, 2), parent="/p", shared_with={"/p": 2}, names=("/b", "/s/b")),
        stat("/s/b", (1, 2), parent="/p", shared_with={"/p": 2}, names=("/b", "/s/b")),
        stat("/c", (4,), parent="/gone"),
    ]
    tokens = {"/p": [1, 2, 3, 4], "/a": [1, 2, 9], "/b": [1, 2, 3, 4, 5], "/c": [7]}
    g = fork_graph(stats, tokens)
    assert {n.id: n.kind for n in g.nodes} == {
        "/p": "file", "/a": "file", "/b": "file", "/gone": "gone", "/c": "file",
    }  # fmt: skip
    edges = {(e.parent, e.child): (e.prefix, e.num_shared_pages) for e in g.edges}
    assert edges == {("/p", "/a"): (2, 1), ("/p", "/b"): (4, 2), ("/gone", "/c"): (None, 0)}
    depth = {n.id: n.depth for n in g.nodes}
    assert depth == {"/p": 0, "/a": 1, "/b": 1, "/gone": 0, "/c": 1}
    y = {n.id: n.y for n in g.nodes}
    assert y["/p"] == (y["/a"] + y["/b"]) / 2 and len(set(y.values())) == 4
    assert sharing(stats[1], g) == {"/p": 1}


def test_fork_graph_shows_pages_taken_from_the_prefix_cache_apart_from_forks() -> None:
    a = stat("/home/alice/a", (1, 2, 3))
    b = stat("/home/alice/b", (1, 2, 4), cached_from={"/home/alice/a": 2})
    c = stat("/home/alice/c", (5,), cached_from={"/proc/9/kv0": 1}, parent="/home/alice/a")
    graph = fork_graph([a, b, c], {})
    assert graph.cached == [CacheEdge("/home/alice/a", "/home/alice/b", 2)]  # c's source: gone
    assert [(e.parent, e.child) for e in graph.edges] == [("/home/alice/a", "/home/alice/c")]
    only_b = fork_graph([a, b, c], {}, Filter("/home/alice/b"))
    assert only_b.cached == []  # a is not shown: no line to draw


def test_fork_graph_draws_an_edge_for_each_file_spliced_into_another(tiny_loaded) -> None:  # noqa: ANN001
    """The engine's own stats after real splices: one edge per (source, file) the test spliced,
    with the tokens it took; a source no longer shown draws none."""
    import asyncio

    from engine.kernel import Kernel
    from engine.syscalls import Syscalls
    from engine.wire.records import Logits

    made: dict[tuple[str, str], int] = {}  # the oracle: (source, file) -> tokens spliced

    async def program(sys: Syscalls) -> list[FileStat]:
        paths = [f"/home/local/t/{name}" for name in ("root", "a", "b", "merged", "gone")]
        root = await sys.kv.create(paths[0])
        await sys.forward(root, list(range(1, 7)), returns=Logits())
        a, b = await sys.kv.fork(root, paths[1]), await sys.kv.fork(root, paths[2])
        await sys.forward(a, [7, 8, 9], returns=Logits())
        await sys.forward(b, [10, 11], returns=Logits())
        gone = await sys.kv.create(paths[4])
        await sys.forward(gone, [12, 13], returns=Logits())
        merged = await sys.kv.create(paths[3])
        for src, path, start, stop in ((a, paths[1], 0, 9), (b, paths[2], 6, 8)):
            await sys.kv.splice(merged, src, start, stop)
            made[path, paths[3]] = made.get((path, paths[3]), 0) + stop - start
        await sys.kv.splice(merged, a, 7, 9)
        made[paths[1], paths[3]] += 2
        await sys.kv.splice(merged, gone)
        await sys.kv.unlink(paths[4])  # spliced from, then gone: no node, no edge
        stats = await sys.kv.walk("/home/local/t")
        for path in paths[:4]:
            await sys.kv.unlink(path)
        return stats

    async def main() -> list[FileStat]:
        kernel = Kernel(tiny_loaded, num_pages=32, page_size=4)
        async with kernel:
            return await kernel.wait(kernel.spawn(program))

    stats = asyncio.run(main())
    graph = fork_graph(stats, {})
    assert sorted(graph.spliced) == sorted(SpliceEdge(s, f, n) for (s, f), n in made.items())
    assert {(e.parent, e.child) for e in graph.edges} == {
        ("/home/local/t/root", "/home/local/t/a"),
        ("/home/local/t/root", "/home/local/t/b"),
    }  # a splice is not a fork
    assert fork_graph(stats, {}, Filter("/home/local/t/merged")).spliced == []


def test_fork_graph_collapses_many_children_until_expanded() -> None:
    stats = [stat("/p")] + [stat(f"/k{i}", parent="/p") for i in range(6)]
    g = fork_graph(stats, {}, max_children=3)
    kinds = sorted(n.kind for n in g.nodes)
    assert kinds == ["collapsed", "file", "file", "file"]
    group = next(n for n in g.nodes if n.kind == "collapsed")
    assert group.hidden == ("/k2", "/k3", "/k4", "/k5") and group.id == "/p (+4 more)"
    assert len(g.edges) == 3
    assert len(fork_graph(stats, {}, max_children=3, expanded={"/p"}).nodes) == 7


def test_fork_graph_survives_a_cycle_of_renames() -> None:
    stats = [stat("/a", parent="/b"), stat("/b", parent="/a"), stat("/c", parent="/c")]
    g = fork_graph(stats, {})
    assert sorted(n.id for n in g.nodes) == ["/a", "/b", "/c"]


def test_unique_files_and_common_prefix() -> None:
    one = ("/x", "/y")
    assert [s.path for s in unique_files([stat("/y", names=one), stat("/x", names=one)])] == ["/x"]
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2 and common_prefix([], [1]) == 0


# ---- page map ----


def test_page_map_states_counts_swapped_and_filter() -> None:
    pm = PageMap(16, [0, 1, 2, 3, 1], [[], ["/a"], ["/a", "/b"], ["/a"], []], {"/a": 2}, 3)
    data = page_map(pm)
    assert [c.state for c in data.cells] == [
        "free", "private", "shared", "shared", "private", "swapped", "swapped", "swapped",
    ]  # fmt: skip
    assert data.counts == {"free": 1, "cached": 0, "private": 2, "shared": 2, "swapped": 3}
    assert data.shared_by == {2: 1, 3: 1}
    assert [c.files for c in data.cells[5:]] == [("/a",), ("/a",), ()]
    kept = page_map(pm, [stat("/a", pid=7), stat("/b", pid=8)], Filter(pid=8))
    assert [c.kept for c in kept.cells] == [False, False, True, False, False, False, False, False]
    assert [c.kept for c in page_map(pm, flt=Filter("/a")).cells][:6] == [
        False, True, True, True, False, True,
    ]  # fmt: skip
    assert grid_shape(8) == (2, 4) and grid_shape(1024) == (23, 45) and grid_shape(5, 2) == (3, 2)


def test_page_map_colours_have_keys_and_free_pages_stay_free() -> None:
    seven = [f"/s{i}" for i in range(7)]
    pm = PageMap(16, [0, 1, 2, 7, 7], [[], ["/a"], ["/a", "/b"], seven, seven], {}, 0)
    data = page_map(pm)
    assert [COLOURS[code(c)] for c in data.cells[2:]] == [shared_colour(2)] + [shared_colour(7)] * 2
    line = counts_line(data)
    assert "shared 3:" in line and "by 2 files: 1" in line and "by 7 files: 2" in line
    assert shared_colour(2) in line and shared_colour(7) in line and OTHER_COLOUR not in line
    # filtered to /a: the free page is drawn free, the pages of the other files grey
    only_a = page_map(pm, flt=Filter("/a"))
    assert [code(c) for c in only_a.cells] == [0, 1, 2, 8, 8]
    assert only_a.cells[0].state == FREE and not only_a.cells[0].kept
    line = counts_line(only_a)
    assert OTHER_COLOUR in line and "outside the filter 2" in line


def test_cached_pages_are_drawn_apart_from_free_ones_whatever_the_filter() -> None:
    pm = PageMap(16, [0, 0, 1], [[], [], ["/a"]], {}, 0, cached=[1])
    data = page_map(pm, flt=Filter("/b"))
    assert [c.state for c in data.cells] == ["free", "cached", "private"]
    assert [COLOURS[code(c)] for c in data.cells] == [FREE_COLOUR, CACHED_COLOUR, OTHER_COLOUR]
    line = counts_line(data)
    assert "cached 1" in line and "outside the filter 1" in line
    assert "prefix sharing" in cell_text(data.cells[1], 16)


# ---- timeline ----


def ev(seq: int, t: float, kind: str, pid: int | None, **data: object) -> Event:
    return Event(seq, t, kind, pid, data)


EVENTS = [
    ev(0, 0.0, "process", 1, old=None, new="ready", name="one", owner="alice"),
    ev(1, 0.1, "process", 2, old=None, new="ready", name="two", owner="bob"),
    ev(2, 0.2, "call.submitted", 1, call=1, tokens=5),
    ev(3, 0.25, "call.submitted", 2, call=2, tokens=1),
    ev(4, 0.3, "call.started", 1, call=1, batch=1),
    ev(5, 0.3, "call.started", 2, call=2, batch=1),
    ev(6, 0.4, "batch", None, batch=1, pids=[1, 2], calls=[1, 2], sizes=[5, 1], tokens=6,
       seconds=0.1, policy="eager"),
    ev(7, 0.4, "call.finished", 1, call=1, tokens=5, waited=0.1, error=None),
    ev(8, 0.4, "call.finished", 2, call=2, tokens=1, waited=0.05, error=None),
    ev(9, 0.5, "process", 2, old="ready", new="suspended", pages_swapped=3),
    ev(10, 0.6, "call.submitted", 1, call=3, tokens=1),
    ev(11, 0.7, "process", 2, old="suspended", new="ready"),
    ev(12, 0.8, "call.submitted", 2, call=4, tokens=1),
    ev(13, 0.9, "process", 2, old="ready", new="exited", error="killed", pages_freed=3),
]  # fmt: skip


def test_timeline_folds_calls_batches_and_suspensions() -> None:
    b = TimelineBuilder()
    assert b.add(EVENTS) == len(EVENTS) and b.last_seq == 13
    d = b.data()
    assert [(lane.pid, lane.name, lane.owner, lane.end) for lane in d.lanes] == [
        (1, "one", "alice", None),
        (2, "two", "bob", 0.9),
    ]
    calls = {c.call: c for c in d.calls}
    assert (calls[1].submitted, calls[1].started, calls[1].finished) == (0.2, 0.3, 0.4)
    assert calls[3].started is None and calls[3].finished is None  # still waiting
    assert calls[4].finished == 0.9 and calls[4].error == "process exited"
    assert [(s.pid, s.start, s.end, s.pages_out) for s in d.suspensions] == [(2, 0.5, 0.7, 3)]
    (batch,) = d.batches
    assert (batch.start, batch.end, batch.size, batch.tokens) == (pytest.approx(0.3), 0.4, 2, 6)
    assert batch.policy == "eager"
    assert d.now == 0.9
    only = b.data(pid=1)
    assert [lane.pid for lane in only.lanes] == [1] and {c.pid for c in only.calls} == {1}
    assert only.batches == d.batches and b.data(pid=9).lanes == []


def test_timeline_pages_on_and_names_processes_it_saw_late() -> None:
    b = TimelineBuilder(max_calls=2)
    b.add(EVENTS[2:6])
    assert b.add(EVENTS[:8]) == 2  # what it had seen is skipped
    assert b.data().lanes[0].name == "?"
    info = ProcessInfo(1, "late", "carol", "ready", 0, None, 0, 0, 0, 0.0, 0.0, 0.0, None, None)
    b.add_processes([info])
    assert b.data().lanes[0][:3] == (1, "late", "carol")
    b.add(EVENTS[8:])
    assert len(b.calls) == 2  # the oldest forgotten


FAMILY = [
    ev(0, 0.0, "process", 1, old=None, new="ready", name="main", owner="al", parent=None),
    ev(1, 0.1, "process", 2, old=None, new="ready", name="other", owner="al", parent=None),
    ev(2, 0.2, "process", 3, old=None, new="ready", name="child", owner="al", parent=1),
    ev(3, 0.3, "process", 4, old=None, new="ready", name="grandchild", owner="al", parent=3),
    ev(4, 0.4, "process", 5, old=None, new="ready", name="late", owner="al", parent=1),
    ev(5, 1.0, "tool.started", 3, call=7, tool="search"),
    ev(6, 1.5, "tool.finished", 3, call=7, tool="search", error=None),
    ev(7, 1.6, "tool.started", 4, call=8, tool="search"),
    ev(8, 2.0, "process", 2, old="waiting", new="suspended", pages_swapped=4),
    ev(9, 2.5, "process", 2, old="suspended", new="waiting", pages_swapped_in=4),
    ev(10, 2.6, "process", 5, old="ready", new="suspended", pages_swapped=2),
    ev(11, 2.8, "process", 4, old="waiting", new="exited", error="killed"),
]  # fmt: skip


def test_timeline_puts_spawned_children_under_their_parent() -> None:
    b = TimelineBuilder()
    b.add(FAMILY)
    lanes = b.data().lanes
    assert [(lane.pid, lane.depth, lane.parent) for lane in lanes] == [
        (1, 0, None),
        (3, 1, 1),
        (4, 2, 3),
        (5, 1, 1),
        (2, 0, None),
    ]
    assert lanes[2].label == "↳ ↳ 4 grandchild" and lanes[4].label == "2 other"
    assert [(lane.pid, lane.depth) for lane in b.data(pid=4).lanes] == [(4, 0)]  # no parent shown
    assert family(b.data(), 1) == {1, 3, 4, 5} and family(b.data(), 3) == {3, 4}
    assert family(b.data(), 2) == {2}


def test_timeline_shows_tool_waits_suspensions_and_swaps() -> None:
    b = TimelineBuilder()
    b.add(FAMILY)
    d = b.data()
    assert [(t.pid, t.tool, t.start, t.end, t.error) for t in d.tools] == [
        (3, "search", 1.0, 1.5, None),
        (4, "search", 1.6, 2.8, "process exited"),  # its process ended while it waited
    ]
    assert [(s.pid, s.start, s.end, s.pages_out, s.pages_in) for s in d.suspensions] == [
        (2, 2.0, 2.5, 4, 4),
        (5, 2.6, None, 2, None),
    ]
    assert d.swaps == [Swap(2, 2.0, 4, True), Swap(2, 2.5, 4, False), Swap(5, 2.6, 2, True)]
    assert b.data(pid=3).tools == d.tools[:1] and b.data(pid=3).swaps == []


def test_window_cuts_one_run_out_on_its_own_clock() -> None:
    b = TimelineBuilder()
    b.add(EVENTS)  # pids 1 and 2, from 0.0 to 0.9
    later = [e._replace(seq=e.seq + 100, t=e.t + 10, pid=e.pid and e.pid + 10) for e in EVENTS]
    for i, e in enumerate(later):  # the same run again, ten seconds on, as pids 11 and 12
        if e.kind == "batch":
            later[i] = e._replace(data={**e.data, "pids": [11, 12], "batch": 2})
        elif "call" in e.data:
            later[i] = e._replace(data={**e.data, "call": e.data["call"] + 10})
    b.add(later)
    first, again = window(b.data(), [1, 2]), window(b.data(), [11, 12])
    assert [lane.pid for lane in again.lanes] == [11, 12] and len(again.batches) == 1
    assert again.now == pytest.approx(0.9) and again.lanes[1].end == pytest.approx(0.9)
    assert [c.submitted for c in again.calls] == pytest.approx([c.submitted for c in first.calls])
    ((start, end),) = [(s.start, s.end) for s in again.suspensions]
    assert (start, end) == (pytest.approx(0.5), pytest.approx(0.7))
    assert window(b.data(), [1]).batches == first.batches  # a batch of both is in each's run
    assert window(b.data(), [99]).lanes == [] and summary(window(b.data(), [99])).batches == 0


def test_summary_counts_what_the_scheduler_did() -> None:
    b = TimelineBuilder()
    b.add(EVENTS + FAMILY[1:2])
    s = summary(b.data())
    assert (s.processes, s.batches, s.calls, s.tokens, s.calls_per_batch) == (2, 1, 2, 6, 2.0)
    assert s.seconds == pytest.approx(0.2)  # from the first submission (0.2) to the last result
    assert s.waited == pytest.approx(0.1 + 0.05)
    assert (s.suspensions, s.pages_swapped, s.tool_seconds) == (1, 3, 0.0)
    f = TimelineBuilder()
    f.add(FAMILY)
    assert summary(f.data()).tool_seconds == pytest.approx(0.5 + 1.2)
    assert summary(f.data()).pages_swapped == 4 + 4 + 2


def test_summary_table_has_a_column_per_run() -> None:
    b = TimelineBuilder()
    b.add(EVENTS)
    one = summary(b.data())
    html = summary_table({"eager": one, "<mine>": one._replace(batches=7, calls_per_batch=0.5)})
    assert html.count("<tr>") == 8 and "&lt;mine&gt;" in html  # a header, then a row per number
    assert "<td>batches (forward passes)</td><td>1</td><td>7</td>" in html
    assert "<td>calls per batch</td><td>2.00</td><td>0.50</td>" in html


# ---- tokens ----


def test_token_steps_rank_the_chosen_token() -> None:
    dists = [Distribution([3, 1, 2], [0.5, 0.3, 0.2]), Distribution([4, 5], [0.9, 0.1])]
    steps = token_steps(dists, [1, 7], lambda ids: f"<{ids[0]}>", k=2)
    assert [(s.chosen.id, s.chosen.prob, s.rank) for s in steps] == [(1, 0.3, 1), (7, None, None)]
    assert [(c.id, c.text, c.prob) for c in steps[0].alternatives] == [
        (3, "<3>", 0.5),
        (1, "<1>", 0.3),
    ]
    with pytest.raises(ValueError):
        token_steps(dists, [1], str)


def text(ids: list[int]) -> str:
    return f"<{ids[0]}>"


def test_verification_steps_mark_accepted_and_rejected_draft_tokens() -> None:
    dists = [
        Distribution([5, 1], [0.8, 0.2]),
        Distribution([6, 9], [0.6, 0.4]),
        Distribution([4, 7], [0.7, 0.3]),
    ]
    # the draft guessed 5, 6, 7, 8: the model agreed with 5 and 6, then took 4 over 7
    v = Verification([5, 6, 7, 8], 2, dists, [5, 6, 4])
    steps = verification_steps(10, v, text, k=2)
    assert [s.step for s in steps] == [10, 11, 12]
    assert [s.chosen.id for s in steps] == [5, 6, 4]
    drafts = [s.draft for s in steps]
    assert drafts[0] is not None and drafts[1] is not None and drafts[2] is not None
    assert [d.accepted for d in drafts] == [True, True, False]
    assert drafts[2].guessed == (7, "<7>", 0.3)  # the model's probability for the guess
    assert [c.id for c in drafts[2].discarded] == [8]  # the draft after it, dropped unverified
    assert drafts[0].discarded == drafts[1].discarded == ()
    # every guess right: the model's own next token closes the forward, no draft there
    all_right = verification_steps(0, Verification([5], 1, dists[:2], [5, 6]), text)
    assert all_right[0].draft is not None and all_right[0].draft.accepted
    assert all_right[1].draft is None


def test_masked_step_counts_the_refused_tokens_and_what_the_model_wanted() -> None:
    inf = math.inf
    logits = [-inf, 2.0, -inf, 1.0, -inf, -inf]  # the grammar allows 1 and 3
    before = Distribution([0, 2, 1], [0.5, 0.3, 0.2])  # the model wanted 0, then 2, then 1
    step = masked_step(4, logits, before, 1, text, k=3)
    assert step.mask is not None
    assert (step.mask.allowed, step.mask.refused) == (2, 4)
    assert [c.id for c in step.mask.wanted] == [0, 2, 1]
    assert step.mask.refused_wanted == [0, 2] and step.mask.overruled
    assert step.chosen.id == 1 and step.rank == 0
    assert step.chosen.prob == pytest.approx(math.e / (math.e + 1))  # renormalized over 1 and 3
    assert [c.id for c in step.alternatives] == [1, 3]  # refused tokens have probability 0
    kept = masked_step(0, logits, Distribution([3, 0], [0.9, 0.1]), 3, text)
    assert kept.mask is not None and not kept.mask.overruled and kept.rank == 1


def test_top_of_logits_is_a_softmax() -> None:
    d = top_of_logits([0.0, math.log(3.0), -math.inf], k=3)
    assert d.ids == [1, 0] and d.probs == pytest.approx([0.75, 0.25])  # -inf: left out
    with pytest.raises(ValueError, match="no token is allowed"):
        top_of_logits([-math.inf, -math.inf])


def test_token_view_colours_drafts_and_shows_masks() -> None:
    view = TokenView(text, k=2)
    dists = [Distribution([5, 1], [0.8, 0.2]), Distribution([4, 7], [0.7, 0.3])]
    view.add_verification(Verification([5, 7], 1, dists, [5, 4]))
    inf = math.inf
    view.add_masked([-inf, 2.0, -inf, 1.0], Distribution([0, 1], [0.6, 0.4]), 1)
    assert [s.step for s in view.steps] == [0, 1, 2]
    page = view.table.value
    assert page.count(f"background:{ACCEPTED_COLOUR}") == 2  # the legend's swatch and a row
    assert page.count(f"background:{REJECTED_COLOUR}") == 2
    assert "rejected: guessed &lt;7&gt; (p 0.300)" in page
    assert "masked 2 of 4; wanted <s>&lt;0&gt;</s> &lt;1&gt;" in page
