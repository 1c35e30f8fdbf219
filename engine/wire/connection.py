"""The connection file: where a running engine listens and the token that signs its messages.

JSON, mode 0600, in the Jupyter runtime directory (found the way `jupyter_core` finds it, but
without importing Jupyter), named `symphony-engine.json`; `$SYMPHONY_CONNECTION_FILE` names
another path. Fields: transport, ip, port, token, pid, model, device, and ipc: the engine's
second endpoint on POSIX, a Unix socket (`ipc://...`) that clients on the same machine use
instead of loopback TCP (a bare ZeroMQ round trip measured 157-192 µs over it here, 228 over TCP).
A user's connection file (`symphony user add NAME`, see engine.credentials) also has `user`: its
token is that user's, not the engine's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.wire.errors import EngineNotRunning

FILE_NAME = "symphony-engine.json"
ENV_VAR = "SYMPHONY_CONNECTION_FILE"


@dataclass(frozen=True)
class ConnectionInfo:
    transport: str
    ip: str
    port: int
    token: str
    pid: int
    model: str
    device: str
    ipc: str = ""
    user: str = ""  # a user's credential: the user whose token this is ("": the engine's owner)

    @property
    def address(self) -> str:
        return f"{self.transport}://{self.ip}:{self.port}"

    @property
    def local_address(self) -> str:
        """Where to connect: the ipc endpoint when its socket is on this machine, else TCP."""
        if self.ipc.startswith("ipc://") and Path(self.ipc[len("ipc://") :]).is_socket():
            return self.ipc
        return self.address


def jupyter_runtime_dir() -> Path:
    """`jupyter --runtime-dir`, computed like jupyter_core.paths does."""
    if os.environ.get("JUPYTER_RUNTIME_DIR"):
        return Path(os.environ["JUPYTER_RUNTIME_DIR"])
    return _jupyter_data_dir() / "runtime"


def _jupyter_data_dir() -> Path:
    if os.environ.get("JUPYTER_DATA_DIR"):
        return Path(os.environ["JUPYTER_DATA_DIR"])
    home = Path.home()
    if sys.platform == "darwin":
        return home / "Library" / "Jupyter"
    if os.name == "nt":
        appdata = os.environ.get("APPDATA")
        return Path(appdata) / "jupyter" if appdata else home / ".jupyter" / "data"
    xdg = os.environ.get("XDG_DATA_HOME") or str(home / ".local" / "share")
    return Path(xdg) / "jupyter"


def default_path() -> Path:
    override = os.environ.get(ENV_VAR)
    return Path(override) if override else jupyter_runtime_dir() / FILE_NAME


def write(info: ConnectionInfo, path: str | Path | None = None) -> Path:
    """Write the file with mode 0600 (created so, never world-readable for an instant)."""
    path = Path(path) if path is not None else default_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(info), f, indent=2)
    os.replace(tmp, path)
    return path


def read(path: str | Path | None = None) -> ConnectionInfo:
    """The running engine's connection info; EngineNotRunning says why there is none."""
    path = Path(path) if path is not None else default_path()
    try:
        doc = json.loads(path.read_text())
        fields = ConnectionInfo.__dataclass_fields__  # a file from before `ipc` has none
        info = ConnectionInfo(**{k: doc[k] for k in fields if k in doc})
    except FileNotFoundError:
        raise EngineNotRunning(
            f"no engine is running: {path} does not exist (start one with `symphony serve`)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EngineNotRunning(f"{path} is not a Symphony connection file ({e})") from None
    if info.ip in ("127.0.0.1", "localhost", "::1") and not _pid_alive(info.pid):
        raise EngineNotRunning(
            f"no engine is running: {path} names process {info.pid}, which has exited "
            "(a stale file; start one with `symphony serve`)"
        )
    return info


def remove(path: str | Path, info: ConnectionInfo | None = None) -> None:
    """Remove the file, unless it now belongs to another engine (another token)."""
    path = Path(path)
    try:
        if info is not None and json.loads(path.read_text()).get("token") != info.token:
            return
        path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
