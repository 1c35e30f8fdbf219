"""What the KV views draw, computed from engine replies alone: no widgets, no I/O.

    stats = await client.walk()                  # FileStat of every readable file
    pm = await client.pages()                    # the page pool as this client sees it
    tree_nodes(stats)                            # the KV file tree
    fork_graph(stats, {path: await client.read(path) for path in ...})
    page_map(pm, stats)                          # the page grid and its counts
    file_pages(stat, tokens, pieces, pm)         # one file's tokens, page by page

A `Filter` keeps files under a path and/or made by one process (FileStat.pid).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

from engine.wire.records import FileStat, PageMap

ROOTS = ("/proc", "/home", "/shared")
FREE, PRIVATE, SHARED, SWAPPED = "free", "private", "shared", "swapped"
CACHED = "cached"  # held by no file, its contents kept for automatic prefix sharing
STATES = (FREE, CACHED, PRIVATE, SHARED, SWAPPED)


class Filter(NamedTuple):
    """Which files a view shows: those under path, made by process pid (None: any)."""

    path: str = "/"
    pid: int | None = None

    def keeps(self, path: str, pid: int | None = None) -> bool:
        return under(path, self.path) and (self.pid is None or pid == self.pid)

    def keeps_stat(self, st: FileStat) -> bool:
        return self.keeps(st.path, st.pid)


EVERYTHING = Filter()


def under(path: str, top: str) -> bool:
    """Whether path is top or lies below it."""
    top = top.rstrip("/")
    return not top or path == top or path.startswith(top + "/")


# ---- the KV file tree ----


class TreeNode(NamedTuple):
    """A directory or a file of the tree; a directory sums its files."""

    id: str  # the path ("/" for the root)
    parent: str  # the directory's path ("" for the root)
    label: str
    kind: str  # "dir" | "file"
    files: int
    tokens: int
    num_pages: int
    num_shared_pages: int
    stat: FileStat | None  # files only


def tree_nodes(stats: Iterable[FileStat], flt: Filter = EVERYTHING) -> list[TreeNode]:
    """The root, the three top directories, each kept file and the directories above it."""
    kept = [s for s in stats if flt.keeps_stat(s)]
    dirs: dict[str, list[FileStat]] = {"/": [], **{r: [] for r in ROOTS}}
    for st in kept:
        for d in _ancestors(st.path):
            dirs.setdefault(d, []).append(st)
    nodes = [_dir_node(d, files) for d, files in sorted(dirs.items())]
    return nodes + [_file_node(st) for st in kept]


def _ancestors(path: str) -> list[str]:
    parts = path.strip("/").split("/")[:-1]
    return ["/"] + ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def _parent_dir(path: str) -> str:
    return "" if path == "/" else path.rsplit("/", 1)[0] or "/"


def _dir_node(path: str, files: list[FileStat]) -> TreeNode:
    label = path.rsplit("/", 1)[-1] or "/"
    return TreeNode(
        path,
        _parent_dir(path),
        label,
        "dir",
        len(files),
        sum(s.tokens for s in files),
        sum(s.num_pages for s in files),
        sum(s.num_shared_pages for s in files),
        None,
    )


def _file_node(st: FileStat) -> TreeNode:
    label = st.path.rsplit("/", 1)[-1]
    parent = _parent_dir(st.path)
    return TreeNode(
        st.path, parent, label, "file", 1, st.tokens, st.num_pages, st.num_shared_pages, st
    )


def describe(st: FileStat) -> str:
    """A file's stat in a few lines (hover text)."""
    shared = ", ".join(f"{p} ({n})" for p, n in st.shared_with.items()) or "no readable file"
    lines = [
        st.path,
        f"{st.tokens} tokens in {st.num_pages} pages, {st.num_shared_pages} shared",
        f"shares pages with: {shared}",
        f"owner {st.owner}, mode {st.mode:#o}" + (f", made by pid {st.pid}" if st.pid else ""),
    ]
    if st.parent:
        lines.append(f"forked from {st.parent}")
    if len(st.names) > 1:
        lines.append("names: " + ", ".join(st.names))
    return "\n".join(lines)


