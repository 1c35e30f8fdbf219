"""The KVFS views the widgets read: walk (files' stats), pages (the pool), read (tokens)."""

from __future__ import annotations

import itertools

import pytest

from engine.kvfs import KVFS, Caller, Handle
from engine.page_pool import PagePool
from engine.wire.errors import InvalidArgument, PermissionDenied

A1, A = Caller(1, "alice"), Caller(None, "alice")
B3, B = Caller(3, "bob"), Caller(None, "bob")


@pytest.fixture
def pool(make_pool) -> PagePool:  # noqa: ANN001
    return make_pool(num_layers=1, num_kv_heads=1, head_dim=2, num_pages=16, page_size=4)


@pytest.fixture
def fs(pool: PagePool) -> KVFS:
    ticks = itertools.count()
    return KVFS(pool, "tiny", clock=lambda: float(next(ticks)))


def fill(fs: KVFS, h: Handle, tokens: list[int]) -> None:
    seq = fs.sequence(h, write=True)
    seq.reserve(fs.pool, len(tokens))
    start = seq.next_position
    seq.append(tokens, list(range(start, start + len(tokens))))


@pytest.fixture
def world(fs: KVFS) -> KVFS:
    """alice: a prompt, two forks, a link in /shared, a private /proc file; bob: a private file."""
    prompt = fs.create(A, "/home/alice/prompt")
    fill(fs, prompt, list(range(10)))  # pages: 4 + 4 + 2
    a = fs.fork(A, prompt, "/home/alice/a")
    fill(fs, a, [50, 51])
    b = fs.fork(A, prompt, "/home/alice/b")
    fs.truncate(b, 6)
    fs.link(A, b, "/shared/b")
    fs.chmod(A, "/shared/b", 0o644)  # bob may read it, by either name
    fill(fs, fs.create(A1, "/proc/1/scratch"), [7, 7, 7])
    fill(fs, fs.create(B, "/home/bob/secret"), [1, 2, 3, 4, 5])
    return fs


def without_last_use(st: object) -> tuple:
    return tuple(v for k, v in st._asdict().items() if k != "last_use")  # type: ignore[attr-defined]


def test_walk_is_stat_of_every_readable_name(world: KVFS) -> None:
    walked = world.walk(A)
    assert [s.path for s in walked] == [
        "/home/alice/a",
        "/home/alice/b",
        "/home/alice/prompt",
        "/shared/b",
    ]  # not bob's private file, not process 1's /proc file (alice's client is no process)
    for s in walked:
        assert without_last_use(s) == without_last_use(world.stat(A, s.path))
    assert [s.path for s in world.walk(A1, "/proc")] == ["/proc/1/scratch"]
    assert [s.path for s in world.walk(B)] == ["/home/alice/b", "/home/bob/secret", "/shared/b"]
    assert [s.path for s in world.walk(A, "/home/alice/a")] == ["/home/alice/a"]


def test_walk_reports_forks_and_sharing(world: KVFS) -> None:
    st = {s.path: s for s in world.walk(A)}
    assert st["/home/alice/a"].parent == st["/home/alice/b"].parent == "/home/alice/prompt"
    assert st["/home/alice/a"].shared_with == {
        "/home/alice/b": 2,
        "/home/alice/prompt": 2,
        "/shared/b": 2,
    }  # a copied the partial last page when it wrote; b let go of it when truncated
    assert st["/shared/b"].names == ("/home/alice/b", "/shared/b")
    assert (
        st["/home/alice/prompt"].num_shared_pages == 2 and st["/home/alice/prompt"].num_pages == 3
    )


def test_walk_does_not_touch_files(world: KVFS) -> None:
    before = [s.last_use for s in world.walk(A)]
    assert [s.last_use for s in world.walk(A)] == before


def test_pages_names_each_readable_holder_once(world: KVFS, pool: PagePool) -> None:
    pm = world.pages(A)
    assert pm.page_size == 4 and pm.refcount == pool.refcount
    assert sum(c == 0 for c in pm.refcount) == pool.num_free
    for s in world.walk(A):
        assert all(s.names[0] in pm.files[p] for p in s.page_table)
    assert all(len(o) <= c for o, c in zip(pm.files, pm.refcount, strict=True))
    prompt_pages = world.stat(A, "/home/alice/prompt").page_table
    assert pm.files[prompt_pages[0]] == ["/home/alice/a", "/home/alice/b", "/home/alice/prompt"]
    secret = world.stat(B, "/home/bob/secret").page_table
    assert all(pm.files[p] == [] and pm.refcount[p] == 1 for p in secret)  # held unseen
    assert world.pages(B).files[secret[0]] == ["/home/bob/secret"]
    assert world.pages(B).files[prompt_pages[1]] == ["/home/alice/b"]  # b once, not prompt


def test_pages_count_swapped_out_pages(world: KVFS, pool: PagePool) -> None:
    scratch = dict(world.files())["/proc/1/scratch"]
    assert scratch.seq.swap_out(pool) == 1
    assert world.pages(A1).swapped == {"/proc/1/scratch": 1}
    assert world.pages(A).swapped == {} and world.pages(A).swapped_total == 1
    st = world.stat(A1, "/proc/1/scratch")
    assert st.page_table == (None,) and st.num_shared_pages == 0 and st.shared_with == {}
    pool.check()


def test_read_returns_tokens_to_readers_only(world: KVFS) -> None:
    assert world.read(A, "/home/alice/a") == [*range(10), 50, 51]
    assert world.read(A, "/shared/b", 2, 4) == [2, 3]
    assert world.read(B, "/shared/b") == list(range(6))
    with pytest.raises(PermissionDenied):
        world.read(A, "/home/bob/secret")
    with pytest.raises(PermissionDenied):
        world.read(A, "/proc/1/scratch")
    with pytest.raises(InvalidArgument):
        world.read(A, "/shared/b", "x")  # type: ignore[arg-type]
