"""The CUDA backend: one xformers `memory_efficient_attention` call per layer for the whole batch.

A batch of prefills and decodes, mixed, is one block-diagonal problem: segment b's q_lens[b]
new queries attend causally, aligned at the bottom right, to its kv_lens[b] keys. xformers can
be handed those keys in two ways, and the backend takes the first that this machine's xformers
runs (`select_backend` tries them in order):

- paged: the keys stay in the pool, and `PagedBlockDiagonalCausalWithOffsetPaddedKeysMask`
  carries the page tables. It needs a paged kernel that accepts the pool's page size
  (FlashAttention 2 wants pages of 256 tokens; triton split-k wants 64 and at most 16 queries).
- gathered: each layer gathers the batch's keys out of the pages once, into one contiguous run
  per segment, described by `BlockDiagonalCausalFromBottomRightMask`. Any varlen kernel runs it:
  PyTorch's own FlashAttention 2 in bfloat16 or float16, cutlass in float32. A batch of whole
  prompts (no earlier keys) needs no gather: its keys are the new ones.

Batches with per-segment masks (tree attention, hidden positions) take the general masked path
of the torch backend.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from engine.attention.base import AttentionBackend, BatchLayout
from engine.attention.torch_sdpa import TorchBackend
from engine.page_pool import PagePool

Mode = Literal["paged", "gathered"]
MODES: tuple[Mode, ...] = ("paged", "gathered")


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


def key_slots(layout: BatchLayout) -> Tensor:
    """The flat pool slot of every key of the batch: segment 0's in order, then segment 1's, ...

    Built on the host (the page tables are host lists) and copied to the device once.
    """
    ps = layout.page_size
    table = layout.block_table(torch.device("cpu"))  # [B, max_pages]
    slots = (table[:, :, None] * ps + torch.arange(ps)).view(len(table), -1)
    visible = torch.arange(slots.shape[1])[None, :] < torch.tensor(layout.kv_lens)[:, None]
    return slots[visible]


class XformersPlan(NamedTuple):
    slots: Tensor  # [T] where each new token's K/V goes
    bias: Any  # the xformers attention bias describing the whole batch
    keys: Tensor | None  # gathered mode: key_slots(layout) on the device; None: no gather


class XformersBackend(AttentionBackend):
    def __init__(self, mode: Mode = "gathered") -> None:
        if mode not in MODES:
            raise ValueError(f"unknown xformers mode {mode!r}; choose one of {', '.join(MODES)}")
        self.fmha = import_fmha()
        self.mode: Mode = mode
        self.name = f"xformers-{mode}"
        self.fallback = TorchBackend()

    def plan(self, layout: BatchLayout, pool: PagePool) -> Any:
        if layout.has_masks:
            return self.fallback.plan(layout, pool)
        device = pool.k.device
        if self.mode == "paged":
            return XformersPlan(layout.slot_mapping, paged_bias(layout, device), None)
        bias = self.fmha.attn_bias.BlockDiagonalCausalFromBottomRightMask.from_seqlens(
            layout.q_lens, layout.kv_lens, device=device
        )
        if layout.kv_lens == layout.q_lens:  # whole prompts: the keys are the new tokens
            return XformersPlan(layout.slot_mapping, bias, None)
        return XformersPlan(layout.slot_mapping, bias, key_slots(layout).to(device))

    def attend(
        self, layer: int, q: Tensor, k: Tensor, v: Tensor, plan: Any, pool: PagePool
    ) -> Tensor:
        if not isinstance(plan, XformersPlan):  # the torch backend's masked path
            return self.fallback.attend(layer, q, k, v, plan, pool)
        pool.write(layer, plan.slots, k, v)
        if self.mode == "paged":
            k, v = pool.layer_slots(layer)
        elif plan.keys is not None:
            kflat, vflat = pool.layer_slots(layer)
            k, v = kflat.index_select(0, plan.keys), vflat.index_select(0, plan.keys)
        t, h, d = q.shape
        hkv = k.shape[1]
        g = h // hkv
        # xformers' grouped layout: [1, tokens, kv heads, group, D]; keys broadcast over the group.
        qg = q.view(1, t, hkv, g, d)
        kg = k[None, :, :, None, :].expand(1, k.shape[0], hkv, g, d)
        vg = v[None, :, :, None, :].expand(1, v.shape[0], hkv, g, d)
        out = self.fmha.memory_efficient_attention_forward(qg, kg, vg, attn_bias=plan.bias)
        return out.reshape(t, h, d)


def select_backend(
    device: torch.device, dtype: torch.dtype = torch.bfloat16, page_size: int = 16
) -> AttentionBackend:
    """xformers on CUDA in the first mode whose kernels run here, the torch reference otherwise."""
    if device.type != "cuda":
        return TorchBackend()
    errors = []
    for mode in MODES:
        try:
            backend = XformersBackend(mode)
            _probe(backend, device, dtype, page_size)
            return backend
        except Exception as e:  # no kernel for this GPU, dtype, page size or torch build
            errors.append(f"{mode}: {e}".splitlines()[0])
    # say why once, keep serving
    logging.getLogger("engine").warning(
        "xformers attention unavailable (%s); using torch SDPA", "; ".join(errors)
    )
    return TorchBackend()


def _probe(backend: XformersBackend, device: torch.device, dtype: torch.dtype, ps: int) -> None:
    """One small mixed batch (a 3-token prefill after 1 token, and a decode) through `attend`."""
    pool = PagePool(1, 1, 64, 2, ps, dtype, device)
    layout = BatchLayout(
        q_lens=[3, 1],
        kv_lens=[4, 2],
        page_tables=[[0], [1]],
        slot_mapping=torch.tensor([1, 2, 3, ps + 1], device=device),
        masks=[None, None],
        page_size=ps,
    )
    x = torch.zeros(4, 1, 64, dtype=dtype, device=device)
    backend.attend(0, x, x, x, backend.plan(layout, pool), pool)
    torch.cuda.synchronize(device)
