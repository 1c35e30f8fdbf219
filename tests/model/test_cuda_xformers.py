"""On a GPU: the engine's CUDA path against transformers on the same GPU (skipped without CUDA).

Run by `scripts/gpu-check.sh` on a machine with an NVIDIA GPU. The engine runs bfloat16 with
its pages on the device and xformers attention. Its logits are compared with transformers'
float32 logits (the truth) on the same GPU. The stated bfloat16 tolerance: the engine's largest
error may be at most BF16_FACTOR times transformers' own bfloat16 error on the same input, plus
BF16_FLOOR of the logits' range, so the bound scales with what bfloat16 costs on these weights.
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from checkpoints import ARCHS, write_checkpoint

from engine.attention import TorchBackend, XformersBackend, select_backend
from engine.attention.xformers_paged import MODES
from engine.kernel import Kernel
from engine.loader import LoadedModel, load_model
from engine.page_pool import PagePool
from engine.runner import Runner, Segment
from engine.sequence import KVSequence
from engine.syscalls import Syscalls
from engine.wire import events as ev
from engine.wire.records import Logits

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

BF16_FACTOR = 3.0
BF16_FLOOR = 0.01
PAGE = 16
GPU = torch.device("cuda")


class Reference:
    """transformers on the GPU: float32 (the truth) and bfloat16 (what bf16 costs it)."""

    def __init__(self, hf: torch.nn.Module) -> None:
        self.f32 = hf.to(GPU).eval()
        self.bf16 = copy.deepcopy(hf).to(GPU, torch.bfloat16).eval()

    @torch.no_grad()
    def logits(self, tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.tensor([tokens], device=GPU)
        return self.f32(ids).logits[0].float(), self.bf16(ids).logits[0].float()

    def check(self, ours: torch.Tensor, tokens: list[int], rows: slice | int = slice(None)) -> None:
        """ours: the engine's logits for `tokens[rows]` (every row, or the last one)."""
        truth, theirs = (x[rows] for x in self.logits(tokens))
        scale = truth.max().item() - truth.min().item()
        err = (ours.float() - truth).abs().max().item()
        hf_err = (theirs - truth).abs().max().item()
        bound = BF16_FACTOR * hf_err + BF16_FLOOR * scale
        print(f"bf16 max |error|: engine {err:.4f}, transformers {hf_err:.4f} (bound {bound:.4f})")
        assert err <= bound, f"engine error {err:.4f} > {bound:.4f} (transformers' {hf_err:.4f})"


