from __future__ import annotations

from unittest import mock

import pytest
import torch

from engine.sampler import SamplingParams, filter_logits, make_generator, sample
from engine.wire.errors import InvalidArgument

LOGITS = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))


def draws(params: SamplingParams, n: int = 400, seed: int = 0) -> list[int]:
    g = make_generator(seed)
    return [sample(LOGITS, [params], [g])[0] for _ in range(n)]


def test_greedy_takes_the_argmax() -> None:
    assert sample(LOGITS.repeat(3, 1), [SamplingParams()] * 3, [None] * 3) == [0, 0, 0]


def test_seeded_sampling_is_reproducible_and_seeds_differ() -> None:
    p = SamplingParams(temperature=1.0)
    assert draws(p, seed=1) == draws(p, seed=1)
    assert draws(p, seed=1) != draws(p, seed=2)


def test_a_row_samples_the_same_whatever_batch_it_is_in() -> None:
    p = SamplingParams(temperature=1.0)
    alone = [sample(LOGITS, [p], [g])[0] for g in [make_generator(7)] for _ in range(50)]
    g, other = make_generator(7), make_generator(99)
    batched = [sample(LOGITS.repeat(2, 1), [p, p], [other, g])[1] for _ in range(50)]
    assert alone == batched


def test_rows_sharing_a_generator_draw_as_if_one_at_a_time() -> None:
    p = SamplingParams(temperature=1.0)
    g = make_generator(3)
    one_by_one = [sample(LOGITS, [p], [g])[0] for _ in range(60)]
    g = make_generator(3)
    together = [t for _ in range(20) for t in sample(LOGITS.repeat(3, 1), [p] * 3, [g] * 3)]
    assert together == one_by_one


@pytest.mark.parametrize("size", [4, 5, 49152])
def test_the_extreme_uniforms_draw_the_first_and_last_tokens_allowed(size: int) -> None:
    # the largest u lands on the last token allowed, not past it nor on a filtered one
    probs = torch.zeros(1, size)
    probs[0, :3] = torch.tensor([0.25, 0.5, 0.25])
    probs[0, -1] = 1e-3  # the last token, filtered out by top-k
    p = SamplingParams(temperature=1.0, top_k=3)
    for u, token in ((1 - 2**-24, 2), (0.0, 0)):  # the largest float32 below 1, and 0
        with mock.patch("engine.sampler.uniforms", return_value=torch.tensor([u])):
            assert sample(probs.log(), [p], [None]) == [token]


def test_frequencies_follow_the_distribution() -> None:
    counts = torch.bincount(
        torch.tensor(draws(SamplingParams(temperature=1.0), n=2000)), minlength=4
    )
    assert abs(counts[0].item() / 2000 - 0.5) < 0.05 and counts[3] > 0


@pytest.mark.parametrize(
    ("params", "allowed"),
    [
        (SamplingParams(temperature=1.0, top_k=2), {0, 1}),
        (SamplingParams(temperature=1.0, top_p=0.7), {0, 1}),  # 0.5 < 0.7, 0.8 >= 0.7
        (SamplingParams(temperature=1.0, min_p=0.5), {0, 1}),  # p >= 0.25
        (SamplingParams(temperature=1.0, top_p=0.01), {0}),
    ],
)
def test_filters_restrict_the_support(params: SamplingParams, allowed: set[int]) -> None:
    assert set(draws(params)) == allowed
    kept = torch.isfinite(filter_logits(LOGITS, [params]))[0].nonzero().flatten().tolist()
    assert set(kept) == allowed


def test_low_temperature_sharpens() -> None:
    cold = draws(SamplingParams(temperature=0.1))
    assert cold.count(0) > 390


@pytest.mark.parametrize("kwargs", [{"temperature": -1}, {"top_k": -1}, {"top_p": 0}, {"min_p": 1}])
def test_bad_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(InvalidArgument):
        SamplingParams(**kwargs)


def test_plain_temperature_keeps_every_token() -> None:
    """top_p 1.0 is off: a token whose probability is lost in the rounding of the cumulative sum
    (here ~1e-18 after a token of probability ~1) stays possible."""
    logits = torch.tensor([[0.0] + [-40.0] * 100])
    assert torch.isfinite(filter_logits(logits, [SamplingParams(temperature=1.0)])).all()


def test_each_row_filters_by_its_own_settings_in_a_mixed_batch() -> None:
    plain, top2 = SamplingParams(temperature=0.5), SamplingParams(temperature=1.0, top_k=2)
    got = filter_logits(LOGITS.repeat(3, 1), [plain, top2, plain])
    assert torch.equal(got[1:2], filter_logits(LOGITS, [top2]))
    assert torch.isfinite(got[1]).sum() == 2
    assert torch.equal(got[[0, 2]], (LOGITS / 0.5).repeat(2, 1))