# ---- one file's tokens, page by page ----


class PageRun(NamedTuple):
    """One page of a file: its tokens and the other files holding the same pool page."""

    entry: int  # in the file's page table
    page: int | None  # pool page (None: swapped out to host memory)
    start: int  # index of its first token in the file
    tokens: list[int]
    pieces: list[str]  # each token as text
    sharers: tuple[str, ...]  # other readable files holding this page
    unseen: int  # holders this caller may not see


def file_pages(
    st: FileStat, tokens: Sequence[int], pieces: Sequence[str], pm: PageMap
) -> list[PageRun]:
    """The file's tokens cut at page boundaries, each page with who else holds it."""
    size = pm.page_size
    own = set(st.names)
    runs = []
    for i, page in enumerate(st.page_table):
        a, b = i * size, min((i + 1) * size, len(tokens))
        files = pm.files[page] if page is not None else []
        sharers = tuple(o for o in files if o not in own)
        unseen = pm.refcount[page] - len(files) if page is not None else 0
        runs.append(PageRun(i, page, a, list(tokens[a:b]), list(pieces[a:b]), sharers, unseen))
    return runs


# ---- the fork graph ----


class ForkNode(NamedTuple):
    id: str  # a file's first readable name; a gone parent's path; a collapsed group's label
    kind: str  # "file" | "gone" (a parent gone, filtered out or unreadable) | "collapsed"
    depth: int
    y: float
    stat: FileStat | None
    hidden: tuple[str, ...]  # collapsed: the files it stands for


class ForkEdge(NamedTuple):
    parent: str
    child: str
    prefix: int | None  # tokens the child shares with its parent from the start (None: unknown)
    num_shared_pages: int  # pool pages the two hold in common


class CacheEdge(NamedTuple):
    """Automatic prefix sharing: file took pages from the prefix cache that source computed."""

    source: str
    file: str
    num_pages: int


class SpliceEdge(NamedTuple):
    """`kv.splice`: file took tokens of source, their keys and values not computed again (the
    merge of graph of thought, say)."""

    source: str
    file: str
    tokens: int  # taken from source, summed over its splices


