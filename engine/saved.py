"""Saved KV files on the host: in the engine's data directory, one folder per user, by name.

A client names a saved file (`kv.save(f, "prompt-v1")`, `kv.load("prompt-v1")`), never a host
path: a name is letters, digits and `._-` (not starting with a dot, at most 100 characters), so
nothing outside `<data dir>/saved/<user>/` is ever read or written. Only regular files are read:
a FIFO or a device there is refused, never waited on.

A saved file keeps the KV file's mode and owner (in its metadata). Its owner may always load it;
another user names it `"<owner>/<name>"` and needs the read bit for others (mode & 0o004), as
opening the KV file would. The host files themselves are private to the engine's OS user (0600).

Reading and writing are plain blocking functions: the engine runs them off its event loop.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from pathlib import Path
from typing import NamedTuple

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from engine.wire.errors import BadPath, FileNotFound, IncompatibleFile, PermissionDenied

NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
SUFFIX = ".kv"
DATA_DIR_ENV = "SYMPHONY_DATA_DIR"


def default_data_dir() -> Path:
    """`$SYMPHONY_DATA_DIR`, else `$XDG_DATA_HOME/symphony` (`~/.local/share/symphony`)."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV])
    xdg = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(xdg) / "symphony"


class Saved(NamedTuple):
    """A saved KV file's contents: tensors, and metadata (format, model, source, owner, mode)."""

    name: str  # as the caller gave it: "prompt-v1" or "alice/prompt-v1"
    meta: dict[str, str]
    tensors: dict[str, Tensor]


class SavedFiles:
    """The folder of saved KV files: `<root>/<user>/<name>.kv`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def where(self, user: str, name: str) -> tuple[str, Path]:
        """The owner and the host path a name means for `user`; BadPath for a malformed name."""
        if not isinstance(name, str):
            raise BadPath(repr(name), "a saved file's name is a string")
        owner, _, plain = name.rpartition("/")
        owner = owner or user
        if not NAME.fullmatch(plain) or not NAME.fullmatch(owner):
            raise BadPath(
                name,
                "a saved file is named by letters, digits and ._- (or <user>/<name> for another"
                " user's), not a host path",
            )
        return owner, self.root / owner / (plain + SUFFIX)

    def write(self, user: str, name: str, tensors: dict[str, Tensor], meta: dict[str, str]) -> None:
        """Save under the caller's own name (replacing their earlier file of that name)."""
        owner, path = self.where(user, name)
        if owner != user:
            raise PermissionDenied(name, f"{user} may only save under their own names")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".saving-", suffix=SUFFIX)
        os.close(fd)  # mkstemp made it 0600
        try:
            save_file(tensors, tmp, metadata=meta)
            os.replace(tmp, path)  # whole or not at all
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def read(self, user: str, name: str) -> Saved:
        """A saved file `user` may read: their own, or another's that others may read."""
        owner, path = self.where(user, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise FileNotFound(name, f"no saved file of that name ({owner}'s)") from None
        if not stat.S_ISREG(st.st_mode):
            raise IncompatibleFile(name, "not a regular file")
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118
        except (OSError, SafetensorError) as e:
            raise IncompatibleFile(name, f"not a saved KV file ({e})") from None
        try:
            mode = int(meta.get("mode", "0o600"), 8)
        except ValueError:
            raise IncompatibleFile(name, f"a bad mode {meta.get('mode')!r}") from None
        if owner != user and (meta.get("owner") != owner or not mode & 0o004):
            raise PermissionDenied(name, f"{owner}'s saved file is not readable by others")
        return Saved(name, meta, tensors)

    def names(self, user: str) -> list[str]:
        """The names of a user's saved files."""
        folder = self.root / user
        if not NAME.fullmatch(user) or not folder.is_dir():
            return []
        return sorted(p.name[: -len(SUFFIX)] for p in folder.glob("*" + SUFFIX) if p.is_file())
