"""The KV file system: paths, permissions, copy-on-write forks, names, save/load, process exit."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.kvfs import KVFS, Caller, Handle, gather_kv, normpath
from engine.page_pool import PagePool
from engine.runner import Runner, Segment
from engine.saved import SavedFiles
from engine.wire.errors import (
    BadPath,
    FileExists,
    FileNotFound,
    IncompatibleFile,
    InvalidArgument,
    OutOfPages,
    PermissionDenied,
)

A1, A2, A = Caller(1, "alice"), Caller(2, "alice"), Caller(None, "alice")
B3, B = Caller(3, "bob"), Caller(None, "bob")


@pytest.fixture
def pool(make_pool) -> PagePool:  # noqa: ANN001
    return make_pool(num_layers=2, num_kv_heads=1, head_dim=4, num_pages=16, page_size=4)


@pytest.fixture
def fs(pool: PagePool, tmp_path: Path) -> KVFS:
    ticks = itertools.count()
    return KVFS(pool, "tiny", clock=lambda: float(next(ticks)), saved=SavedFiles(tmp_path))


def fill(fs: KVFS, h: Handle, n: int) -> None:
    """Append n tokens without a model (their K/V stay whatever the pages hold)."""
    seq = fs.sequence(h, write=True)
    seq.reserve(fs.pool, n)
    start = seq.next_position
    seq.append(list(range(n)), list(range(start, start + n)))


def can(fs: KVFS, caller: Caller, path: str, write: bool = False) -> bool:
    try:
        fs.close(fs.open(caller, path, write))
    except PermissionDenied:
        return False
    return True


# ---- paths ----


@pytest.mark.parametrize(
    ("path", "norm"),
    [
        ("/shared//a/", "/shared/a"),
        ("/home/u/./x", "/home/u/x"),
        ("/proc/007/kv", "/proc/7/kv"),
        ("/", "/"),
        ("//home//", "/home"),
    ],
)
def test_paths_are_normalized(path: str, norm: str) -> None:
    assert normpath(path) == norm


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("", "empty"),
        ("shared/a", "relative"),
        ("/shared/../home/x", r"'\.\.'"),
        ("/shared/a/..", r"'\.\.'"),
        ("/shared/a\x00b", "control character"),
        ("/shared/a\nb", "control character"),
        ("/shared/" + "a" * 256, "longer than 255"),
        ("/shared/" + ("a" * 200 + "/") * 6, "longer than 1024"),
        ("/tmp/x", "unknown root /tmp"),
        ("/proc/abc/x", "integer pid"),
        ("/proc/-1/x", "integer pid"),
    ],
)
def test_bad_paths_are_refused_with_the_reason(fs: KVFS, path: str, reason: str) -> None:
    with pytest.raises(BadPath, match=reason) as err:
        fs.create(A1, path)
    assert isinstance(err.value, InvalidArgument)
    assert fs.listdir(A1, "/shared") == []


@pytest.mark.parametrize("path", ["/shared", "/home/alice", "/proc/1", "/"])
def test_a_directory_is_not_a_file_name(fs: KVFS, path: str) -> None:
    with pytest.raises(BadPath, match="directory"):
        fs.create(A1, path)


def test_files_and_directories_do_not_collide(fs: KVFS) -> None:
    fs.create(A, "/home/alice/d/x")
    with pytest.raises(FileExists, match="is a directory"):
        fs.create(A, "/home/alice/d")
    with pytest.raises(BadPath, match="/home/alice/d/x is a file"):
        fs.create(A, "/home/alice/d/x/y")
    with pytest.raises(BadPath, match="not a directory"):
        fs.listdir(A, "/home/alice/d/x")


# ---- permissions ----

MATRIX = {  # path -> {caller: (may read, may write)}
    "/proc/1/p": {A1: (1, 1), A2: (0, 0), A: (0, 0), B3: (0, 0), B: (0, 0)},
    "/home/alice/h": {A1: (1, 1), A2: (1, 1), A: (1, 1), B3: (0, 0), B: (0, 0)},
    "/shared/s": {A1: (1, 1), A2: (1, 1), A: (1, 1), B3: (1, 0), B: (1, 0)},
}


@pytest.fixture
def three(fs: KVFS) -> KVFS:
    for caller, path in [(A1, "/proc/1/p"), (A, "/home/alice/h"), (A2, "/shared/s")]:
        fs.close(fs.create(caller, path))
    return fs


def test_permission_matrix(three: KVFS) -> None:
    for path, row in MATRIX.items():
        for caller, (r, w) in row.items():
            assert (can(three, caller, path), can(three, caller, path, True)) == (r, w), (
                path,
                caller,
            )


def test_proc_refusal_names_the_process(three: KVFS) -> None:
    with pytest.raises(PermissionDenied, match=r"/proc/1/p: private to process 1"):
        three.open(A2, "/proc/1/p")
    with pytest.raises(PermissionDenied, match="/proc/1/nothing: private"):  # existence not leaked
        three.open(B3, "/proc/1/nothing")
    with pytest.raises(FileNotFound, match="/home/alice/nothing: no such file"):
        three.open(A, "/home/alice/nothing")


def test_chmod_opens_a_file_to_others_but_never_a_proc_name(three: KVFS) -> None:
    three.chmod(A2, "/home/alice/h", 0o606)
    assert can(three, B, "/home/alice/h", True)
    three.chmod(A, "/shared/s", 0o600)
    assert not can(three, B, "/shared/s")
    three.chmod(A1, "/proc/1/p", 0o666)
    assert not can(three, A2, "/proc/1/p") and not can(three, B3, "/proc/1/p")
    with pytest.raises(PermissionDenied, match="only its owner 'alice'"):
        three.chmod(B, "/home/alice/h", 0o666)
    with pytest.raises(InvalidArgument, match="mode"):
        three.chmod(A, "/home/alice/h", 0o1000)


def test_names_are_added_only_in_ones_own_directories(three: KVFS) -> None:
    with pytest.raises(PermissionDenied, match="/home/alice/x"):
        three.create(B, "/home/alice/x")
    with pytest.raises(PermissionDenied, match="/proc/1/x"):
        three.create(A2, "/proc/1/x")
    with pytest.raises(PermissionDenied):
        three.fork(B, "/shared/s", "/home/alice/y")
    three.close(three.fork(B3, "/shared/s", "/shared/bobs"))
    assert three.stat(A, "/shared/bobs").owner == "bob"
    with pytest.raises(FileExists, match="/shared/s: file exists"):
        three.create(B, "/shared/s")
    with pytest.raises(InvalidArgument, match="must name the file"):
        three.create(A)


def test_unlink_needs_write_access_and_a_name_one_may_remove(three: KVFS) -> None:
    with pytest.raises(PermissionDenied, match="may not write"):
        three.unlink(B, "/shared/s")
    three.chmod(A, "/shared/s", 0o666)
    three.unlink(B, "/shared/s")
    three.chmod(A, "/home/alice/h", 0o666)
    with pytest.raises(PermissionDenied, match="may not add or remove names"):
        three.unlink(B, "/home/alice/h")


def test_handles_enforce_their_mode_and_die_on_close(three: KVFS) -> None:
    h = three.open(B, "/shared/s")
    for write in (lambda: three.truncate(h, 0), lambda: three.hide(h, [])):
        with pytest.raises(PermissionDenied, match="read-only"):
            write()
    with pytest.raises(PermissionDenied, match="read-only"):
        three.sequence(h, write=True)
    three.close(h)
    with pytest.raises(InvalidArgument, match="not open"):
        three.sequence(h)
    with pytest.raises(InvalidArgument, match="not open"):
        three.close(h)


def test_listdir_shows_only_what_the_caller_may_read(three: KVFS) -> None:
    three.close(three.create(A, "/home/alice/d/x"))
    assert three.listdir(B) == ["home/", "proc/", "shared/"]
    assert three.listdir(A1, "/proc") == ["1/"]
    assert three.listdir(A2, "/proc") == [] and three.listdir(A, "/proc/1") == []
    assert three.listdir(A, "/home/alice") == ["d/", "h"]
    assert three.listdir(B, "/home") == [] and three.listdir(B, "/shared") == ["s"]
    three.chmod(A, "/home/alice/d/x", 0o644)
    assert three.listdir(B, "/home") == ["alice/"]
    assert three.listdir(B, "/home/alice/") == ["d/"]


def test_every_access_touches_last_use(three: KVFS) -> None:
    before = three.stat(A, "/home/alice/h").last_use
    three.close(three.open(A, "/home/alice/h"))
    assert three.stat(A, "/home/alice/h").last_use > before


# ---- forks and sharing ----


def test_default_names_count_up_in_the_process_directory(fs: KVFS) -> None:
    assert [fs.create(A1).path for _ in range(2)] == ["/proc/1/kv0", "/proc/1/kv1"]


def test_fork_shares_pages_and_records_its_parent(fs: KVFS, pool: PagePool) -> None:
    a = fs.create(A, "/home/alice/a")
    fill(fs, a, 6)
    b = fs.fork(A, a, "/home/alice/b")
    assert b.file.seq.pages == a.file.seq.pages
    assert [pool.refcount[p] for p in a.file.seq.pages] == [2, 2]
    st = fs.stat(A, "/home/alice/b")
    assert st.parent == "/home/alice/a" and st.tokens == 6 and st.num_pages == 2
    assert st.num_shared_pages == 2 and st.shared_with == {"/home/alice/a": 2}
    fill(fs, b, 1)  # copies the shared partial page
    assert fs.stat(A, "/home/alice/a").shared_with == {"/home/alice/b": 1}
    assert fs.page_files()[a.file.seq.pages[0]] == ["/home/alice/a", "/home/alice/b"]
    with pytest.raises(PermissionDenied):
        fs.fork(B, "/home/alice/a", "/home/bob/c")


def test_shared_with_lists_only_paths_the_caller_may_read(fs: KVFS) -> None:
    s = fs.create(A, "/shared/s")
    fill(fs, s, 4)
    fs.fork(B, "/shared/s", "/home/bob/mine")
    st = fs.stat(A, "/shared/s")
    assert st.num_shared_pages == 1 and st.shared_with == {}
    assert fs.stat(B, "/shared/s").shared_with == {"/home/bob/mine": 1}


# ---- names ----


def test_link_then_unlink_keeps_the_file_until_its_last_name(fs: KVFS, pool: PagePool) -> None:
    h = fs.create(A, "/home/alice/a")
    fill(fs, h, 5)
    fs.close(h)
    fs.link(A, "/home/alice/a", "/shared/a")
    assert fs.stat(A, "/shared/a").names == ("/home/alice/a", "/shared/a")
    assert not can(fs, B, "/shared/a")  # the mode is the file's, not the directory's
    fs.unlink(A, "/home/alice/a")
    assert fs.stat(A, "/shared/a").tokens == 5 and pool.num_free == 14
    fs.unlink(A, "/shared/a")
    assert pool.num_free == 16 and list(fs.files()) == []


def test_rename_moves_the_name_and_open_handles_follow(fs: KVFS) -> None:
    h = fs.create(A1, "/proc/1/tmp")
    fill(fs, h, 3)
    fs.rename(A1, "/proc/1/tmp", "/home/alice/kept")
    assert h.path == "/home/alice/kept" and fs.stat(A, "/home/alice/kept").tokens == 3
    with pytest.raises(FileNotFound):
        fs.open(A1, "/proc/1/tmp")
    fs.create(A, "/home/alice/other")
    with pytest.raises(FileExists):
        fs.rename(A, "/home/alice/kept", "/home/alice/other")
    assert fs.remove_process(1) == 0  # the file no longer lives in /proc/1


def test_unlink_while_open_keeps_the_pages_until_the_last_close(fs: KVFS, pool: PagePool) -> None:
    h = fs.create(A, "/home/alice/a")
    fill(fs, h, 8)
    r = fs.open(A, "/home/alice/a")
    fs.unlink(A, "/home/alice/a")
    with pytest.raises(FileNotFound):
        fs.open(A, "/home/alice/a")
    assert pool.num_free == 14 and fs.sequence(r).tokens == list(range(8))
    assert [p for p, _ in fs.files()] == ["/home/alice/a (deleted)"]
    fs.close(fs.fork(A, r, "/home/alice/copy"))  # still readable through the handle
    fs.unlink(A, "/home/alice/copy")
    fs.close(h)
    assert pool.num_free == 14
    fs.close(r)
    assert pool.num_free == 16 and list(fs.files()) == []


# ---- process exit ----


def test_remove_process_frees_exactly_the_pages_only_its_files_held(
    fs: KVFS, pool: PagePool
) -> None:
    a = fs.create(A1, "/proc/1/a")
    fill(fs, a, 6)  # pages 0, 1
    b = fs.fork(A1, a, "/proc/1/b")
    fill(fs, b, 1)  # shares page 0, copies page 1
    keep = fs.fork(A1, a, "/home/alice/keep")  # shares both of a's pages
    fill(fs, fs.create(A1, "/proc/1/c"), 3)  # one page of its own
    other = fs.create(A2, "/proc/2/x")
    fill(fs, other, 2)
    used = pool.num_pages - pool.num_free
    assert fs.remove_process(1) == 2  # b's copy and c's page
    assert pool.num_pages - pool.num_free == used - 2
    assert keep.file.open_handles == 0 and fs.stat(A, "/home/alice/keep").tokens == 6
    assert fs.listdir(A1, "/proc") == [] and fs.sequence(other).tokens == [0, 1]


# ---- save / load ----


@pytest.fixture
def model_fs(tiny_loaded, pools: list[PagePool], tmp_path: Path) -> tuple[KVFS, Runner]:  # noqa: ANN001
    pool = PagePool.for_model(tiny_loaded.config, num_pages=12, page_size=4)
    pools.append(pool)
    return KVFS(pool, "tiny-llama", saved=SavedFiles(tmp_path)), Runner(tiny_loaded.model, pool)


def test_save_load_round_trip(model_fs: tuple[KVFS, Runner], tmp_path: Path) -> None:
    fs, runner = model_fs
    h = fs.create(A1, "/proc/1/f")
    runner.forward(
        [Segment(fs.sequence(h, write=True), [5, 9, 2, 7, 1, 3], positions=list(range(10, 16)))]
    )
    fs.hide(h, [2])
    fs.save(A1, "/proc/1/f", "f")
    g = fs.load(A, "f", "/home/alice/g")
    src, dst = fs.sequence(h), fs.sequence(g)
    assert (dst.tokens, dst.positions, dst.hidden) == (src.tokens, src.positions, {2})
    assert set(dst.pages).isdisjoint(src.pages)
    for x, y in zip(gather_kv(fs.pool, src), gather_kv(fs.pool, dst), strict=True):
        assert torch.equal(x, y)
    out_src, out_dst = runner.forward([Segment(src, [4]), Segment(dst, [4])])
    torch.testing.assert_close(out_src, out_dst, atol=1e-5, rtol=0)
    assert fs.remove_process(1) > 0
    fs.unlink(A, "/home/alice/g")
    fs.close(g)
    assert fs.pool.num_free == fs.pool.num_pages


def test_load_refuses_another_models_file(model_fs: tuple[KVFS, Runner], tmp_path: Path) -> None:
    fs, _ = model_fs
    h = fs.create(A, "/home/alice/f")
    fill(fs, h, 3)
    fs.save(A, "/home/alice/f", "f")
    other = KVFS(fs.pool, "some-other-model", saved=fs.saved)
    with pytest.raises(IncompatibleFile, match="'tiny-llama'.*'some-other-model'"):
        other.load(A, "f", "/home/alice/g")
    narrow = PagePool(2, 2, 8, num_pages=4, page_size=4)
    with pytest.raises(IncompatibleFile, match="shape"):
        KVFS(narrow, "tiny-llama", saved=fs.saved).load(A, "f", "/home/alice/g")
    (fs.saved_files().root / "alice" / "junk.kv").write_bytes(b"not safetensors at all")
    with pytest.raises(IncompatibleFile, match="not a saved KV file"):
        fs.load(A, "junk", "/home/alice/g")
    with pytest.raises(FileNotFound, match="no saved file of that name"):
        fs.load(A, "missing", "/home/alice/g")
    assert [p for p, _ in fs.files()] == ["/home/alice/f"] and narrow.num_free == 4
    fs.close(h)
    fs.unlink(A, "/home/alice/f")


def test_load_without_room_allocates_nothing(model_fs: tuple[KVFS, Runner], tmp_path: Path) -> None:
    fs, _ = model_fs
    big = fs.create(A, "/home/alice/big")
    fill(fs, big, 10)  # 3 pages
    fs.save(A, "/home/alice/big", "big")
    filler = fs.create(A, "/home/alice/filler")
    fill(fs, filler, 28)  # 7 more: 2 of 12 left
    with pytest.raises(OutOfPages) as err:
        fs.load(A, "big", "/home/alice/again")
    assert (err.value.needed, err.value.free) == (3, 2) and fs.pool.num_free == 2
    with pytest.raises(FileNotFound):
        fs.open(A, "/home/alice/again")
    for h in (big, filler):
        fs.close(h)
        fs.unlink(A, h.path)
    assert fs.pool.num_free == fs.pool.num_pages


def test_load_checks_what_the_file_holds(fs: KVFS, tmp_path: Path) -> None:
    h = fs.create(A1, "/proc/1/f")
    fill(fs, h, 3)
    fs.save(A1, h, "f")
    g = fs.load(A1, "f")  # default name, like create
    assert g.path == "/proc/1/kv0" and fs.sequence(g).tokens == [0, 1, 2]
    k, v = gather_kv(fs.pool, fs.sequence(h))
    meta = {"format": "symphony-kvfile/1", "model_id": "tiny"}
    ints = lambda *xs: torch.tensor(xs, dtype=torch.int64)  # noqa: E731
    bad = {
        "hidden indices outside": dict(
            tokens=ints(0, 1, 2), positions=ints(0, 1, 2), hidden=ints(3)
        ),
        "positions disagree": dict(tokens=ints(0, 1, 2), positions=ints(0, 1), hidden=ints()),
        "K/V shape": dict(tokens=ints(0, 1), positions=ints(0, 1), hidden=ints()),
    }
    for reason, ids in bad.items():
        bad_file = fs.saved_files().root / "alice" / "bad.kv"
        save_file({"k": k.contiguous(), "v": v.contiguous(), **ids}, bad_file, meta)
        with pytest.raises(IncompatibleFile, match=reason):
            fs.load(A1, "bad", "/proc/1/bad")
    assert fs.listdir(A1, "/proc/1") == ["f", "kv0"]
    assert fs.remove_process(1) == 2 and fs.pool.num_free == fs.pool.num_pages


# ---- saved files: names, not host paths (engine.saved) ----


def test_a_saved_file_is_named_never_a_host_path(fs: KVFS, tmp_path: Path) -> None:
    h = fs.create(A1, "/proc/1/f")
    fill(fs, h, 3)
    victim = tmp_path.parent / "victim.txt"
    victim.write_text("the engine's own file")
    for name in (str(victim), "../victim", "a/b/c", ".hidden", "", "x" * 101, "/etc/passwd"):
        with pytest.raises(BadPath, match="not a host path"):
            fs.save(A1, h, name)
        with pytest.raises(BadPath):
            fs.load(A1, name)
    assert victim.read_text() == "the engine's own file"
    fs.save(A1, h, "f.v1")
    assert fs.saved_files().names("alice") == ["f.v1"]
    assert (tmp_path / "alice" / "f.v1.kv").stat().st_mode & 0o777 == 0o600


def test_loading_a_fifo_is_refused_at_once(fs: KVFS, tmp_path: Path) -> None:
    (tmp_path / "alice").mkdir()
    os.mkfifo(tmp_path / "alice" / "pipe.kv")  # opening it to read would wait for a writer
    with pytest.raises(IncompatibleFile, match="not a regular file"):
        fs.load(A1, "pipe")


def test_a_saved_file_keeps_its_mode_and_owner(fs: KVFS) -> None:
    secret = fs.create(A, "/home/alice/secret")  # 0600
    public = fs.create(A, "/shared/public")  # 0644
    for h in (secret, public):
        fill(fs, h, 3)
    fs.save(A, secret, "secret")
    fs.save(A, public, "public")
    with pytest.raises(PermissionDenied, match="not readable by others"):
        fs.load(B, "alice/secret", "/home/bob/secret")
    g = fs.load(B, "alice/public", "/home/bob/public")
    assert fs.sequence(g).tokens == [0, 1, 2]
    with pytest.raises(PermissionDenied, match="only save under their own names"):
        fs.save(B, g, "alice/public")
    mine = fs.load(A, "secret", "/shared/secret-again")  # a copy keeps the mode: still private
    assert fs.stat(A, mine.path).mode == 0o600
    with pytest.raises(PermissionDenied):
        fs.open(B, "/shared/secret-again")
