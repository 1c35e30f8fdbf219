"""The batch description both backends share; xformers' bias objects are plain Python on CPU."""

from __future__ import annotations

import subprocess
import sys

import torch

from engine.attention import BatchLayout, TorchBackend, select_backend
from engine.attention.base import Traffic, distinct_tokens
from engine.attention.xformers_paged import import_fmha, key_slots, paged_bias
from engine.page_pool import PagePool


def physical_visibility(layout: BatchLayout, num_slots: int) -> torch.Tensor:
    """Our dense mask, moved from each segment's token order to physical pool slots."""
    dense = layout.dense_mask(torch.device("cpu"))
    out = torch.zeros(sum(layout.q_lens), num_slots, dtype=torch.bool)
    row = 0
    for b, (q, kv) in enumerate(zip(layout.q_lens, layout.kv_lens, strict=True)):
        table = layout.page_tables[b]
        for i in range(q):
            for j in range(kv):
                if dense[b, i, j]:
                    out[
                        row, table[j // layout.page_size] * layout.page_size + j % layout.page_size
                    ] = True
            row += 1
    return out


# A mixed batch: a chunk continuing a prefix, a decode, a fresh prefill; scattered pages (0-6).
MIXED = BatchLayout(
    q_lens=[2, 1, 7],
    kv_lens=[5, 8, 7],
    page_tables=[[3, 1], [6, 0], [2, 5]],
    slot_mapping=torch.zeros(10, dtype=torch.long),
    masks=[None] * 3,
    page_size=4,
)


def test_xformers_paged_bias_sees_what_the_torch_backend_sees() -> None:
    layout = MIXED
    bias = paged_bias(layout, torch.device("cpu"))
    theirs = bias.materialize((10, 3 * 2 * 4)) == 0
    ours = physical_visibility(layout, theirs.shape[1])
    assert torch.equal(theirs, ours)


def test_dense_mask_applies_custom_masks_and_keeps_padding_rows_finite() -> None:
    tree = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 1, 0], [1, 1, 0, 1, 1]], dtype=torch.bool)
    layout = BatchLayout(
        [3, 1], [5, 2], [[0, 1], [2]], torch.zeros(4, dtype=torch.long), [tree, None], page_size=4
    )
    mask = layout.dense_mask(torch.device("cpu"))
    assert torch.equal(mask[0, :, :5], tree)
    assert mask[1, 0, :2].all() and not mask[1, 0, 2:].any()
    assert mask[1, 1:, 0].all()  # padding rows look at key 0 only


def test_cpu_selects_the_torch_backend() -> None:
    assert isinstance(select_backend(torch.device("cpu")), TorchBackend)


def test_importing_the_engine_and_xformers_prints_nothing() -> None:
    code = (
        "import engine.runner, engine.loader\n"
        "from engine.attention.xformers_paged import import_fmha\n"
        "import_fmha()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "" and done.stderr == ""


def test_xformers_gathered_plan_sees_what_the_torch_backend_sees() -> None:
    # the gathered mode: each segment's keys in page-table order, then a bottom-right causal
    # block-diagonal bias over them; materialized on CPU and compared slot by slot
    layout = MIXED
    keys = key_slots(layout)
    assert keys.tolist() == [
        12,
        13,
        14,
        15,
        4,
        24,
        25,
        26,
        27,
        0,
        1,
        2,
        3,
        8,
        9,
        10,
        11,
        20,
        21,
        22,
    ]
    fmha = import_fmha()
    bias = fmha.attn_bias.BlockDiagonalCausalFromBottomRightMask.from_seqlens(
        layout.q_lens, layout.kv_lens, device=torch.device("cpu")
    )
    visible = bias.materialize((10, len(keys))) == 0  # [query, gathered key]
    theirs = torch.zeros(10, 7 * 4, dtype=torch.bool)  # pages 0..6
    theirs[:, keys] = visible
    assert torch.equal(theirs, physical_visibility(layout, theirs.shape[1]))


def test_distinct_tokens_counts_shared_pages_once() -> None:
    # two forks sharing pages 0 and 1 (4 tokens each), then their own partial pages
    layout = BatchLayout(
        [1, 1], [10, 11], [[0, 1, 2], [0, 1, 3]], torch.zeros(2, dtype=torch.long), [None] * 2, 4
    )
    assert distinct_tokens(layout) == 8 + 2 + 3
    assert distinct_tokens(MIXED) == 5 + 8 + 7


def test_the_torch_backend_counts_what_its_plans_copy_and_read() -> None:
    pool = PagePool(1, 1, 8, num_pages=8, page_size=4)
    decode = BatchLayout(
        [1, 1], [6, 3], [[3, 1], [6]], torch.tensor([5, 26]), [None] * 2, page_size=4
    )
    gathering = TorchBackend(resident=False)
    gathering.plan(decode, pool)
    assert gathering.traffic == Traffic(copied=2 * 8, read=2 * 8, needed=9)  # padded to 2 pages
    resident = TorchBackend()
    pool.mark_written([5, 26])
    resident.plan(decode, pool)
    assert resident.traffic == Traffic(copied=5 + 2 + 2, read=2 * 6, needed=9)
