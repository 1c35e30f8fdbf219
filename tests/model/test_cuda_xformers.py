"""On a GPU: the xformers paged path against transformers, in bfloat16 (skipped without CUDA)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from checkpoints import ARCHS, write_checkpoint

from engine.attention import XformersBackend
from engine.loader import load_model
from engine.page_pool import PagePool
from engine.runner import Runner, Segment
from engine.sequence import KVSequence

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def close_bf16(ours: torch.Tensor, ref: torch.Tensor) -> None:
    scale = ref.abs().max().item()
    diff = (ours.float().cpu() - ref).abs().max().item()
    assert diff <= 0.03 * scale + 0.05, f"max |diff| {diff:.3f} for logits up to {scale:.2f}"


@pytest.mark.parametrize("arch", ARCHS)
def test_xformers_paged_path_matches_transformers(arch: str, tmp_path: Path) -> None:
    hf = write_checkpoint(tmp_path, arch)
    loaded = load_model(tmp_path, device="cuda", dtype="bfloat16", show_progress=False)
    pool = PagePool.for_model(loaded.config, 128, 16, torch.bfloat16, "cuda")
    runner = Runner(loaded.model, pool)
    assert isinstance(runner.backend, XformersBackend)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 256, (n,), generator=gen).tolist() for n in (5, 17, 33, 40)]
    seqs = [KVSequence() for _ in prompts]
    outs = runner.forward(
        [Segment(s, p, outputs=list(range(len(p)))) for s, p in zip(seqs, prompts, strict=True)]
    )
    for p, out in zip(prompts, outs, strict=True):
        with torch.no_grad():
            close_bf16(out, hf(torch.tensor([p])).logits[0])
    fork = seqs[2].fork(pool)
    step = runner.forward([Segment(s, [7]) for s in [*seqs, fork]])  # batched decode + a fork
    for p, out in zip([*prompts, prompts[2]], step, strict=True):
        with torch.no_grad():
            close_bf16(out[0], hf(torch.tensor([p + [7]])).logits[0, -1])
    for s in [*seqs, fork]:
        s.release(pool)
    pool.check()
