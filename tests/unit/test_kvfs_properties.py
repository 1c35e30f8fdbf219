"""Random operation sequences on the KV file system keep pages, contents and permissions right.

After every step: the pool invariant holds; the reference counts are exactly the page
references of live files (nothing leaks from removed files); every caller can open exactly
the files the mode and /proc privacy allow. A fork fed a token gives the logits of a fresh file
fed the same tokens, and forking never changes the parent's K/V. A splice appends exactly the
source range's K/V and a drop keeps exactly the other tokens' K/V, with no page left over for
a dropped token, and neither changes any other file's K/V.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import torch
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from engine.kvfs import KVFS, Caller, Handle, KVFile, gather_kv
from engine.page_pool import PagePool
from engine.runner import Runner, Segment
from engine.saved import SavedFiles
from engine.sequence import KVSequence
from engine.wire.errors import OutOfPages, PermissionDenied

MODES = [None, 0o600, 0o602, 0o604, 0o606, 0o644, 0o666]
TOKENS = st.lists(st.integers(0, 255), min_size=1, max_size=8)


R, W, RW = 0o004, 0o002, 0o006


def allowed(caller: Caller, path: str, f: KVFile, bits: int) -> bool:
    """The rule, stated independently of the implementation: may caller use f for bits?"""
    parts = path.split("/")
    if parts[1] == "proc" and int(parts[2]) != caller.pid:
        return False
    return caller.user == f.owner or f.mode & bits == bits


def may_name(caller: Caller, path: str) -> bool:
    parts = path.split("/")
    if parts[1] == "proc":
        return int(parts[2]) == caller.pid
    return parts[1] == "shared" or parts[2] == caller.user


class KVFSMachine(RuleBasedStateMachine):
    def __init__(self, loaded) -> None:  # noqa: ANN001 - LoadedModel
        super().__init__()
        self.pool = PagePool.for_model(loaded.config, num_pages=24, page_size=4)
        self.tmp = Path(tempfile.mkdtemp(prefix="kvfs-"))
        self.fs = KVFS(self.pool, "tiny", saved=SavedFiles(self.tmp))
        self.runner = Runner(loaded.model, self.pool)
        self.procs = {1: "alice", 2: "alice", 3: "bob"}
        self.next_pid = 4
        self.held: list[Handle] = []  # every handle open; the rest are closed at once
        self.clean: dict[KVFile, bool] = {}  # K/V equal a fresh prefill (no hidden at forward)
        self.ids = itertools.count()

    # ---- helpers ----

    def named(self) -> dict[str, KVFile]:
        return {p: f for p, f in self.fs.files() if not p.endswith("(deleted)")}

    def callers(self) -> list[Caller]:
        procs = [Caller(pid, user) for pid, user in sorted(self.procs.items())]
        return [*procs, Caller(None, "alice"), Caller(None, "bob"), Caller(99, "alice")]

    def owner(self, path: str, f: KVFile) -> Caller:
        parts = path.split("/")
        return Caller(int(parts[2]), f.owner) if parts[1] == "proc" else Caller(None, f.owner)

    def pick(self, data: st.DataObject) -> tuple[str, KVFile]:
        path = data.draw(st.sampled_from(sorted(self.named())))
        return path, self.named()[path]

    def dest(self, data: st.DataObject, caller: Caller, proc: bool = True) -> str | None:
        options = [f"/home/{caller.user}/f{next(self.ids)}", f"/shared/f{next(self.ids)}"]
        if proc and caller.pid is not None:
            options.append(None)
        return data.draw(st.sampled_from(options))

    def keep_or_close(self, data: st.DataObject, h: Handle) -> None:
        if data.draw(st.booleans()):
            self.held.append(h)
        else:
            self.fs.close(h)

    def has_files(self) -> bool:
        return bool(self.named())

    # ---- rules ----

    @rule(
        data=st.data(),
        mode=st.sampled_from(MODES),
        prompt=st.lists(st.integers(0, 255), max_size=14),
    )
    def create(self, data: st.DataObject, mode: int | None, prompt: list[int]) -> None:
        caller = data.draw(st.sampled_from(self.callers()[:-1]))
        h = self.fs.create(caller, self.dest(data, caller), mode)
        self.clean[h.file] = True
        if prompt:
            with contextlib.suppress(OutOfPages):
                self.runner.forward([Segment(self.fs.sequence(h, write=True), prompt)])
        self.keep_or_close(data, h)

    @precondition(has_files)
    @rule(data=st.data())
    def forward(self, data: st.DataObject) -> None:
        named = self.named()
        paths = data.draw(st.lists(st.sampled_from(sorted(named)), min_size=1, max_size=2))
        files = {named[p]: p for p in paths}  # one segment per file, however many names
        handles = [self.fs.open(self.owner(p, f), p, write=True) for f, p in files.items()]
        seqs = [self.fs.sequence(h, write=True) for h in handles]
        try:
            self.runner.forward([Segment(s, data.draw(TOKENS)) for s in seqs])
            for h, s in zip(handles, seqs, strict=True):
                self.clean[h.file] &= not s.hidden
        except OutOfPages:
            pass
        for h in handles:
            self.fs.close(h)

    @precondition(has_files)
    @rule(data=st.data(), token=st.integers(0, 255))
    def fork_and_compare(self, data: st.DataObject, token: int) -> None:
        src, f = self.pick(data)
        caller = data.draw(st.sampled_from(self.callers()))
        if not allowed(caller, src, f, R):
            try:
                self.fs.fork(caller, src, self.dest(data, caller))
            except PermissionDenied:
                return
            raise AssertionError(f"{caller} forked unreadable {src}")
        h = self.fs.fork(caller, src, self.dest(data, caller))
        assert h.file.parent == src and h.file.seq.pages == f.seq.pages
        before = [t.clone() for t in gather_kv(self.pool, f.seq)]
        self.clean[h.file] = self.clean[f] and not f.seq.hidden
        try:
            (got,) = self.runner.forward([Segment(self.fs.sequence(h, write=True), [token])])
        except OutOfPages:
            self.keep_or_close(data, h)
            return
        for x, y in zip(before, gather_kv(self.pool, f.seq), strict=True):
            assert torch.equal(x, y), "a write to a fork changed its parent"
        if self.clean[f]:
            want = self.fresh_logits(f.seq, token)
            event(f"fork compared with a fresh file: {want is not None}")
            if want is not None:
                torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        self.write_parent_keeps_child(src, f, h.file.seq, (token + 1) % 256)
        self.keep_or_close(data, h)

    def write_parent_keeps_child(self, src: str, f: KVFile, child: KVSequence, token: int) -> None:
        before = [t.clone() for t in gather_kv(self.pool, child)]
        h = self.fs.open(self.owner(src, f), src, write=True)
        with contextlib.suppress(OutOfPages):
            self.runner.forward([Segment(self.fs.sequence(h, write=True), [token])])
            self.clean[f] &= not f.seq.hidden
        self.fs.close(h)
        for x, y in zip(before, gather_kv(self.pool, child), strict=True):
            assert torch.equal(x, y), "a write to a parent changed its fork"

    def fresh_logits(self, seq: KVSequence, token: int) -> torch.Tensor | None:
        ref = KVSequence()
        try:
            if seq.tokens:
                self.runner.forward([Segment(ref, list(seq.tokens), list(seq.positions))])
            ref.hidden = set(seq.hidden)
            (out,) = self.runner.forward([Segment(ref, [token])])
            return out
        except OutOfPages:
            return None
        finally:
            ref.release(self.pool)

    @precondition(has_files)
    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        path, f = self.pick(data)
        h = self.fs.open(self.owner(path, f), path, write=True)
        self.fs.truncate(h, data.draw(st.integers(0, len(f.seq))))
        self.fs.close(h)

    def all_kv(self) -> dict[KVFile, tuple[torch.Tensor, torch.Tensor]]:
        """Every live file's keys and values, copied (each file once)."""
        live = {f for _, f in self.fs.files()}
        return {f: tuple(t.clone() for t in gather_kv(self.pool, f.seq)) for f in live}  # type: ignore[misc]

    def others_unchanged(self, before: dict, changed: KVFile) -> None:
        for f, kv in before.items():
            if f is not changed and f.seq.tokens:
                for x, y in zip(kv, gather_kv(self.pool, f.seq), strict=True):
                    assert torch.equal(x, y), "a splice or drop changed another file's K/V"

    @precondition(has_files)
    @rule(data=st.data())
    def splice(self, data: st.DataObject) -> None:
        dst_path, f = self.pick(data)
        src_path, g = self.pick(data)
        start = data.draw(st.integers(0, len(g.seq)))
        stop = data.draw(st.integers(start, len(g.seq)))
        h = self.fs.open(self.owner(dst_path, f), dst_path, write=True)
        before = self.all_kv()
        want = [
            torch.cat([a, b[:, start:stop]], dim=1)
            for a, b in zip(before[f], before[g], strict=True)
        ]
        n, free = len(f.seq), self.pool.num_free
        try:
            done = self.fs.splice(self.owner(dst_path, f), h, src_path, start, stop)
        except PermissionDenied:
            assert not allowed(self.owner(dst_path, f), src_path, g, R)
            self.fs.close(h)
            return
        except OutOfPages:
            event("splice out of pages")
            assert len(f.seq) == n and self.pool.num_free == free
            self.fs.close(h)
            return
        event(f"splice shared pages: {done.num_shared_pages > 0}")
        assert done.tokens == stop - start and len(f.seq) == n + done.tokens
        for x, y in zip(want, gather_kv(self.pool, f.seq), strict=True):
            assert torch.equal(x, y), "spliced K/V differ from the source's"
        self.others_unchanged(before, f)
        self.clean[f] = self.clean[f] and done.tokens == 0
        self.fs.close(h)

    @precondition(has_files)
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        path, f = self.pick(data)
        start = data.draw(st.integers(0, len(f.seq)))
        stop = data.draw(st.integers(start, len(f.seq)))
        h = self.fs.open(self.owner(path, f), path, write=True)
        before = self.all_kv()
        keep = [i for i in range(len(f.seq)) if not start <= i < stop]
        want = (
            [t[:, keep] for t in before[f]],
            [f.seq.tokens[i] for i in keep],
            [f.seq.positions[i] for i in keep],
        )
        hidden = {
            i - (stop - start) if i >= stop else i for i in f.seq.hidden if not start <= i < stop
        }
        try:
            self.fs.drop(h, start, stop)
        except OutOfPages:
            event("drop out of pages")
            assert len(f.seq) == len(want[1]) + stop - start
            self.fs.close(h)
            return
        kv, tokens, positions = want
        assert (f.seq.tokens, f.seq.positions, f.seq.hidden) == (tokens, positions, hidden)
        assert len(f.seq.pages) == -(-len(tokens) // self.pool.page_size), "a dropped page kept"
        for x, y in zip(kv, gather_kv(self.pool, f.seq), strict=True):
            assert torch.equal(x, y), "the kept tokens' K/V changed"
        self.others_unchanged(before, f)
        self.clean[f] = self.clean[f] and start == stop
        self.fs.close(h)

    @precondition(has_files)
    @rule(data=st.data(), hide=st.booleans())
    def hide_or_unhide(self, data: st.DataObject, hide: bool) -> None:
        path, f = self.pick(data)
        if not f.seq.tokens:
            return
        idx = data.draw(st.lists(st.integers(0, len(f.seq) - 1), max_size=3))
        h = self.fs.open(self.owner(path, f), path, write=True)
        (self.fs.hide if hide else self.fs.unhide)(h, idx)
        self.fs.close(h)

    @precondition(has_files)
    @rule(data=st.data(), hold=st.booleans())
    def unlink(self, data: st.DataObject, hold: bool) -> None:
        path, f = self.pick(data)
        if hold:  # unlink while open
            self.held.append(self.fs.open(self.owner(path, f), path))
        caller = data.draw(st.sampled_from(self.callers()))
        ok = allowed(caller, path, f, W) and may_name(caller, path)
        self.expect(ok, lambda: self.fs.unlink(caller, path))
        assert (path in self.named()) != ok

    @precondition(has_files)
    @rule(data=st.data(), rename=st.booleans())
    def link_or_rename(self, data: st.DataObject, rename: bool) -> None:
        path, f = self.pick(data)
        caller = data.draw(st.sampled_from(self.callers()))
        dst = self.dest(data, caller, proc=False)
        assert dst is not None
        ok = allowed(caller, path, f, W) and (not rename or may_name(caller, path))
        ok = ok and (f.owner == caller.user or dst.startswith("/shared/"))  # others' stay in sight
        self.expect(ok, lambda: (self.fs.rename if rename else self.fs.link)(caller, path, dst))
        assert self.named().get(dst) is (f if ok else None)

    @precondition(has_files)
    @rule(data=st.data(), mode=st.sampled_from(MODES[1:]))
    def chmod(self, data: st.DataObject, mode: int) -> None:
        path, f = self.pick(data)
        caller = data.draw(st.sampled_from(self.callers()))
        ok = caller.user == f.owner and allowed(caller, path, f, 0)
        self.expect(ok, lambda: self.fs.chmod(caller, path, mode))
        assert (f.mode == mode) or not ok

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        h = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        self.fs.close(h)

    @precondition(has_files)
    @rule(data=st.data())
    def save_and_load(self, data: st.DataObject) -> None:
        path, f = self.pick(data)
        caller = self.owner(path, f)
        disk = f"f{next(self.ids)}"
        self.fs.save(caller, path, disk)
        dst = self.dest(data, caller)
        free = self.pool.num_free
        try:
            h = self.fs.load(caller, disk, dst)
        except OutOfPages:
            event("load out of pages")
            assert self.pool.num_free == free and (dst is None or dst not in self.named())
            return
        a, b = f.seq, h.file.seq
        assert (a.tokens, a.positions, a.hidden) == (b.tokens, b.positions, b.hidden)
        for x, y in zip(gather_kv(self.pool, a), gather_kv(self.pool, b), strict=True):
            assert torch.equal(x, y)
        self.clean[h.file] = self.clean[f]
        self.keep_or_close(data, h)

    def busy_pids(self) -> list[int]:
        """Live processes with /proc files or open handles (an idle exit teaches nothing)."""
        names = self.named()
        return [
            pid
            for pid in sorted(self.procs)
            if any(n.startswith(f"/proc/{pid}/") for n in names)
            or any(h.caller.pid == pid for h in self.held)
        ]

    @precondition(busy_pids)
    @rule(data=st.data())
    def process_exit(self, data: st.DataObject) -> None:
        pid = data.draw(st.sampled_from(self.busy_pids()))
        prefix = f"/proc/{pid}/"
        doomed = {
            f
            for f in {*self.named().values(), *(h.file for h in self.held)}
            if all(n.startswith(prefix) for n in f.names)
            and all(h.caller.pid == pid for h in self.held if h.file is f)
        }
        refs = Counter(p for f in doomed for p in f.seq.pages)
        expected = sum(1 for p, n in refs.items() if self.pool.refcount[p] == n)
        assert self.fs.remove_process(pid) == expected
        event(f"process exit freed pages: {expected > 0}")
        self.held = [h for h in self.held if h.caller.pid != pid]
        self.procs[self.next_pid] = self.procs.pop(pid)
        self.next_pid += 1

    def expect(self, ok: bool, action) -> None:  # noqa: ANN001
        event(f"operation allowed: {ok}")
        try:
            action()
        except PermissionDenied:
            assert not ok, "refused an allowed operation"
            return
        assert ok, "allowed a refused operation"

    # ---- invariants ----

    @invariant()
    def pages_are_exactly_the_live_files_references(self) -> None:
        self.pool.check()
        live = {f for _, f in self.fs.files()}
        assert sum(self.pool.refcount) == sum(len(f.seq.pages) for f in live)
        for f in live:
            assert f.names or f.open_handles
            assert f.open_handles == sum(h.file is f for h in self.held)
        assert all(not f.seq.pages for f in self.clean if f not in live)

    @invariant()
    def access_follows_the_mode(self) -> None:
        for path, f in self.named().items():
            for caller in self.callers():
                for write in (False, True):
                    want = allowed(caller, path, f, RW if write else R)
                    try:
                        self.fs.close(self.fs.open(caller, path, write))
                        got = True
                    except PermissionDenied:
                        got = False
                    assert got == want, (caller, path, oct(f.mode), write)

    def teardown(self) -> None:
        for h in self.held:
            self.fs.close(h)
        self.held = []
        self.pages_are_exactly_the_live_files_references()
        shutil.rmtree(self.tmp, ignore_errors=True)


def test_kvfs_random_operations(tiny_loaded) -> None:  # noqa: ANN001
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model's forwards run several times faster on one thread
    try:
        run_state_machine_as_test(
            lambda: KVFSMachine(tiny_loaded),
            settings=settings(
                max_examples=60,
                stateful_step_count=30,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    finally:
        torch.set_num_threads(threads)
