"""The engine's logits against Hugging Face transformers on the same random weights, per arch.

Checkpoints are written to disk and read back with the engine's real loader. Page size is
4 so that every case crosses page boundaries and leaves partial last pages.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from checkpoints import ARCHS, VOCAB, write_checkpoint

from engine.loader import LoadedModel, load_model
from engine.page_pool import PagePool
from engine.runner import Logits, LogProbs, Runner, Segment, TopK
from engine.sequence import KVSequence

TOL = 1e-4
PAGE = 4


class Case(NamedTuple):
    hf: torch.nn.Module
    loaded: LoadedModel


@pytest.fixture(scope="module", params=ARCHS)
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Case:
    path: Path = tmp_path_factory.mktemp(request.param)
    hf = write_checkpoint(path, request.param)
    return Case(hf, load_model(path, show_progress=False))


@pytest.fixture
def runner(case: Case, pools: list[PagePool]) -> Runner:
    pool = PagePool.for_model(case.loaded.config, num_pages=256, page_size=PAGE)
    pools.append(pool)
    return Runner(case.loaded.model, pool)


def hf_logits(
    hf: torch.nn.Module,
    tokens: list[int],
    positions: list[int] | None = None,
    visible: list[bool] | None = None,
) -> torch.Tensor:
    """transformers' logits at every position, given explicit positions and a key mask."""
    ids = torch.tensor([tokens])
    kwargs: dict[str, torch.Tensor] = {}
    if positions is not None:
        kwargs["position_ids"] = torch.tensor([positions])
    if visible is not None:
        kwargs["attention_mask"] = torch.tensor([visible], dtype=torch.long)
    with torch.no_grad():
        return hf(ids, **kwargs).logits[0].float()


def rand_tokens(n: int, seed: int) -> list[int]:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    diff = (a - b).abs().max().item()
    assert diff <= TOL, f"max |logit difference| {diff:.2e} > {TOL}"


def all_rows(n: int) -> list[int]:
    return list(range(n))


def test_single_prefill(case: Case, runner: Runner) -> None:
    tokens = rand_tokens(23, 1)
    seq = KVSequence()
    (out,) = runner.forward([Segment(seq, tokens, outputs=all_rows(23))])
    close(out, hf_logits(case.hf, tokens))
    seq.release(runner.pool)


def test_chunked_prefill(case: Case, runner: Runner) -> None:
    tokens = rand_tokens(30, 2)
    seq = KVSequence()
    outs = []
    for a, b in [(0, 5), (5, 12), (12, 13), (13, 30)]:
        (out,) = runner.forward([Segment(seq, tokens[a:b], outputs=all_rows(b - a))])
        outs.append(out)
    close(torch.cat(outs), hf_logits(case.hf, tokens))
    seq.release(runner.pool)


def test_batched_decode_of_8_different_lengths(case: Case, runner: Runner) -> None:
    prompts = [rand_tokens(n, 10 + n) for n in (3, 4, 5, 8, 11, 16, 17, 24)]
    seqs = [KVSequence() for _ in prompts]
    runner.forward([Segment(s, p) for s, p in zip(seqs, prompts, strict=True)])  # ragged prefill
    nxt = rand_tokens(8, 3)
    outs = runner.forward([Segment(s, [t]) for s, t in zip(seqs, nxt, strict=True)])
    for p, t, out in zip(prompts, nxt, outs, strict=True):
        close(out[0], hf_logits(case.hf, p + [t])[-1])
    for s in seqs:
        s.release(runner.pool)


def test_one_forward_mixing_prefills_and_decodes(case: Case, runner: Runner) -> None:
    old = [rand_tokens(n, 20 + n) for n in (6, 9, 13)]
    seqs = [KVSequence() for _ in old]
    runner.forward([Segment(s, p) for s, p in zip(seqs, old, strict=True)])
    fresh = [rand_tokens(n, 30 + n) for n in (7, 19)]
    more = rand_tokens(6, 4)  # a chunk continuing the third sequence
    segments = [Segment(seqs[0], [1]), Segment(seqs[1], [2])]
    segments.append(Segment(seqs[2], more, outputs=all_rows(6)))
    new_seqs = [KVSequence(), KVSequence()]
    segments += [
        Segment(s, p, outputs=all_rows(len(p))) for s, p in zip(new_seqs, fresh, strict=True)
    ]
    outs = runner.forward(segments)
    close(outs[0][0], hf_logits(case.hf, old[0] + [1])[-1])
    close(outs[1][0], hf_logits(case.hf, old[1] + [2])[-1])
    close(outs[2], hf_logits(case.hf, old[2] + more)[-6:])
    close(outs[3], hf_logits(case.hf, fresh[0]))
    close(outs[4], hf_logits(case.hf, fresh[1]))
    for s in seqs + new_seqs:
        s.release(runner.pool)


