"""The KV file system: one namespace of KV files over the page pool.

    /proc/<pid>/...   private to one process, removed when it exits
    /home/<user>/...  a client's own files, kept after its processes exit
    /shared/...       readable by every client by default

Access. A file's owner (a user) always reads and writes it; its `mode` bits 0o004 and 0o002 let
everyone else read and write. A name under /proc/<pid>/ is usable only by that process, whatever
the mode and even by other processes of the same user. Names may be added (create, fork, link,
rename, load) only under one's own /proc/<pid>/ or /home/<user>/, or anywhere in /shared; removing
one (unlink, rename) needs that too, and write access to the file. Another user's file (link,
rename) may be given a new name only under /shared, so it never leaves its owner's sight.

Directories are implicit: one exists while a file lies under it. `listdir` shows only what the
caller may read: files it may open and directories holding one (the three roots always).
A file lives while it has a name or an open handle, like unix: unlinking the last name of an open
file keeps its pages until the last close. Handles are capabilities: whoever holds one may use it.

Saved files (`save`, `load`) are kept by name in the engine's data directory (engine.saved).

Views (the widgets' data): `walk` stats every readable file under a path, `pages` shows the pool
with the readable files behind each page, `read` returns a readable file's token ids.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from engine.page_pool import PagePool
from engine.prefix_cache import PrefixIndex, Sharing, scope_of
from engine.saved import Saved, SavedFiles
from engine.sequence import KVSequence, pages_for
from engine.wire.errors import (
    BadPath,
    FileExists,
    FileNotFound,
    IncompatibleFile,
    InvalidArgument,
    OutOfPages,
    PermissionDenied,
)
from engine.wire.records import FileStat, PageMap, PrefixReport, Spliced

ROOTS = ("proc", "home", "shared")
MAX_NAME, MAX_PATH = 255, 1024
READ, WRITE = 0o004, 0o002  # the "other" bits of a mode
FORMAT = "symphony-kvfile/1"
SAVED = ("k", "v", "tokens", "positions", "hidden")


class Caller(NamedTuple):
    """Who asks: a process (pid) of a client (user), or the client itself (pid None)."""

    pid: int | None
    user: str


@dataclass(eq=False, slots=True)  # identity: a file is one object however many names it has
class KVFile:
    seq: KVSequence
    owner: str
    pid: int | None  # the creating process
    mode: int
    parent: str | None  # the path it was forked from
    created: float
    last_use: float
    names: set[str] = field(default_factory=set)
    open_handles: int = 0
    # the path each splice took tokens from -> tokens taken, summed (FileStat.spliced_from)
    spliced_from: dict[str, int] = field(default_factory=dict)


@dataclass(eq=False, slots=True)
class Handle:
    fd: int
    path: str  # the name it was opened by (follows renames)
    file: KVFile
    writable: bool
    caller: Caller


# ---- paths ----


def normpath(path: str) -> str:
    """The canonical form of a KV path (directory or file); BadPath says what is wrong."""
    if not isinstance(path, str) or not path:
        raise BadPath(repr(path), "empty path")
    if not path.startswith("/"):
        raise BadPath(path, "relative path; KV paths start with /")
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise BadPath(repr(path), "control character in path")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BadPath(path, "'..' is not allowed")
    if any(len(p) > MAX_NAME for p in parts):
        raise BadPath(path[:80] + "...", f"a name is longer than {MAX_NAME} characters")
    if parts and parts[0] not in ROOTS:
        raise BadPath(path, f"unknown root /{parts[0]}; use /proc, /home or /shared")
    if parts[:1] == ["proc"] and len(parts) > 1:
        if not re.fullmatch(r"[0-9]+", parts[1]):
            raise BadPath(path, f"/proc/<pid> needs an integer pid, not {parts[1]!r}")
        parts[1] = str(int(parts[1]))
    norm = "/" + "/".join(parts)
    if len(norm) > MAX_PATH:
        raise BadPath(path[:80] + "...", f"longer than {MAX_PATH} characters")
    return norm


def _parts(norm: str) -> list[str]:
    return norm.strip("/").split("/") if norm != "/" else []


def file_path(path: str) -> str:
    """A normalized path that can name a file: below /proc/<pid>/, /home/<user>/ or /shared/."""
    norm = normpath(path)
    parts = _parts(norm)
    if len(parts) < (2 if parts[:1] == ["shared"] else 3):
        raise BadPath(norm, "names a directory, not a file")
    return norm


def _proc_pid(norm: str) -> int | None:
    parts = _parts(norm)
    return int(parts[1]) if parts[:1] == ["proc"] and len(parts) > 1 else None


def _may_name(caller: Caller, norm: str) -> bool:
    """May the caller add or remove names at this (file) path?"""
    root, who = _parts(norm)[:2]
    if root == "proc":
        return caller.pid == int(who)
    return root == "shared" or caller.user == who


def _may(caller: Caller, norm: str, f: KVFile, bits: int) -> bool:
    """May the caller use file f through name norm for bits (READ | WRITE)?"""
    pid = _proc_pid(norm)
    if pid is not None and caller.pid != pid:
        return False
    return caller.user == f.owner or f.mode & bits == bits


def _who(caller: Caller) -> str:
    return f"user {caller.user!r}" + (f" (pid {caller.pid})" if caller.pid is not None else "")


def _default_mode(norm: str) -> int:
    return 0o644 if norm.startswith("/shared/") else 0o600


def _check_mode(mode: int) -> int:
    if not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise InvalidArgument(f"mode must be an int in 0..0o777, got {mode!r}")
    return mode


def _check_range(what: str, start: int, stop: int | None) -> None:
    """InvalidArgument unless start and stop are ints (stop may be None) with start <= stop."""
    if type(start) is not int or not (stop is None or type(stop) is int):
        raise InvalidArgument(f"{what}: start and stop must be ints, got {start!r} and {stop!r}")
    if start < 0 or (stop is not None and stop < start):
        raise InvalidArgument(f"{what}: [{start}, {stop}) is not a range of token indices")


# ---- K/V transfer ----


def _slots(pool: PagePool, seq: KVSequence) -> Tensor:
    ps = pool.page_size
    flat = [seq.pages[i // ps] * ps + i % ps for i in range(len(seq))]
    return torch.tensor(flat, dtype=torch.long, device=pool.k.device)


def gather_kv(pool: PagePool, seq: KVSequence) -> tuple[Tensor, Tensor]:
    """The sequence's own keys and values, `[layers, tokens, kv_heads, head_dim]` each."""
    slots = _slots(pool, seq)
    return pool.k.flatten(1, 2)[:, slots], pool.v.flatten(1, 2)[:, slots]


