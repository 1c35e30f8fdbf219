"""The CUDA backend: xformers `memory_efficient_attention` reading keys/values straight from pages.

One call per layer for the whole mixed prefill + decode batch, described by xformers'
`PagedBlockDiagonalCausalWithOffsetPaddedKeysMask`. Batches with per-segment masks (tree
attention, hidden positions) take the general masked path of the torch backend.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from engine.attention.base import AttentionBackend, BatchLayout
from engine.attention.torch_sdpa import TorchBackend, TorchPlan
from engine.page_pool import PagePool


@contextlib.contextmanager
def _quiet_xformers() -> Iterator[None]:
    """xformers logs a warning at import when its C++/CUDA extensions cannot load (on CPU)."""
    log = logging.getLogger("xformers")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def import_fmha() -> Any:
    with _quiet_xformers():
        from xformers.ops import fmha
    return fmha


def paged_bias(layout: BatchLayout, device: torch.device) -> Any:
    fmha = import_fmha()
    return fmha.attn_bias.PagedBlockDiagonalCausalWithOffsetPaddedKeysMask.from_seqlens(
        q_seqlen=layout.q_lens,
        kv_seqlen=layout.kv_lens,
        block_tables=layout.block_table(device).to(torch.int32),
        page_size=layout.page_size,
        device=device,
    )


class XformersBackend(AttentionBackend):
    name = "xformers-paged"

    def __init__(self) -> None:
        self.fmha = import_fmha()
        self.fallback = TorchBackend()

    def plan(self, layout: BatchLayout, pool: PagePool) -> Any:
        if layout.has_masks:
            return self.fallback.plan(layout, pool)
        return layout.slot_mapping, paged_bias(layout, pool.k.device)

    def attend(
        self, layer: int, q: Tensor, k: Tensor, v: Tensor, plan: Any, pool: PagePool
    ) -> Tensor:
        if isinstance(plan, TorchPlan):
            return self.fallback.attend(layer, q, k, v, plan, pool)
        slots, bias = plan
        pool.write(layer, slots, k, v)
        t, h, d = q.shape
        kflat, vflat = pool.layer_slots(layer)
        hkv = kflat.shape[1]
        g = h // hkv
        # xformers' grouped layout: [1, tokens, kv heads, group, D]; keys broadcast over the group.
        qg = q.view(1, t, hkv, g, d)
        kg = kflat[None, :, :, None, :].expand(1, kflat.shape[0], hkv, g, d)
        vg = vflat[None, :, :, None, :].expand(1, vflat.shape[0], hkv, g, d)
        out = self.fmha.memory_efficient_attention_forward(qg, kg, vg, attn_bias=bias)
        return out.reshape(t, h, d)


def select_backend(device: torch.device) -> AttentionBackend:
    """xformers on CUDA when its kernels work here, the torch reference otherwise."""
    if device.type != "cuda":
        return TorchBackend()
    try:
        backend = XformersBackend()
        _probe(backend, device)
        return backend
    except Exception as e:  # no kernel for this GPU/torch build: say why once, keep serving
        logging.getLogger("engine").warning(
            "xformers attention unavailable (%s); using torch SDPA", e
        )
        return TorchBackend()


def _probe(backend: XformersBackend, device: torch.device) -> None:
    pool = PagePool(1, 1, 64, 2, 16, torch.bfloat16, device)
    layout = BatchLayout([1], [1], [[1]], torch.tensor([16], device=device), [None], 16)
    x = torch.zeros(1, 1, 64, dtype=torch.bfloat16, device=device)
    backend.attend(0, x, x, x, backend.plan(layout, pool), pool)