def test_fork_and_continue_both_branches(case: Case, runner: Runner) -> None:
    pool = runner.pool
    prompt = rand_tokens(22, 5)  # 5 full pages and a partial one
    parent = KVSequence()
    runner.forward([Segment(parent, prompt)])
    child = parent.fork(pool)
    assert child.pages == parent.pages and all(pool.refcount[p] == 2 for p in parent.pages)
    a, b = rand_tokens(3, 6), rand_tokens(5, 7)
    out_a, out_b = runner.forward(
        [Segment(parent, a, outputs=all_rows(3)), Segment(child, b, outputs=all_rows(5))]
    )
    close(out_a, hf_logits(case.hf, prompt + a)[-3:])
    close(out_b, hf_logits(case.hf, prompt + b)[-5:])
    # full pages stay shared; the partial page was copied on write by one side
    assert parent.pages[:5] == child.pages[:5] and parent.pages[5] != child.pages[5]
    # the parent is intact after the child's writes: extend it again
    (again,) = runner.forward([Segment(parent, [9])])
    close(again[0], hf_logits(case.hf, prompt + a + [9])[-1])
    parent.release(pool)
    child.release(pool)
    assert pool.num_free == pool.num_pages


def test_truncate_and_reextend(case: Case, runner: Runner) -> None:
    tokens = rand_tokens(20, 8)
    seq = KVSequence()
    runner.forward([Segment(seq, tokens)])
    fork = seq.fork(runner.pool)  # the truncated page is shared: the re-extension must copy it
    seq.truncate(runner.pool, 13)
    assert len(seq.pages) == 4
    new = rand_tokens(5, 9)
    (out,) = runner.forward([Segment(seq, new, outputs=all_rows(5))])
    close(out, hf_logits(case.hf, tokens[:13] + new)[-5:])
    (f,) = runner.forward([Segment(fork, [3])])
    close(f[0], hf_logits(case.hf, tokens + [3])[-1])
    seq.release(runner.pool)
    fork.release(runner.pool)


def test_hidden_positions(case: Case, runner: Runner) -> None:
    tokens = rand_tokens(18, 10)
    hidden = [4, 5, 6, 11]
    visible = [i not in hidden for i in range(18)]
    ref = hf_logits(case.hf, tokens, visible=visible)
    # (a) hide as tokens arrive, one chunk at a time; the positions go on past the hidden ones
    # (by default they would continue after the last visible token: 6 is hidden before 7 comes)
    seq = KVSequence()
    outs = []
    for a, b in [(0, 7), (7, 12), (12, 18)]:
        seq.hide([i for i in hidden if i < a])
        chunk = Segment(seq, tokens[a:b], list(range(a, b)), outputs=all_rows(b - a))
        (out,) = runner.forward([chunk])
        outs.append(out)
    # each visible row saw exactly the visible tokens before it (a hidden row is not compared)
    rows = [i for i in range(18) if visible[i]]
    close(torch.cat(outs)[rows], ref[rows])
    seq.release(runner.pool)
    # (b) one explicit mask over the whole prompt
    seq = KVSequence()
    mask = torch.ones(18, 18, dtype=torch.bool).tril() & torch.tensor(visible)[None, :]
    mask |= torch.eye(18, dtype=torch.bool)  # a hidden row needs something to see; not compared
    (out,) = runner.forward([Segment(seq, tokens, mask=mask, outputs=all_rows(18))])
    keep = [i for i in range(18) if visible[i]]
    close(out[keep], ref[keep])
    seq.release(runner.pool)


def test_explicit_positions_with_gaps(case: Case, runner: Runner) -> None:
    tokens = rand_tokens(12, 11)
    positions = [0, 1, 2, 3, 10, 11, 12, 30, 31, 32, 33, 34]
    seq = KVSequence()
    (first,) = runner.forward(
        [Segment(seq, tokens[:7], positions=positions[:7], outputs=all_rows(7))]
    )
    fork = seq.fork(runner.pool)
    (rest,) = runner.forward(
        [Segment(fork, tokens[7:], positions=positions[7:], outputs=all_rows(5))]
    )
    assert fork.next_position == 35
    close(torch.cat([first, rest]), hf_logits(case.hf, tokens, positions=positions))
    seq.release(runner.pool)
    fork.release(runner.pool)


