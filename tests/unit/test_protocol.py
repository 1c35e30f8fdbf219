"""The wire format and the connection file, without an engine."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from engine import connection
from engine.errors import (
    AuthenticationFailed,
    BadMessage,
    EngineNotRunning,
    FileNotFound,
    InvalidArgument,
    MessageTooLarge,
    OutOfPages,
    PermissionDenied,
)
from engine.protocol import (
    VERSION,
    Dropped,
    RemoteError,
    Wire,
    check_size,
    error_reply,
    packb,
    parse_request,
    rebuild_error,
    request_body,
    returns_from_wire,
    returns_to_wire,
    sign,
    unpackb,
)
from engine.records import (
    Distribution,
    Event,
    FileStat,
    Logits,
    LogProbs,
    Message,
    ProcessInfo,
    Sample,
    SamplingParams,
    TopK,
)

REPO = Path(__file__).resolve().parents[2]


def test_records_cross_the_wire_as_themselves() -> None:
    stat_ = FileStat(
        path="/shared/p",
        tokens=5,
        pages=2,
        shared_pages=1,
        shared_with={"/proc/1/kv0": 1},
        parent=None,
        owner="al",
        pid=1,
        mode=0o644,
        created=1.0,
        last_use=2.0,
        hidden=0,
        page_table=(3, 4),
        names=("/shared/p",),
        open_handles=1,
    )
    values = [
        Distribution([3, 1], [0.75, 0.25]),
        Message(4, {"text": "hi", "n": [1, 2]}),
        stat_,
        ProcessInfo(1, "a", "al", "ready", 0, None, 1, 2, 3, 0.1, 0.2, 0.0, None, None),
        Event(7, 0.5, "batch", None, {"pids": [1, 2]}),
    ]
    back = unpackb(packb({"results": values}))["results"]
    assert back == values
    assert [type(v) for v in back] == [type(v) for v in values]
    assert isinstance(back[2].page_table, tuple)


def test_malformed_records_are_refused() -> None:
    for payload in (["ProcessInfo", [1, "a"]], ["NoSuchRecord", []], ["Message", {"pid": 1}]):
        data = msgpack.packb([msgpack.ExtType(1, msgpack.packb(payload))])
        with pytest.raises(BadMessage, match="record"):
            unpackb(data)


def test_unknown_values_are_refused_not_pickled() -> None:
    with pytest.raises(TypeError, match="cannot send a object"):
        packb({"x": object()})


def test_signatures_and_refusals() -> None:
    wire, other = Wire("secret", max_message=1000), Wire("wrong")
    frames = wire.frames({"kind": "request", "session": "s", "id": 1}, request_body(1, "ps", {}, 2))
    msg = wire.parse(frames)
    assert parse_request(msg.body).op == "ps" and parse_request(msg.body).pid == 2
    with pytest.raises(AuthenticationFailed):
        other.parse(frames)
    with pytest.raises(Dropped):
        wire.parse([b"", *frames[1:]])
    with pytest.raises(Dropped):
        wire.parse(frames[1:])
    big = wire.frames({"kind": "request", "id": 9}, "x" * 2000)
    with pytest.raises(Dropped, match="over the limit of 1000"):  # unread: not even hashed
        wire.parse(big)
    with pytest.raises(MessageTooLarge, match="over the engine's limit of 1000"):
        check_size(big, 1000)  # what a client checks before it sends
    header = packb({"v": VERSION, "kind": "request", "id": 3})
    bad = [sign(wire.key, header, b"\xc1"), header, b"\xc1"]
    with pytest.raises(BadMessage, match="not msgpack"):
        wire.parse(bad)
    with pytest.raises(BadMessage):
        parse_request(["not", "a", "map"])


def test_errors_come_back_as_their_own_types() -> None:
    for error in (
        PermissionDenied("/home/al/x", "user 'bo' may not write"),
        FileNotFound("/shared/none", "no such file"),
        OutOfPages(8, 2),
        InvalidArgument("bad"),
        TimeoutError("late"),
    ):
        body = msgpack.unpackb(packb(error_reply(1, error)))
        back = rebuild_error(body["error"])
        assert type(back) is type(error) and str(back) == str(error)
        assert vars(back) == {k: v for k, v in vars(error).items()}
    assert isinstance(rebuild_error({"type": "SystemExit", "message": "x"}), RemoteError)


def test_returns_specs_round_trip() -> None:
    specs = [
        TopK(5),
        Sample(SamplingParams(0.8, 40, 0.9, 0.05), 7),
        Sample(),
        LogProbs([[1, 2], [3, 4]]),
        Logits(),
    ]
    assert [returns_from_wire(returns_to_wire(s)) for s in specs] == specs
    assert returns_to_wire(Sample(SamplingParams(0.5), 3))["kind"] == "sample"
    with pytest.raises(InvalidArgument):
        returns_from_wire({"kind": "sample", "temperature": -1})
    with pytest.raises(InvalidArgument):
        returns_from_wire({"kind": "beam"})


def test_distribution_samples_without_torch() -> None:
    d = Distribution([5, 6, 7], [0.5, 0.3, 0.2])
    assert d.sample(0) == 5 and d.argmax() == 5
    assert d.sample(1.0, 3) == d.sample(1.0, 3)
    assert {d.sample(1.0) for _ in range(200)} == {5, 6, 7}


def test_connection_file_is_private_and_found_like_jupyter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(connection.ENV_VAR, raising=False)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "rt"))
    assert connection.default_path() == tmp_path / "rt" / "symphony-engine.json"
    monkeypatch.delenv("JUPYTER_RUNTIME_DIR")
    monkeypatch.delenv("JUPYTER_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert connection.default_path() == tmp_path / "xdg/jupyter/runtime/symphony-engine.json"
    monkeypatch.setenv(connection.ENV_VAR, str(tmp_path / "mine.json"))
    assert connection.default_path() == tmp_path / "mine.json"

    info = connection.ConnectionInfo("tcp", "127.0.0.1", 5555, "t0k", os.getpid(), "m", "cpu")
    path = connection.write(info)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert connection.read() == info and info.address == "tcp://127.0.0.1:5555"
    connection.remove(path, dataclasses.replace(info, token="other"))
    assert path.exists()  # another engine's file stays
    connection.remove(path, info)
    with pytest.raises(EngineNotRunning, match="does not exist"):
        connection.read()
    dead = connection.ConnectionInfo("tcp", "127.0.0.1", 1, "t", 2**22 + 12345, "m", "cpu")
    connection.write(dead)
    with pytest.raises(EngineNotRunning, match="stale"):
        connection.read()


def test_same_machine_clients_use_the_unix_socket(tmp_path: Path) -> None:
    import socket

    sock_path = tmp_path / "engine.sock"
    info = connection.ConnectionInfo(
        "tcp", "127.0.0.1", 5555, "t", os.getpid(), "m", "cpu", f"ipc://{sock_path}"
    )
    assert info.local_address == "tcp://127.0.0.1:5555"  # no socket there (another machine)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock_path))
        assert info.local_address == f"ipc://{sock_path}"
    written = connection.write(info, tmp_path / "c.json")
    assert connection.read(written) == info
    old = {k: v for k, v in dataclasses.asdict(info).items() if k != "ipc"}  # before ipc existed
    written.write_text(json.dumps(old))
    assert connection.read(written).local_address == "tcp://127.0.0.1:5555"


def test_the_notebook_side_imports_no_torch() -> None:
    code = (
        "import sys, workbench.client, engine.cli\n"
        "bad = [m for m in ('torch', 'engine.kernel', 'engine.syscalls') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
