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

from engine.wire import connection
from engine.wire.errors import (
    AuthenticationFailed,
    BadMessage,
    EngineNotRunning,
    FileNotFound,
    InvalidArgument,
    MessageTooLarge,
    OutOfPages,
    PermissionDenied,
)
from engine.wire.protocol import (
    MAX_DEPTH,
    MAX_GREETING,
    VERSION,
    Dropped,
    Gate,
    RemoteError,
    ReplayGuard,
    Wire,
    check_size,
    error_reply,
    nesting,
    packb,
    parse_request,
    rebuild_error,
    request_body,
    returns_from_wire,
    returns_to_wire,
    sign,
    unpackb,
)
from engine.wire.records import (
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
        num_pages=2,
        num_shared_pages=1,
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


# ---- hostile input (issue 18, items 6 to 8) ----


def _nested(opener: bytes, levels: int) -> bytes:
    return opener * levels + b"\x00"


def test_values_nest_at_most_max_depth_in_arrays_maps_and_records() -> None:
    records = msgpack.packb(0)
    for _ in range(MAX_DEPTH + 1):  # a record (extension 1) around a record ...
        records = msgpack.packb(msgpack.ExtType(1, records))
    for opener in (b"\x91", b"\x81\xa1k"):
        assert nesting(unpackb(_nested(opener, MAX_DEPTH))) == MAX_DEPTH
        with pytest.raises(BadMessage, match=f"nested more than {MAX_DEPTH}"):
            unpackb(_nested(opener, MAX_DEPTH + 1))
    with pytest.raises(BadMessage, match=f"nested more than {MAX_DEPTH}"):
        unpackb(records)
    with pytest.raises(BadMessage):  # deeper than msgpack's own stack: still a BadMessage
        unpackb(_nested(b"\x91", 5000))
    mixed = Message(1, {"a": [Message(2, [[1]])]})  # records count as a level each
    assert nesting(unpackb(packb(mixed))) == 6
    with pytest.raises(BadMessage):
        unpackb(packb(mixed), max_depth=5)


def test_records_nested_250_deep_are_refused_without_a_crash() -> None:
    """Each record unpacks in a C call of its own: 250 of them overflowed the stack (SIGSEGV)."""
    code = (
        "import msgpack\n"
        "from engine.wire.protocol import unpackb, Wire\n"
        "data = msgpack.packb(0)\n"
        "for _ in range(250): data = msgpack.packb(msgpack.ExtType(1, data))\n"
        "assert len(data) < 1024\n"
        "try: unpackb(data)\n"
        "except Exception as e: print(type(e).__name__)\n"
        "print(Wire.rejection([b'', b'\\x80', data]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"died with {done.returncode}: {done.stderr}"
    assert done.stdout.split() == ["BadMessage", "None"]


def test_headers_are_flat_and_unsigned_replies_small_and_plain() -> None:
    wire = Wire("secret")
    h = packb({"v": VERSION, "kind": "request", "id": 1, "n": 1, "extra": [1]})
    with pytest.raises(BadMessage, match="header"):
        wire.parse([sign(wire.key, h, b"\x80"), h, b"\x80"])
    refused = error_reply(None, AuthenticationFailed("no"))
    assert isinstance(Wire.rejection([b"", b"\x80", packb(refused)]), AuthenticationFailed)
    padded = {**refused, "pad": "x" * 5000}  # over 4 KiB: not read
    assert Wire.rejection([b"", b"\x80", packb(padded)]) is None
    as_record = msgpack.packb(msgpack.ExtType(1, packb(["Message", [1, refused]])))
    assert Wire.rejection([b"", b"\x80", as_record]) is None  # no records in unsigned replies


def test_the_gate_refuses_big_messages_from_strangers_before_hashing() -> None:
    wire = Wire("secret", max_message=1 << 20)
    gate = Gate(wire)
    big = ["x" * (MAX_GREETING + 10)]
    forged = [b"0" * 64, *wire.frames({"kind": "request", "session": "s", "id": 1}, big)[1:]]
    with pytest.raises(Dropped, match="over the limit"):  # not AuthenticationFailed: unhashed
        gate.admit(b"stranger", forged)
    with pytest.raises(AuthenticationFailed):  # small enough to check
        gate.admit(b"stranger", [b"0" * 64, *wire.frames({"kind": "ping"}, {})[1:]])
    with pytest.raises(Dropped, match="over the limit"):
        gate.admit(b"peer", wire.frames({"kind": "request", "session": "s", "id": 1}, big))
    hello = wire.frames({"kind": "request", "session": "s", "id": 2}, {"op": "hello"})
    assert gate.admit(b"peer", hello).body == {"op": "hello"}
    assert gate.admit(b"peer", wire.frames({"kind": "request", "session": "s"}, big)).body == big
    with pytest.raises(Dropped, match="replayed"):  # the same message, from anywhere
        gate.admit(b"other", hello)
    h = packb({"v": VERSION, "kind": "request", "session": "s"})  # not numbered
    with pytest.raises(Dropped, match="serial number"):
        gate.admit(b"peer", [sign(wire.key, h, b"\x80"), h, b"\x80"])


def test_the_replay_guard_takes_each_serial_once_in_bounded_memory() -> None:
    guard = ReplayGuard(sessions=2, window=8)
    assert [guard.first_time("a", n) for n in (1, 3, 2, 3, 1)] == [True] * 3 + [False] * 2
    for n in range(4, 40):  # the window moves on ...
        assert guard.first_time("a", n)
    assert len(guard._seen["a"].recent) <= 8
    assert not any(guard.first_time("a", n) for n in range(1, 40))  # ... and nothing old passes
    assert guard.first_time("a", 41) and guard.first_time("a", 40)  # a little out of order
    assert guard.first_time("b", 1)  # another session has its own serials
    guard.first_time("c", 1)  # a third: the longest unused ("a") is forgotten
    assert set(guard._seen) == {"b", "c"}


def test_call_arguments_are_checked_against_the_declaration() -> None:
    from engine.wire.arguments import check_call
    from engine.wire.calls import BY_NAME

    for op, args, message in [
        ("kv.truncate", {"n": 1.0}, "n must be an int, not 1.0"),
        ("kv.create", {"path": "/x", "colour": 1}, "no argument 'colour'"),
        ("kv.chmod", {"path": "/x"}, "missing argument 'mode'"),
        ("sleep", {"seconds": "1"}, "seconds must be a number"),
        ("receive", {"timeout": True}, "timeout must be a number or None"),
        ("kv.stat", {"path": 3}, "path must be a KV file handle or a str"),
    ]:
        with pytest.raises(InvalidArgument, match=message):
            check_call(BY_NAME[op], args)
    check_call(BY_NAME["kv.load"], {"src": "saved.kv", "path": None})
    check_call(BY_NAME["receive"], {"timeout": 2})