def test_topk_and_logprobs_agree_with_logits(case: Case, runner: Runner) -> None:
    tokens = rand_tokens(9, 12)
    seqs = [KVSequence() for _ in range(3)]
    want = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    logits, topk, logprobs = runner.forward(
        [
            Segment(seqs[0], tokens, outputs=[2, 5, 8], returns=Logits()),
            Segment(seqs[1], tokens, outputs=[2, 5, 8], returns=TopK(5)),
            Segment(seqs[2], tokens, outputs=[2, 5, 8], returns=LogProbs(want)),
        ]
    )
    ref = hf_logits(case.hf, tokens)[[2, 5, 8]]
    close(logits, ref)
    probs, ids = ref.softmax(-1).topk(5)
    assert topk.ids.tolist() == ids.tolist()
    assert torch.allclose(topk.probs, probs, atol=1e-5)
    assert torch.allclose(logprobs, ref.log_softmax(-1).gather(-1, torch.tensor(want)), atol=1e-4)
    for s in seqs:
        s.release(runner.pool)


def test_greedy_generation_matches_transformers_generate(case: Case, runner: Runner) -> None:
    from engine.generate import generate

    prompts = [rand_tokens(n, 40 + n) for n in (5, 9)]
    ours = generate(runner, prompts, max_new_tokens=12)
    for p, got in zip(prompts, ours, strict=True):
        with torch.no_grad():
            ref = case.hf.generate(
                torch.tensor([p]),
                max_new_tokens=12,
                do_sample=False,
                attention_mask=torch.ones(1, len(p), dtype=torch.long),
                pad_token_id=0,
            )[0, len(p) :]
        assert got == ref.tolist()


def test_bfloat16_many_rows_through_float32_copies(case: Case, pools: list[PagePool]) -> None:
    """bfloat16 on a CPU without bf16 math: rows in bulk go through float32 copies of the
    weights. Logits match the one-row-at-a-time bfloat16 path and transformers in bfloat16."""
    from engine.model import bf16_matmul_is_slow

    loaded = load_model(case.loaded.path, dtype="bfloat16", show_progress=False)
    model = loaded.model
    assert (model.head_f32 is not None) == bf16_matmul_is_slow(torch.device("cpu"))
    tokens = rand_tokens(23, 9)

    def prefill() -> torch.Tensor:
        pool = PagePool.for_model(loaded.config, 64, PAGE, torch.bfloat16)
        pools.append(pool)
        runner = Runner(model, pool)
        seq = KVSequence()
        (logits,) = runner.forward([Segment(seq, tokens, outputs=all_rows(23))])
        seq.release(runner.pool)
        return logits

    bulk = prefill()
    for layer in model.layers:
        layer.f32 = {}
    model.head_f32 = None
    row_by_row = prefill()
    hf = hf_logits(copy.deepcopy(case.hf).to(torch.bfloat16), tokens)
    assert (bulk - row_by_row).abs().max().item() <= 0.01
    assert (bulk - hf).abs().max().item() <= 0.25  # a few bfloat16 steps at |logit| ~ 5


def test_bfloat16_packed_weights_multiply_as_the_plain_ones(
    case: Case, pools: list[PagePool]
) -> None:
    """On a CPU with bf16 arithmetic, a bfloat16 model multiplies by oneDNN-packed copies of its
    matrices (engine.model, "oneDNN-packed weights"). Its logits, prefill and decode steps, are
    bit for bit those of the plain matmuls, and near transformers' in bfloat16."""
    from engine.model import packs_bf16_weights

    if not packs_bf16_weights(torch.device("cpu")):
        pytest.skip("this CPU has no bf16 arithmetic: bfloat16 models keep float32 copies instead")
    loaded = load_model(case.loaded.path, dtype="bfloat16", show_progress=False)
    model = loaded.model
    assert model.head_packed is not None and all(layer.packed for layer in model.layers)
    tokens = rand_tokens(23, 11)

    def logits() -> torch.Tensor:
        pool = PagePool.for_model(loaded.config, 64, PAGE, torch.bfloat16)
        pools.append(pool)
        runner = Runner(model, pool)
        seq = KVSequence()
        (prefill,) = runner.forward([Segment(seq, tokens[:20], outputs=all_rows(20))])
        steps = [runner.forward([Segment(seq, [t])])[0] for t in tokens[20:]]
        seq.release(runner.pool)
        return torch.cat([prefill, *steps])

    packed = logits()
    model.pack_weights(False)
    assert model.head_packed is None and not any(layer.packed for layer in model.layers)
    plain = logits()
    assert torch.equal(packed, plain)
    hf = hf_logits(copy.deepcopy(case.hf).to(torch.bfloat16), tokens)
    assert (packed - hf).abs().max().item() <= 0.25  # a few bfloat16 steps at |logit| ~ 5
