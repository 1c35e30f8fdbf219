"""The bench contract's arithmetic: side-by-side timings and the rows they make."""

from __future__ import annotations

import itertools

import pytest

from engine.bench import common


def scripted(monkeypatch: pytest.MonkeyPatch, seconds: list[float]) -> None:
    """`timed` returns these durations in turn, whatever it is asked to time."""
    it = iter(seconds)
    monkeypatch.setattr(common, "timed", lambda fn: next(it))


def test_speedup_is_the_median_of_back_to_back_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    # A slow spell hits the engine's last three runs and the baseline's last two: medians of
    # each side would say 3 s vs 2 s (0.67x); every undisturbed pair says the engine is 2x.
    engine = [1.0, 1.0, 3.0, 3.0, 3.0]
    baseline = [2.0, 2.0, 2.0, 6.0, 6.0]
    scripted(monkeypatch, list(itertools.chain(*zip(engine, baseline, strict=True))))
    t = common.side_by_side(lambda: None, lambda: None, runs=5, warmup=0)
    assert (t.engine, t.baseline) == (3.0, 2.0)
    assert t.speedup == pytest.approx(2.0)


def test_throughput_row_reports_rates_and_the_paired_ratio() -> None:
    row = common.throughput_row(
        "plain", "16x128+64", "tiny", 1024, "tok/s", common.Timing(2, 4, 1.9, (1.7, 2.1))
    )
    assert (row.engine, row.baseline, row.ratio) == (512.0, 256.0, 1.9)
    assert row.ratio_quartiles == (1.7, 2.1)
    assert not common.lower_is_better(row)


def test_runs_alternate_after_an_untimed_warm_up_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(common, "timed", lambda fn: (fn(), 1.0)[1])
    common.side_by_side(lambda: calls.append("e"), lambda: calls.append("b"), runs=2, warmup=1)
    assert calls == ["e", "b", "e", "b", "e", "b"]  # one warm-up pair (untimed), then two timed


def test_rows_carry_the_middle_half_of_the_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    # pairs say 1x, 2x, 3x, 4x, 5x: median 3x, the middle half from 2x to 4x
    baseline = [3.0, 1.0, 5.0, 2.0, 4.0]
    scripted(monkeypatch, list(itertools.chain(*zip([1.0] * 5, baseline, strict=True))))
    t = common.side_by_side(lambda: None, lambda: None, runs=5, warmup=0)
    assert t.speedup == pytest.approx(3.0)
    assert t.quartiles == pytest.approx((2.0, 4.0))
    row = common.throughput_row("plain", "16x128+64", "tiny", 10, "tok/s", t)
    assert row.ratio_quartiles == (2.0, 4.0)
    assert common.ratio_text(row) == "3.00x (middle half of pairs 2.00-4.00)"


def test_one_pair_is_its_own_middle_half(monkeypatch: pytest.MonkeyPatch) -> None:
    scripted(monkeypatch, [1.0, 2.0])
    assert common.side_by_side(lambda: None, lambda: None, runs=1, warmup=0).quartiles == (2.0, 2.0)
