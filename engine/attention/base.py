"""The attention backend interface, and the batch layout every backend reads."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from engine.page_pool import PagePool


@dataclass
class BatchLayout:
    """Where each segment's tokens are, in the batch and in the page pool.

    Segment b contributes q_lens[b] new tokens (consecutive in the flat token order) and, after
    they are written, has kv_lens[b] tokens of keys and values in the pages of page_tables[b].
    masks[b] is None for plain causal attention over all of the segment's tokens, or a bool
    tensor [q_lens[b], kv_lens[b]] saying which tokens each new token may attend to.
    """

    q_lens: list[int]
    kv_lens: list[int]
    page_tables: list[list[int]]
    slot_mapping: Tensor  # [T] flat pool slot for each new token's K/V
    masks: list[Tensor | None]
    page_size: int

    @property
    def num_segments(self) -> int:
        return len(self.q_lens)

    @property
    def has_masks(self) -> bool:
        return any(m is not None for m in self.masks)

    def block_table(self, device: torch.device) -> Tensor:
        """Page tables padded with page 0 into a [B, max_pages] tensor."""
        width = max(len(t) for t in self.page_tables)
        rows = [t + [0] * (width - len(t)) for t in self.page_tables]
        return torch.tensor(rows, dtype=torch.long, device=device)

    def dense_mask(self, device: torch.device) -> Tensor:
        """[B, max_q, max_kv] bool: which keys each (padded) query row may see.

        Padding rows see key 0 so that softmax stays finite.
        """
        lq, lk = max(self.q_lens), max(self.kv_lens)
        q_lens = torch.tensor(self.q_lens, device=device)[:, None, None]
        kv_lens = torch.tensor(self.kv_lens, device=device)[:, None, None]
        i = torch.arange(lq, device=device)[None, :, None]
        j = torch.arange(lk, device=device)[None, None, :]
        mask = (j <= kv_lens - q_lens + i) & (j < kv_lens)
        for s, m in enumerate(self.masks):
            if m is not None:
                mask[s, : m.shape[0], : m.shape[1]] = m.to(device)
        mask[:, :, 0] |= ~mask.any(-1)  # rows with nothing visible (padding) look at key 0, not NaN
        return mask


def distinct_tokens(layout: BatchLayout) -> int:
    """Keys the batch attends to, each page's counted once however many segments share it."""
    used: dict[int, int] = {}
    ps = layout.page_size
    for table, kv in zip(layout.page_tables, layout.kv_lens, strict=True):
        for i, page in enumerate(table):
            used[page] = max(used.get(page, 0), min(ps, kv - i * ps))
    return sum(used.values())


class Traffic(NamedTuple):
    """Tokens of keys and values (per layer, each of K and V) one forward's attention moves."""

    copied: int  # copied into other tensors before attending (gathers, resident rows)
    read: int  # read by the attention itself
    needed: int  # the batch's distinct keys (`distinct_tokens`): the least attention must read


class AttentionBackend(ABC):
    """Computes attention for a whole batch of segments over the page pool.

    `plan` runs once per forward and prepares whatever the backend needs from the layout
    (index tensors, masks, attention-bias objects); `attend` runs once per layer: it writes the
    new keys and values into the pool and returns the attention output for every new token.
    Subclass both to add a backend; `TorchBackend` is the reference.
    """

    name: str = "abstract"

    @property
    def traffic(self) -> Traffic | None:
        """What the latest plan's attention moves, where the backend counts it, else None.

        Computed when asked, not by every plan: only benches and tests want it."""
        return None

    @abstractmethod
    def plan(self, layout: BatchLayout, pool: PagePool) -> Any:
        """Everything per-forward the backend derives from the layout."""

    @abstractmethod
    def attend(
        self, layer: int, q: Tensor, k: Tensor, v: Tensor, plan: Any, pool: PagePool
    ) -> Tensor:
        """q [T, H, D], k/v [T, Hkv, D] for the new tokens -> attention output [T, H, D]."""