def _cached_from(seq: KVSequence) -> dict[str, int]:
    """The files a sequence took cached pages from, and how many from each (its lookups kept)."""
    counts: dict[str, int] = {}
    for reuse in seq.sharing.log if seq.sharing is not None else ():
        for source in reuse.sources:
            counts[source] = counts.get(source, 0) + 1
    return dict(sorted(counts.items()))


def _longs(xs: list[int]) -> Tensor:
    return torch.tensor(xs, dtype=torch.int64)


class KVFS:
    def __init__(
        self,
        pool: PagePool,
        model_id: str,
        clock: Callable[[], float] = time.time,
        saved: SavedFiles | None = None,
        prefix_sharing: bool = True,
    ) -> None:
        self.pool, self.model_id, self.clock = pool, model_id, clock
        if prefix_sharing and pool.index is None:  # automatic prefix sharing (prefix_cache)
            pool.index = PrefixIndex(pool.page_size, clock)
        self.saved = saved  # where kv.save writes (None: nowhere)
        self._names: dict[str, KVFile] = {}
        self._handles: dict[int, Handle] = {}
        self._fds = itertools.count(1)
        self._auto = itertools.count()

    # ---- opening and closing ----

    def create(self, caller: Caller, path: str | None = None, mode: int | None = None) -> Handle:
        """A new empty file, open for writing. path None: `/proc/<pid>/kv<N>`."""
        mode = _check_mode(mode) if mode is not None else None
        path = self._new_name(caller, path)
        f = self._new_file(KVSequence(), caller, path, mode, parent=None)
        return self._open_handle(caller, path, f, writable=True)

    def open(self, caller: Caller, path: str, write: bool = False) -> Handle:
        path, f = self._lookup(caller, path, READ | WRITE if write else READ)
        return self._open_handle(caller, path, f, write)

    def handle(self, fd: int) -> Handle | None:
        """The open handle with this descriptor, if any (the RPC server maps wire handles)."""
        return self._handles.get(fd)

    def close(self, handle: Handle) -> None:
        f = self._live(handle)
        del self._handles[handle.fd]
        f.open_handles -= 1
        self._maybe_free(f)

    def fork(self, caller: Caller, src: Handle | str, dst: str | None = None) -> Handle:
        """A copy-on-write copy of src (which the caller must be able to read), open for writing."""
        src_path, f = self._resolve(caller, src, READ)
        dst = self._new_name(caller, dst)
        self.bring_back(src_path, f)
        child = self._new_file(f.seq.fork(self.pool), caller, dst, None, parent=src_path)
        return self._open_handle(caller, dst, child, writable=True)

    # ---- changing contents (writable handles) ----

    def sequence(self, handle: Handle, write: bool = False) -> KVSequence:
        """The file's sequence, for the runner to read (or, with write, append to: then it is
        brought back into the pool first, if it was swapped out)."""
        if not write:
            return self._live(handle).seq
        f = self._writable(handle)
        self.bring_back(handle.path, f)
        return f.seq

    def truncate(self, handle: Handle, n: int) -> None:
        f = self._writable(handle)
        self.bring_back(handle.path, f)
        f.seq.truncate(self.pool, n)

    def splice(
        self, caller: Caller, handle: Handle, src: Handle | str, start: int, stop: int | None
    ) -> Spliced:
        """Append tokens [start, stop) of src (which the caller must be able to read; stop None:
        its end) to a writable file, with their positions and keys and values, sharing src's
        pages where they line up (see `KVSequence.splice`)."""
        _check_range("splice", start, stop)
        f = self._writable(handle)
        src_path, g = self._resolve(caller, src, READ)
        self.bring_back(handle.path, f)
        self.bring_back(src_path, g)
        got = f.seq.splice(self.pool, g.seq, start, len(g.seq) if stop is None else stop)
        if got.tokens:
            f.spliced_from[src_path] = f.spliced_from.get(src_path, 0) + got.tokens
        return got

    def drop(self, handle: Handle, start: int, stop: int) -> None:
        """Remove tokens [start, stop) of a writable file; the pages only they filled are freed
        (see `KVSequence.drop`)."""
        _check_range("drop", start, stop)
        f = self._writable(handle)
        self.bring_back(handle.path, f)
        f.seq.drop(self.pool, start, stop)

    def hide(self, handle: Handle, indices: list[int]) -> None:
        self._writable(handle).seq.hide(indices)

    def unhide(self, handle: Handle, indices: list[int]) -> None:
        self._writable(handle).seq.unhide(indices)

    # ---- names ----

    def link(self, caller: Caller, src: Handle | str, dst: str) -> None:
        """Another name for the same file (a handle may give a name back to an unlinked file)."""
        _, f = self._resolve(caller, src, WRITE)
        self._add_name(self._new_name_for(caller, f, dst), f)

    def rename(self, caller: Caller, src: str, dst: str) -> None:
        src, f = self._lookup(caller, src, WRITE)
        self._check_may_name(caller, src)
        dst = self._new_name_for(caller, f, dst)
        self._add_name(dst, f)
        self._drop_name(src)
        for h in self._handles.values():
            if h.file is f and h.path == src:
                h.path = dst

    def unlink(self, caller: Caller, path: str) -> None:
        path, _ = self._lookup(caller, path, WRITE)
        self._check_may_name(caller, path)
        self._drop_name(path)

    def chmod(self, caller: Caller, path: str, mode: int) -> None:
        path, f = self._lookup(caller, path, 0)
        if caller.user != f.owner:
            raise PermissionDenied(
                path, f"only its owner {f.owner!r} may chmod, not {_who(caller)}"
            )
        f.mode = _check_mode(mode)

    # ---- looking ----

    def stat(self, caller: Caller, target: Handle | str) -> FileStat:
        path, f = self._resolve(caller, target, READ)
        return self._file_stat(f, path, self._holders(caller, set(f.seq.held_pages())))

    def explain(self, caller: Caller, path: Handle | str) -> PrefixReport:
        """How automatic prefix sharing went for a file: each forward's lookup, what it took
        from the cache, and where and why matching stopped (engine.prefix_cache)."""
        name, f = self._resolve(caller, path, READ)
        s = f.seq.sharing
        if s is None:
            return PrefixReport(name, len(f.seq), 0, 0, False, None, [])
        cached = sum(r.tokens for r in s.log)
        return PrefixReport(name, len(f.seq), cached, len(s.chain), s.on, s.dirty_from, list(s.log))

    def set_sharing(self, handle: Handle, on: bool) -> None:
        """Switch automatic prefix sharing for one file (it is on for every file by default)."""
        if not isinstance(on, bool):
            raise InvalidArgument(f"on must be True or False, not {on!r}")
        s = self._writable(handle).seq.sharing
        if s is not None:
            s.on = on

    def listdir(self, caller: Caller, path: str = "/") -> list[str]:
        """Direct children the caller may read: file names, and directories with a trailing /."""
        norm = normpath(path)
        if norm in self._names:
            raise BadPath(norm, "is a file, not a directory")
        prefix = norm.rstrip("/") + "/"
        out = {"proc/", "home/", "shared/"} if norm == "/" else set()
        for name, f in self._names.items():
            if name.startswith(prefix) and _may(caller, name, f, READ):
                head, sep, _ = name[len(prefix) :].partition("/")
                out.add(head + sep)
        return sorted(out)

    def files(self) -> Iterator[tuple[str, KVFile]]:
        """Every (name, file), then every unlinked file still open, as `<path> (deleted)`."""
        yield from sorted(self._names.items())
        seen: set[KVFile] = set()
        for h in self._handles.values():
            if not h.file.names and h.file not in seen:
                seen.add(h.file)
                yield f"{h.path} (deleted)", h.file

    def page_files(self) -> dict[int, list[str]]:
        files: dict[int, list[str]] = {}
        for path, f in self.files():
            for p in f.seq.held_pages():
                files.setdefault(p, []).append(path)
        return files

    # ---- views: what the workbench's widgets read (walk and pages touch no file) ----

    def walk(self, caller: Caller, path: str = "/") -> list[FileStat]:
        """The stat of every file under path the caller may read: one per readable name, by name.

        As `stat` on each name, in one call: `shared_with` lists only readable names.
        """
        norm = normpath(path)
        prefix = norm.rstrip("/") + "/"
        named = [
            (name, f)
            for name, f in sorted(self._names.items())
            if (name == norm or name.startswith(prefix)) and _may(caller, name, f, READ)
        ]
        holders = self._holders(caller)
        return [self._file_stat(f, name, holders) for name, f in named]

    def pages(self, caller: Caller) -> PageMap:
        """The page pool as the caller sees it: per page its holders, named where readable.

        `files[p]` has one readable name of each file holding page p (its first readable name
        in sorted order), so `refcount[p] - len(files[p])` files hold it unseen. Swapped-out
        pages (in host memory, see `KVSequence.swap_out`) are counted per readable file.
        """
        files: list[list[str]] = [[] for _ in range(self.pool.num_pages)]
        swapped: dict[str, int] = {}
        for name, f in self._first_readable_names(caller):
            for p in sorted(set(f.seq.held_pages())):
                files[p].append(name)
            if f.seq.num_swapped_pages:
                swapped[name] = f.seq.num_swapped_pages
        return PageMap(
            page_size=self.pool.page_size,
            refcount=list(self.pool.refcount),
            files=files,
            swapped=swapped,
            swapped_total=self.pool.num_swapped,
            cached=list(self.pool.cached),
        )

    def check(self) -> None:
        """AssertionError unless the pool's invariant holds and its count of swapped pages is
        the files' (every page in host memory belongs to a live file)."""
        self.pool.check()
        held = sum(f.seq.num_swapped_pages for f in self._all_files())
        assert held == self.pool.num_swapped, (
            f"files hold {held} pages in host memory, the pool counts {self.pool.num_swapped}"
        )

    def read(
        self, caller: Caller, path: Handle | str, start: int = 0, stop: int | None = None
    ) -> list[int]:
        """The token ids of a file the caller may read, `tokens[start:stop]`."""
        if not isinstance(start, int) or not (stop is None or isinstance(stop, int)):
            raise InvalidArgument("read takes int start and stop (or None)")
        _, f = self._resolve(caller, path, READ)
        return list(f.seq.tokens[start:stop])

    def _holders(
        self, caller: Caller, pages: set[int] | None = None
    ) -> dict[int, list[tuple[str, KVFile]]]:
        """Pool page -> the readable (name, file) pairs holding it (only `pages`, if given)."""
        out: dict[int, list[tuple[str, KVFile]]] = {}
        for name, f in sorted(self._names.items()):
            if not _may(caller, name, f, READ):
                continue
            for p in set(f.seq.held_pages()):
                if pages is None or p in pages:
                    out.setdefault(p, []).append((name, f))
        return out

    def _file_stat(
        self, f: KVFile, path: str, holders: dict[int, list[tuple[str, KVFile]]]
    ) -> FileStat:
        held = f.seq.held_pages()
        shared_with: dict[str, int] = {}
        for p in set(held):
            for name, other in holders.get(p, ()):
                if other is not f:
                    shared_with[name] = shared_with.get(name, 0) + 1
        return FileStat(
            path=path,
            tokens=len(f.seq),
            num_pages=f.seq.num_pages,
            num_shared_pages=sum(1 for p in held if self.pool.refcount[p] > 1),
            shared_with=dict(sorted(shared_with.items())),
            parent=f.parent,
            owner=f.owner,
            pid=f.pid,
            mode=f.mode,
            created=f.created,
            last_use=f.last_use,
            hidden=len(f.seq.hidden),
            page_table=tuple(f.seq.page_table()),
            names=tuple(sorted(f.names)),
            open_handles=f.open_handles,
            cached_from=_cached_from(f.seq),
            spliced_from=dict(sorted(f.spliced_from.items())),
        )

    def _first_readable_names(self, caller: Caller) -> list[tuple[str, KVFile]]:
        """Each file the caller may read once, by its first readable name."""
        seen: set[int] = set()
        out = []
        for name, f in sorted(self._names.items()):
            if id(f) not in seen and _may(caller, name, f, READ):
                seen.add(id(f))
                out.append((name, f))
        return out

    def _all_files(self) -> list[KVFile]:
        """Every live file once: named, or unlinked but still open."""
        unique = {id(f): f for _, f in self.files()}
        return list(unique.values())

    # ---- persistence ----

    # ---- saved files (engine.saved): a snapshot is taken and restored here, on the loop ----

    def save(self, caller: Caller, path: Handle | str, name: str) -> None:
        """Save a file under `name` in the caller's saved files (see engine.saved)."""
        self.saved_files().write(caller.user, name, *self.snapshot(caller, path))

    def load(self, caller: Caller, name: str, path: str | None = None) -> Handle:
        """A new file at path (None: `/proc/<pid>/kv<N>`) from a saved one, open for writing."""
        return self.restore(caller, self.saved_files().read(caller.user, name), path)

    def saved_files(self) -> SavedFiles:
        if self.saved is None:
            raise InvalidArgument("this engine keeps no saved files (it has no data directory)")
        return self.saved

    def snapshot(self, caller: Caller, path: Handle | str) -> tuple[dict[str, Tensor], dict]:
        """A readable file's tokens, positions, hidden set and K/V, and its metadata."""
        src, f = self._resolve(caller, path, READ)
        self.bring_back(src, f)
        k, v = gather_kv(self.pool, f.seq)
        tensors = {
            "k": k.contiguous().cpu(),
            "v": v.contiguous().cpu(),
            "tokens": _longs(f.seq.tokens),
            "positions": _longs(f.seq.positions),
            "hidden": _longs(sorted(f.seq.hidden)),
        }
        meta = {
            "format": FORMAT,
            "model_id": self.model_id,
            "source": src,
            "owner": f.owner,
            "mode": oct(f.mode),
        }
        return tensors, meta

    def restore(self, caller: Caller, saved: Saved, path: str | None = None) -> Handle:
        """A new file from a saved one, with its mode; refuses another model's file or a
        misshapen one; allocates all its pages or none."""
        path = self._new_name(caller, path)
        t = saved.tensors
        self._check_saved(saved.name, saved.meta, t)
        tokens, positions, hidden = (t[n].tolist() for n in ("tokens", "positions", "hidden"))
        seq = KVSequence(
            tokens,
            positions,
            self.pool.alloc(pages_for(len(tokens), self.pool.page_size)),
            set(hidden),
        )
        slots = _slots(self.pool, seq)
        self.pool.k.flatten(1, 2)[:, slots] = t["k"].to(self.pool.k)
        self.pool.v.flatten(1, 2)[:, slots] = t["v"].to(self.pool.v)
        mode = int(saved.meta.get("mode", oct(_default_mode(path))), 8)
        f = self._new_file(seq, caller, path, mode, parent=None)
        return self._open_handle(caller, path, f, writable=True)

    def _check_saved(self, src: str | Path, meta: dict[str, str], t: dict[str, Tensor]) -> None:
        """IncompatibleFile unless t is a KV file saved for this model that fits this pool."""
        if meta.get("format") != FORMAT or not set(SAVED) <= t.keys():
            raise IncompatibleFile(src, f"not a saved KV file (format {meta.get('format')!r})")
        if meta.get("model_id") != self.model_id:
            theirs = meta.get("model_id")
            raise IncompatibleFile(
                src, f"saved from model {theirs!r}, this engine serves {self.model_id!r}"
            )
        tokens, positions, hidden = t["tokens"], t["positions"], t["hidden"]
        n = len(tokens)
        if any(x.dim() != 1 for x in (tokens, positions, hidden)) or len(positions) != n:
            raise IncompatibleFile(src, "tokens and positions disagree")
        if len(hidden) and not 0 <= int(hidden.min()) <= int(hidden.max()) < n:
            raise IncompatibleFile(src, f"hidden indices outside 0..{n - 1}")
        layers, _, _, heads, dim = self.pool.k.shape
        if tuple(t["k"].shape) != (layers, n, heads, dim) or t["v"].shape != t["k"].shape:
            raise IncompatibleFile(
                src, f"K/V shape {tuple(t['k'].shape)}, this pool needs {(layers, n, heads, dim)}"
            )

    def remove_process(self, pid: int) -> int:
        """A process exited: close its handles, unlink its /proc files. Returns pages freed."""
        free_before = self.pool.num_free
        for h in [h for h in self._handles.values() if h.caller.pid == pid]:
            self.close(h)
        for name in [n for n in self._names if _proc_pid(n) == pid]:
            self._drop_name(name)
        return self.pool.num_free - free_before

    # ---- residency ----

    def bring_back(self, path: str, f: KVFile) -> None:
        """Bring a swapped-out file back into the pool (all its pages or none): OutOfPages,
        naming it, when the pool has no room for them now. A file in the pool: nothing."""
        if f.seq.swapped is None:  # the commonest case: every forward's file is asked
            return
        need = f.seq.num_swapped_pages
        if need > self.pool.num_free:
            raise OutOfPages(
                need,
                self.pool.num_free,
                f"{path} is swapped out to host memory and needs {need} pages to come back;"
                f" {self.pool.num_free} are free",
            )
        f.seq.swap_in(self.pool)

    # ---- internals ----

    def _lookup(self, caller: Caller, path: str, bits: int) -> tuple[str, KVFile]:
        """The file at path, if the caller may use it for bits; touches it."""
        path = file_path(path)
        pid = _proc_pid(path)
        if pid is not None and caller.pid != pid:
            raise PermissionDenied(path, f"private to process {pid}; {_who(caller)} may not use it")
        f = self._names.get(path)
        if f is None:
            raise FileNotFound(path, "no such file")
        if not _may(caller, path, f, bits):
            what = {READ: "read", WRITE: "write"}.get(bits, "read and write")
            raise PermissionDenied(
                path, f"{_who(caller)} may not {what} (owner {f.owner!r}, mode {f.mode:#o})"
            )
        f.last_use = self.clock()
        return path, f

    def _resolve(self, caller: Caller, target: Handle | str, bits: int) -> tuple[str, KVFile]:
        if isinstance(target, Handle):
            return target.path, self._writable(target) if bits & WRITE else self._live(target)
        return self._lookup(caller, target, bits)

    def _live(self, handle: Handle) -> KVFile:
        if self._handles.get(handle.fd) is not handle:
            raise InvalidArgument(f"{handle.path}: handle {handle.fd} is not open")
        handle.file.last_use = self.clock()
        return handle.file

    def _writable(self, handle: Handle) -> KVFile:
        f = self._live(handle)
        if not handle.writable:
            raise PermissionDenied(handle.path, f"handle {handle.fd} was opened read-only")
        return f

    def _check_may_name(self, caller: Caller, path: str) -> None:
        if not _may_name(caller, path):
            raise PermissionDenied(path, f"{_who(caller)} may not add or remove names here")

    def _new_name(self, caller: Caller, path: str | None) -> str:
        """A free, permitted path for a new name (path None: the caller's next /proc name)."""
        if path is None:
            if caller.pid is None:
                raise InvalidArgument("a client without a process must name the file")
            auto = file_path(f"/proc/{caller.pid}/kv{next(self._auto)}")
            while auto in self._names:
                auto = file_path(f"/proc/{caller.pid}/kv{next(self._auto)}")
            return auto
        path = file_path(path)
        self._check_may_name(caller, path)
        if path in self._names:
            raise FileExists(path, "file exists")
        if any(name.startswith(path + "/") for name in self._names):
            raise FileExists(path, "is a directory")
        parts = _parts(path)
        for i in range(2, len(parts)):
            if (above := "/" + "/".join(parts[:i])) in self._names:
                raise BadPath(path, f"{above} is a file, not a directory")
        return path

    def _new_name_for(self, caller: Caller, f: KVFile, path: str) -> str:
        """A new name for an existing file: another user's file may be named only in /shared
        (taking it into one's own /home or /proc would hide it from its owner)."""
        path = self._new_name(caller, path)
        if f.owner != caller.user and not path.startswith("/shared/"):
            raise PermissionDenied(
                path, f"{_who(caller)} may name {f.owner}'s file only under /shared"
            )
        return path

    def _new_file(
        self, seq: KVSequence, caller: Caller, path: str, mode: int | None, parent: str | None
    ) -> KVFile:
        now = self.clock()
        mode = _default_mode(path) if mode is None else mode
        f = KVFile(seq, caller.user, caller.pid, mode, parent, now, now)
        if self.pool.index is not None:  # a fork keeps its chain and its switch
            on = seq.sharing.on if seq.sharing is not None else True
            chain = seq.sharing.chain if seq.sharing is not None else []
            dirty = seq.sharing.dirty_from if seq.sharing is not None else None
            why = seq.sharing.why if seq.sharing is not None else "hidden"
            scope = scope_of(path, caller.user)
            seq.sharing = Sharing(caller.user, scope, path, on, chain, dirty, why=why)
        self._add_name(path, f)
        return f

    def _open_handle(self, caller: Caller, path: str, f: KVFile, writable: bool) -> Handle:
        h = Handle(next(self._fds), path, f, writable, caller)
        self._handles[h.fd] = h
        f.open_handles += 1
        return h

    def _add_name(self, path: str, f: KVFile) -> None:
        self._names[path] = f
        f.names.add(path)

    def _drop_name(self, path: str) -> None:
        f = self._names.pop(path)
        f.names.discard(path)
        self._maybe_free(f)

    def _maybe_free(self, f: KVFile) -> None:
        if not f.names and f.open_handles == 0:
            f.seq.release(self.pool)