def prompt(seed: int, n: int) -> list[int]:
    return torch.randint(0, 250, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[LoadedModel, Reference]:
    path = tmp_path_factory.mktemp("cuda-llama")
    hf = write_checkpoint(path, "llama")
    loaded = load_model(path, device="cuda", dtype="bfloat16", show_progress=False)
    return loaded, Reference(hf)


@pytest.fixture(params=MODES)
def backend(request: pytest.FixtureRequest) -> XformersBackend:
    """Each xformers mode whose kernels run on this GPU; a mode without one skips, saying why."""
    from engine.attention.xformers_paged import _probe

    b = XformersBackend(request.param)
    try:
        _probe(b, GPU, torch.bfloat16, PAGE)
    except Exception as e:
        pytest.skip(f"xformers {request.param} mode has no kernel here: {str(e).splitlines()[0]}")
    return b


def runner_for(loaded: LoadedModel, backend: Any, num_pages: int = 64) -> Runner:
    pool = PagePool.for_model(loaded.config, num_pages, PAGE, torch.bfloat16, GPU)
    return Runner(loaded.model, pool, backend)


class CountingFmha:
    """xformers' fmha module, counting memory_efficient_attention_forward calls."""

    def __init__(self, fmha: Any) -> None:
        self._fmha, self.calls = fmha, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fmha, name)

    def memory_efficient_attention_forward(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self._fmha.memory_efficient_attention_forward(*args, **kwargs)


def test_cuda_selects_xformers_in_bfloat16() -> None:
    backend = select_backend(GPU, torch.bfloat16, PAGE)
    assert isinstance(backend, XformersBackend), "the CUDA path fell back to torch SDPA"
    print(f"selected attention backend: {backend.name}")


@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_matches_transformers(arch: str, tmp_path: Path) -> None:
    ref = Reference(write_checkpoint(tmp_path, arch))
    loaded = load_model(tmp_path, device="cuda", dtype="bfloat16", show_progress=False)
    runner = Runner(loaded.model, PagePool.for_model(loaded.config, 64, PAGE, torch.bfloat16, GPU))
    assert isinstance(runner.backend, XformersBackend)
    prompts = [prompt(i, n) for i, n in enumerate((5, 17, 33, 40))]
    seqs = [KVSequence() for _ in prompts]
    outs = runner.forward(
        [Segment(s, p, outputs=list(range(len(p)))) for s, p in zip(seqs, prompts, strict=True)]
    )
    for p, out in zip(prompts, outs, strict=True):
        ref.check(out, p)
    step = runner.forward([Segment(s, [7]) for s in seqs])  # batched decode
    for p, out in zip(prompts, step, strict=True):
        ref.check(out[0], p + [7], -1)
    for s in seqs:
        s.release(runner.pool)
    runner.pool.check()


def test_mixed_prefill_and_decode_batch_is_one_xformers_call_per_layer(
    llama: tuple[LoadedModel, Reference], backend: XformersBackend
) -> None:
    loaded, ref = llama
    runner = runner_for(loaded, backend)
    counter = CountingFmha(backend.fmha)
    backend.fmha = counter
    try:
        a, b, c, d = (KVSequence() for _ in range(4))
        pa, pb, pc, pd = prompt(1, 20), prompt(2, 37), prompt(3, 16), prompt(4, 45)
        runner.forward([Segment(a, pa), Segment(b, pb), Segment(c, pc[:9])])
        counter.calls = 0
        # decode a and b, continue c's prompt by a chunk, prefill d from nothing: one batch
        out = runner.forward(
            [
                Segment(a, [11]),
                Segment(b, [12]),
                Segment(c, pc[9:], outputs=list(range(7))),
                Segment(d, pd, outputs=list(range(45))),
            ]
        )
        assert counter.calls == loaded.config.num_layers
    finally:
        backend.fmha = counter._fmha
    ref.check(out[0][0], pa + [11], -1)
    ref.check(out[1][0], pb + [12], -1)
    ref.check(out[2], pc, slice(9, 16))
    ref.check(out[3], pd)
    for s in (a, b, c, d):
        s.release(runner.pool)
    runner.pool.check()


def cpu_reference(loaded: LoadedModel) -> Runner:
    """The same weights in float32 on the CPU, through the torch backend (checked against
    transformers to 1e-4 by the CPU tests): the reference for what transformers cannot take."""
    cpu = copy.deepcopy(loaded.model).to("cpu", torch.float32)
    return Runner(cpu, PagePool.for_model(loaded.config, 64, PAGE), TorchBackend())


def close_to_cpu(ours: torch.Tensor, ref: torch.Tensor, hf_err: float) -> None:
    scale = ref.max().item() - ref.min().item()
    err = (ours.float().cpu() - ref).abs().max().item()
    assert err <= BF16_FACTOR * hf_err + BF16_FLOOR * scale, f"error {err:.4f}"


def test_masks_and_hidden_tokens_on_the_device(
    llama: tuple[LoadedModel, Reference], backend: XformersBackend
) -> None:
    loaded, ref = llama
    runner, cpu = runner_for(loaded, backend), cpu_reference(loaded)
    base = prompt(5, 21)
    _, theirs = ref.logits(base)
    truth, _ = ref.logits(base)
    hf_err = (theirs - truth).abs().max().item()
    tree = torch.ones(3, 24, dtype=torch.bool).tril(21)  # 3 new tokens: two siblings, one child
    tree[1, 21] = False  # token 22 does not see its sibling 21
    tree[2, 21] = False  # token 23 is the child of 22 only
    results = []
    for r in (runner, cpu):
        plain, masked, hidden = KVSequence(), KVSequence(), KVSequence()
        r.forward([Segment(s, base, outputs=[]) for s in (plain, masked, hidden)])
        hidden.hide([3, 4, 10])
        out = r.forward(
            [
                Segment(plain, [9], returns=Logits()),
                Segment(masked, [9, 8, 7], positions=[21, 21, 22], mask=tree, outputs=[0, 1, 2]),
                Segment(hidden, [9, 8], outputs=[0, 1]),
            ]
        )
        results.append(out)
        for s in (plain, masked, hidden):
            s.release(r.pool)
        r.pool.check()
    for ours, want in zip(*results, strict=True):
        close_to_cpu(ours, want, hf_err)
    # hiding changed the answer (the masked path really applied the hiding)
    assert (results[0][2][0].float().cpu() - results[1][0][0]).abs().max() > 0.05


def test_fork_copies_a_shared_partial_page_on_the_device(
    llama: tuple[LoadedModel, Reference], backend: XformersBackend
) -> None:
    loaded, ref = llama
    runner = runner_for(loaded, backend)
    pool = runner.pool
    base = prompt(6, 20)  # one full page and 4 tokens of a shared partial page
    a = KVSequence()
    runner.forward([Segment(a, base)])
    b = a.fork(pool)
    assert a.pages == b.pages and pool.refcount[a.pages[1]] == 2
    before = pool.k[:, a.pages[1], :4].clone()
    out = runner.forward([Segment(a, [21]), Segment(b, [22])])
    assert a.pages[0] == b.pages[0] and a.pages[1] != b.pages[1]  # full page shared, tail copied
    assert pool.k.device.type == GPU.type
    assert torch.equal(pool.k[:, a.pages[1], :4], before)
    assert torch.equal(pool.k[:, b.pages[1], :4], before)
    assert not torch.equal(pool.k[:, a.pages[1], 4], pool.k[:, b.pages[1], 4])
    ref.check(out[0][0], base + [21], -1)
    ref.check(out[1][0], base + [22], -1)
    for s in (a, b):
        s.release(pool)
    pool.check()


def test_swap_out_to_host_and_back_in(
    llama: tuple[LoadedModel, Reference], backend: XformersBackend
) -> None:
    loaded, ref = llama
    runner = runner_for(loaded, backend, num_pages=8)
    pool = runner.pool
    base = prompt(7, 40)  # 3 pages
    seq = KVSequence()
    runner.forward([Segment(seq, base)])
    kept = pool.k[:, seq.pages].clone(), pool.v[:, seq.pages].clone()
    assert seq.swap_out(pool) == 3 and pool.num_free == pool.num_pages
    assert seq.swapped is not None and all(
        k.device.type == "cpu" for k, _ in seq.swapped.host.values()
    )
    other = KVSequence()  # someone else writes over the freed device pages
    runner.forward([Segment(other, prompt(8, 8 * PAGE - 1))])
    other.release(pool)
    seq.swap_in(pool)
    assert torch.equal(pool.k[:, seq.pages], kept[0]) and torch.equal(pool.v[:, seq.pages], kept[1])
    out = runner.forward([Segment(seq, [5])])
    ref.check(out[0], base + [5], -1)
    seq.release(pool)
    pool.check()


async def teacher_forced(sys: Syscalls, tokens: list[int], steps: int) -> list[list[float]]:
    """Prefill all but the last `steps` tokens, then feed those one call at a time: each logits."""
    f = await sys.kv.create()
    rows = [await sys.forward(f, tokens[:-steps], returns=Logits())]
    for t in tokens[-steps:]:
        rows.append(await sys.forward(f, [t], returns=Logits()))
    return rows


def run_kernel(kernel: Kernel, lips: list[list[int]], steps: int) -> list[list[list[float]]]:
    async def main() -> list[list[list[float]]]:
        async with kernel:
            pids = [
                kernel.spawn(teacher_forced, p, steps, name=f"lip{i}") for i, p in enumerate(lips)
            ]
            return [await kernel.wait(p) for p in pids]

    out = asyncio.run(main())
    kernel.pool.check()
    assert kernel.pool.num_free == kernel.pool.num_pages  # every process's pages reclaimed
    return out


@pytest.mark.parametrize("num_pages", [256, 12], ids=["roomy", "under-pressure"])
def test_kernel_runs_several_processes_on_the_device(
    llama: tuple[LoadedModel, Reference], num_pages: int
) -> None:
    loaded, ref = llama
    steps, lips = 8, [prompt(10 + i, 30 + 3 * i) for i in range(6)]  # 3 pages each at the end
    kernel = Kernel(loaded, num_pages=num_pages, page_size=PAGE)
    assert isinstance(kernel.runner.backend, XformersBackend)
    results = run_kernel(kernel, lips, steps)
    batches = kernel.trace.query(kinds=[ev.BATCH])
    assert max(len(ev.record_of(b).pids) for b in batches) >= 3  # processes really shared batches
    if num_pages < 6 * 3:
        suspended = [
            e for e in kernel.trace.query(kinds=[ev.PROCESS]) if ev.record_of(e).new == "suspended"
        ]
        assert suspended, "the small pool never suspended a process"
    for tokens, rows in zip(lips, results, strict=True):
        n = len(tokens) - steps
        for i, row in enumerate(rows):
            ref.check(torch.tensor(row), tokens[: n + i], -1)
