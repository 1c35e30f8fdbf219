"""Bad forwards get clear errors and change nothing; running out of pages is typed."""

from __future__ import annotations

import pytest
import torch

from engine.page_pool import PagePool
from engine.runner import LogProbs, Runner, Segment, TopK
from engine.sequence import KVSequence
from engine.wire.errors import InvalidArgument, OutOfPages


@pytest.fixture
def runner(tiny_loaded, pools: list[PagePool]) -> Runner:  # noqa: ANN001
    pool = PagePool.for_model(tiny_loaded.config, num_pages=8, page_size=4)
    pools.append(pool)
    return Runner(tiny_loaded.model, pool)


@pytest.mark.parametrize(
    ("segment", "message"),
    [
        (lambda s: Segment(s, []), "no tokens"),
        (lambda s: Segment(s, [1, 256]), r"token ids must be in 0\.\.255"),
        (lambda s: Segment(s, [-1]), "token ids"),
        (lambda s: Segment(s, [1, 2], positions=[0]), "need 2 non-negative positions"),
        (lambda s: Segment(s, [1], positions=[-3]), "non-negative positions"),
        (lambda s: Segment(s, [1, 2], mask=torch.ones(2, 3, dtype=torch.bool)), r"shape \(2, 2\)"),
        (lambda s: Segment(s, [1, 2], outputs=[2]), r"output indices must be in 0\.\.1"),
        (lambda s: Segment(s, [1], returns=TopK(0)), "top-k"),
        (lambda s: Segment(s, [1], returns=LogProbs([[1], [2]])), "one equal-length token list"),
        (lambda s: Segment(s, [1], returns=LogProbs([[999]])), "log-prob token ids"),
    ],
)
def test_bad_segments_are_refused_and_change_nothing(runner: Runner, segment, message: str) -> None:  # noqa: ANN001
    seq = KVSequence()
    with pytest.raises(InvalidArgument, match=message):
        runner.forward([segment(seq)])
    assert len(seq) == 0 and seq.pages == [] and runner.pool.num_free == runner.pool.num_pages


def test_same_sequence_twice_in_one_forward_is_refused(runner: Runner) -> None:
    seq = KVSequence()
    with pytest.raises(InvalidArgument, match="only once"):
        runner.forward([Segment(seq, [1]), Segment(seq, [2])])


def test_out_of_pages_is_typed_and_leaves_every_sequence_as_it_was(runner: Runner) -> None:
    a, b = KVSequence(), KVSequence()
    runner.forward([Segment(a, list(range(20)))])  # 5 of 8 pages
    with pytest.raises(OutOfPages) as err:
        runner.forward([Segment(a, [1]), Segment(b, list(range(13)))])  # 1 + 4 > 3 free
    assert err.value.needed == 5 and err.value.free == 3
    assert len(a) == 20 and len(b) == 0 and runner.pool.num_free == 3
    (out,) = runner.forward([Segment(a, [1])])  # still serving
    assert out.shape == (1, 256)
    a.release(runner.pool)


def test_a_failed_forward_returns_its_reserved_pages(runner: Runner, monkeypatch) -> None:  # noqa: ANN001
    seq = KVSequence()
    runner.forward([Segment(seq, [1, 2, 3])])

    def boom(*args: object) -> None:
        raise RuntimeError("kernel failed")

    monkeypatch.setattr(runner.backend, "plan", boom)
    with pytest.raises(RuntimeError, match="kernel failed"):
        runner.forward([Segment(seq, list(range(10)))])
    assert len(seq) == 3 and len(seq.pages) == 1
    seq.release(runner.pool)