class ForkGraphData(NamedTuple):
    nodes: list[ForkNode]
    edges: list[ForkEdge]
    cached: list[CacheEdge] = []  # between files shown, apart from the forks' tree
    spliced: list[SpliceEdge] = []  # between files shown, apart from the forks' tree


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens a and b have in common."""
    return len(os.path.commonprefix([list(a), list(b)]))


def unique_files(stats: Iterable[FileStat]) -> list[FileStat]:
    """One stat per file (a file with several readable names is listed under its first)."""
    seen: set[tuple[str, ...]] = set()
    out = []
    for st in sorted(stats, key=lambda s: s.path):
        if st.names not in seen:
            seen.add(st.names)
            out.append(st)
    return out


def fork_graph(
    stats: Iterable[FileStat],
    tokens: Mapping[str, Sequence[int]],
    flt: Filter = EVERYTHING,
    max_children: int = 12,
    expanded: Iterable[str] = (),
) -> ForkGraphData:
    """Files as nodes, forks as edges labelled with the shared prefix (from token ids), the
    pages automatic prefix sharing took from one shown file into another (`cached`), and the
    tokens `kv.splice` took from one shown file into another (`spliced`).

    A node with more than max_children children shows max_children - 1 of them and one
    collapsed node for the rest, unless it is in expanded.
    """
    files = [st for st in unique_files(stats) if flt.keeps_stat(st)]
    node_of = {name: st.path for st in files for name in st.names}
    by_id = {st.path: st for st in files}
    children: dict[str, list[str]] = {}
    edges: list[ForkEdge] = []
    roots: set[str] = set()
    for st in files:
        parent = None if st.parent is None else node_of.get(st.parent, st.parent)
        if parent is None or parent == st.path:
            roots.add(st.path)
            continue
        if parent not in by_id:
            roots.add(parent)  # gone, or not readable: drawn as a root of its own
        children.setdefault(parent, []).append(st.path)
        edges.append(_edge(parent, st, by_id.get(parent), tokens))
    reached = _reachable(sorted(roots), children)
    order = sorted(roots) + [f for f in sorted(by_id) if f not in reached]  # cycles (renames)
    nodes, edges = _layout(order, children, by_id, edges, max_children, set(expanded))
    shown = {n.id for n in nodes if n.kind == "file"}

    def between_shown(taken: Callable[[FileStat], Mapping[str, int]]) -> list[tuple[str, str, int]]:
        """(source, file, count) for each shown file that took from another shown file."""
        out: dict[tuple[str, str], int] = {}
        for st in files:
            for source, n in taken(st).items():
                node = node_of.get(source, source)
                if st.path in shown and node in shown - {st.path}:
                    out[node, st.path] = out.get((node, st.path), 0) + n
        return [(source, file, n) for (source, file), n in out.items()]

    cached = [CacheEdge(*e) for e in between_shown(lambda st: st.cached_from)]
    spliced = [SpliceEdge(*e) for e in between_shown(lambda st: st.spliced_from)]
    return ForkGraphData(nodes, edges, cached, spliced)


def _reachable(starts: list[str], children: Mapping[str, list[str]]) -> set[str]:
    seen, todo = set(starts), list(starts)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def _edge(
    parent: str, st: FileStat, pst: FileStat | None, tokens: Mapping[str, Sequence[int]]
) -> ForkEdge:
    mine, theirs = tokens.get(st.path), tokens.get(parent)
    prefix = common_prefix(mine, theirs) if mine is not None and theirs is not None else None
    shared = 0 if pst is None else max((st.shared_with.get(n, 0) for n in pst.names), default=0)
    return ForkEdge(parent, st.path, prefix, shared)


def _layout(
    roots: list[str],
    children: dict[str, list[str]],
    by_id: Mapping[str, FileStat],
    edges: list[ForkEdge],
    max_children: int,
    expanded: set[str],
) -> tuple[list[ForkNode], list[ForkEdge]]:
    """Depth by fork generation; leaves one unit apart, a parent centred on its children."""
    nodes: dict[str, ForkNode] = {}
    kept_edges = {(e.parent, e.child): e for e in edges}
    out_edges: list[ForkEdge] = []
    next_leaf = [0.0]

    def place(node: str, depth: int) -> float:
        if node in nodes:  # a cycle through renames: draw it once
            return nodes[node].y
        kids = sorted(children.get(node, []))
        shown, hidden = kids, []
        if len(kids) > max_children and node not in expanded:
            shown, hidden = kids[: max_children - 1], kids[max_children - 1 :]
        nodes[node] = ForkNode(node, "gone", depth, 0.0, None, ())  # placeholder: marks visited
        ys = [place(k, depth + 1) for k in shown]
        out_edges.extend(kept_edges[(node, k)] for k in shown)
        if hidden:
            ys.append(_collapsed(node, hidden, depth + 1, next_leaf, nodes, kept_edges, out_edges))
        y = sum(ys) / len(ys) if ys else _leaf(next_leaf)
        st = by_id.get(node)
        nodes[node] = ForkNode(node, "file" if st else "gone", depth, y, st, ())
        return y

    for root in roots:
        if root not in nodes:
            place(root, 0)
    return list(nodes.values()), out_edges


def _leaf(next_leaf: list[float]) -> float:
    y = next_leaf[0]
    next_leaf[0] += 1.0
    return y


def _collapsed(
    parent: str,
    hidden: list[str],
    depth: int,
    next_leaf: list[float],
    nodes: dict[str, ForkNode],
    kept_edges: Mapping[tuple[str, str], ForkEdge],
    out_edges: list[ForkEdge],
) -> float:
    gid = f"{parent} (+{len(hidden)} more)"
    y = _leaf(next_leaf)
    nodes[gid] = ForkNode(gid, "collapsed", depth, y, None, tuple(hidden))
    prefixes = [kept_edges[(parent, h)].prefix for h in hidden]
    known = [p for p in prefixes if p is not None]
    shared = min(kept_edges[(parent, h)].num_shared_pages for h in hidden)
    out_edges.append(ForkEdge(parent, gid, min(known) if known else None, shared))
    return y


def sharing(selected: FileStat, graph: ForkGraphData) -> dict[str, int]:
    """Node id -> pool pages it holds in common with the selected file."""
    out: dict[str, int] = {}
    for node in graph.nodes:
        st = node.stat
        if st is None or st.names == selected.names:
            continue
        n = max((selected.shared_with.get(name, 0) for name in st.names), default=0)
        if n:
            out[node.id] = n
    return out


# ---- the page map ----


class PageCell(NamedTuple):
    page: int | None  # pool page (None: a page swapped out to host memory)
    state: str  # free | cached | private | shared | swapped
    holders: int  # files holding it (its reference count)
    files: tuple[str, ...]  # the readable ones
    kept: bool  # held by a file the filter keeps (always, without a filter)


class PageMapData(NamedTuple):
    cells: list[PageCell]  # the pool's pages in order, then the swapped-out ones
    counts: dict[str, int]  # state -> pages
    shared_by: dict[int, int]  # n files -> pool pages held by exactly n files
    page_size: int


def page_map(pm: PageMap, stats: Iterable[FileStat] = (), flt: Filter = EVERYTHING) -> PageMapData:
    """The grid of pages, coloured by state; stats tell which process made each file."""
    pid_of = {st.path: st.pid for st in stats}
    filtered = flt != EVERYTHING

    def kept(files: Sequence[str]) -> bool:
        return not filtered or any(flt.keeps(o, pid_of.get(o)) for o in files)

    cached = set(pm.cached)
    cells = [
        PageCell(
            p,
            CACHED if p in cached else _state(n),
            n,
            tuple(files),
            kept(files) if n else not filtered,
        )
        for p, (n, files) in enumerate(zip(pm.refcount, pm.files, strict=True))
    ]
    for name, n in sorted(pm.swapped.items()):
        cells += [PageCell(None, SWAPPED, 1, (name,), kept([name]))] * n
    unseen = pm.swapped_total - sum(pm.swapped.values())
    cells += [PageCell(None, SWAPPED, 1, (), not filtered)] * unseen
    counts = {s: 0 for s in STATES}
    shared_by: dict[int, int] = {}
    for c in cells:
        counts[c.state] += 1
        if c.state == SHARED:
            shared_by[c.holders] = shared_by.get(c.holders, 0) + 1
    return PageMapData(cells, counts, dict(sorted(shared_by.items())), pm.page_size)


def _state(refcount: int) -> str:
    return FREE if refcount == 0 else PRIVATE if refcount == 1 else SHARED


def grid_shape(n: int, columns: int | None = None) -> tuple[int, int]:
    """Rows and columns for n cells: about twice as wide as tall, at most 64 wide."""
    cols = columns or max(1, min(64, round((2 * n) ** 0.5)))
    return -(-n // cols), cols


def cell_text(c: PageCell, page_size: int) -> str:
    where = f"page {c.page}" if c.page is not None else "swapped out (host memory)"
    if c.state == FREE:
        return f"{where}: free"
    if c.state == CACHED:
        return f"{where}: cached (no file holds it; kept for prefix sharing until needed)"
    who = ", ".join(c.files) if c.files else ""
    unseen = c.holders - len(c.files)
    if unseen > 0:
        who += (", " if who else "") + f"{unseen} file(s) you may not read"
    what = "private" if c.state == PRIVATE else f"shared by {c.holders} files"
    if c.state == SWAPPED:
        what = "swapped out"
    return f"{where} ({page_size} tokens): {what}: {who}"


def short_names(paths: Iterable[str]) -> Callable[[str], str]:
    """Labels without the directory all paths share."""
    paths = list(paths)
    if len(paths) < 2:
        return lambda p: p
    common = paths[0].rsplit("/", 1)[0]
    for p in paths[1:]:
        while common and not p.startswith(common + "/"):
            common = common.rsplit("/", 1)[0]
    return lambda p: p[len(common) + 1 :] if common and p.startswith(common + "/") else p
