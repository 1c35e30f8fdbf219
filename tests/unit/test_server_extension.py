"""The server extension's pieces that need no server: statuses for engine errors, the batch
rate, where the connection file goes, the `symphony serve` options it passes on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine.wire.errors import (
    BadPath,
    EngineError,
    EngineNotRunning,
    FileNotFound,
    InvalidArgument,
    NoSuchProcess,
    PermissionDenied,
    UnknownOperation,
)
from workbench import server_extension as ext


@pytest.mark.parametrize(
    "error,status",
    [
        (EngineNotRunning("gone"), 503),
        (PermissionDenied("process 3", "belongs to bob"), 403),
        (FileNotFound("/shared/x", "does not exist"), 404),
        (NoSuchProcess("no process 12"), 404),
        (BadPath("x", "relative path"), 400),
        (InvalidArgument("bad"), 400),
        (UnknownOperation("sessions?"), 400),
        (EngineError("something else"), 500),
    ],
)
def test_engine_errors_become_http_statuses(error: EngineError, status: int) -> None:
    refused = ext.http_error(error)
    assert refused.status_code == status
    assert refused.detail.startswith(type(error).__name__ + ": ")


def test_batches_per_second_over_the_recent_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    service = ext.EngineService(Path("/nonexistent"), False, [], logging.getLogger("test"))
    clock = [100.0]
    monkeypatch.setattr(ext.time, "monotonic", lambda: clock[0])
    assert service.batch_rate(50) == 0.0  # one sample: no rate yet
    clock[0] += 2.0
    assert service.batch_rate(70) == 10.0
    clock[0] += 20.0  # older samples fall out of the window
    assert service.batch_rate(70) == 0.0
    clock[0] += 1.0
    assert service.batch_rate(75) == 5.0
    clock[0] += 1.0
    assert service.batch_rate(3) == 0.0  # a new engine counts from zero again
    clock[0] += 1.0
    assert service.batch_rate(9) == 6.0


def test_the_connection_file_is_in_the_servers_runtime_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = SimpleNamespace(runtime_dir=str(tmp_path))
    monkeypatch.delenv("SYMPHONY_CONNECTION_FILE", raising=False)
    assert ext.connection_path(server) == tmp_path / "symphony-engine.json"  # type: ignore[arg-type]
    monkeypatch.setenv("SYMPHONY_CONNECTION_FILE", str(tmp_path / "elsewhere.json"))
    assert ext.connection_path(server) == tmp_path / "elsewhere.json"  # type: ignore[arg-type]


def test_settings_become_serve_options() -> None:
    app = ext.SymphonyWorkbench(
        model="/models/m", num_pages=64, threads=2, engine_args=["--ip=::1"]
    )
    expected = ["--model", "/models/m", "--num-pages", "64", "--threads", "2", "--ip=::1"]
    assert app.serve_args() == expected
    assert ext.SymphonyWorkbench().serve_args() == []
    assert ext._jupyter_server_extension_points() == [
        {"module": "workbench.server_extension", "app": ext.SymphonyWorkbench}
    ]
