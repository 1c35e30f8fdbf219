"""One forward pass over a batch of segments from different KV sequences.

A segment appends tokens to one sequence: a prefill appends many, a decode one. Each brings
its own positions (explicit, so a sequence may skip or reuse positions) and an optional mask
over its keys. New keys and values go into the page pool; results come back only at the
output indices each segment asks for, in the form it asks for (logits, top-k, log-probs).
A segment whose sequence has a grammar (`engine.grammar`) has its tokens checked and its
outputs' logits masked by it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from engine.attention import AttentionBackend, BatchLayout, select_backend
from engine.grammar import ConstrainedSegment, MaskJob, apply_masks, refused_by
from engine.model import LlamaModel
from engine.page_pool import PagePool
from engine.sampler import sample
from engine.sequence import KVSequence
from engine.wire.errors import ContextTooLong, InvalidArgument, OutOfPages
from engine.wire.records import Logits, LogProbs, Returns, Sample, SamplingParams, TopK


class TopKResult(NamedTuple):
    ids: Tensor
    probs: Tensor


Result = Tensor | TopKResult | list[int]  # list: the token ids a Sample segment drew


@dataclass(slots=True)
class Segment:
    """Tokens to append to `seq` in this forward, and what to return for them.

    positions: one per token; default continues from the sequence's last position.
    mask: bool [len(tokens), len(seq) + len(tokens)]; True where a new token may attend.
        Replaces the causal rule for this segment (tree attention). Hidden tokens stay hidden.
    outputs: indices into `tokens` that want a result; default the last one; [] for none.
    """

    seq: KVSequence
    tokens: list[int]
    positions: list[int] | None = None
    mask: Tensor | None = None
    outputs: list[int] | None = None
    returns: Returns = field(default_factory=Logits)


class Runner:
    def __init__(
        self, model: LlamaModel, pool: PagePool, backend: AttentionBackend | None = None
    ) -> None:
        self.model = model
        self.pool = pool
        self.backend = backend or select_backend(pool.k.device, pool.k.dtype, pool.page_size)
        self.vocab_size = model.cfg.vocab_size
        self.context_length = model.cfg.max_position_embeddings

    @torch.inference_mode()
    def forward(self, segments: list[Segment], validate: bool = True) -> list[Result]:
        """Run one forward for all segments; returns one result per segment, in order.

        validate=False skips the argument checks for segments already validated (the kernel
        checks each call when it is submitted).
        """
        if validate:
            self.validate(segments)
        needed = sum(s.seq.pages_needed(self.pool, len(s.tokens)) for s in segments)
        if needed > self.pool.num_free:
            raise OutOfPages(needed, self.pool.num_free)
        before = [len(s.seq) for s in segments]
        constrained = self._constrained(segments)  # TokenRefused before anything changes
        masks: MaskJob | None = None
        try:
            layout, ids, positions = self._layout(segments)
            plan = self.backend.plan(layout, self.pool)
            if constrained:  # the grammars' masks, computed while the model runs
                masks = MaskJob(constrained, self.vocab_size)
            hidden = self.model(
                ids, positions, lambda i, q, k, v: self.backend.attend(i, q, k, v, plan, self.pool)
            )
            rows: list[int] = []
            start = 0
            for s, n in zip(segments, layout.q_lens, strict=True):
                s.seq.append(s.tokens, positions[start : start + n].tolist())
                rows.extend(start + o for o in (s.outputs if s.outputs is not None else [n - 1]))
                start += n
            out_rows = torch.tensor(rows, dtype=torch.long, device=hidden.device)
            logits = self.model.logits(hidden[out_rows])
            if masks is not None:
                apply_masks(logits, masks.result())
            return self._results(segments, logits)
        except BaseException:
            if masks is not None:
                masks.settle()  # its grammars advanced: the truncation below rolls them back
            for s, n in zip(segments, before, strict=True):  # a failed forward leaves no trace
                s.seq.truncate(self.pool, n)
            raise

    @staticmethod
    def _constrained(segments: list[Segment]) -> list[ConstrainedSegment]:
        """The segments whose files have a grammar, their tokens checked against it."""
        found: list[ConstrainedSegment] = []
        row = 0
        for i, s in enumerate(segments):
            outputs = s.outputs if s.outputs is not None else [len(s.tokens) - 1]
            c = s.seq.constraint
            if c is not None:
                base = len(s.seq)
                c.check(base, s.tokens, f"segment {i}" if len(segments) > 1 else "forward")
                found.append(ConstrainedSegment(c, base, s.tokens, outputs, row))
            row += len(outputs)
        return found

    def _layout(self, segments: list[Segment]) -> tuple[BatchLayout, Tensor, Tensor]:
        device = self.model.device
        slots: list[int] = []
        tokens: list[int] = []
        positions: list[int] = []
        masks: list[Tensor | None] = []
        for s in segments:
            seq, n = s.seq, len(s.tokens)
            masks.append(self._mask(s))
            positions.extend(
                s.positions
                if s.positions is not None
                else range(seq.next_position, seq.next_position + n)
            )
            slots.extend(seq.reserve(self.pool, n))
            tokens.extend(s.tokens)
        self.pool.mark_written(slots)
        layout = BatchLayout(
            q_lens=[len(s.tokens) for s in segments],
            kv_lens=[len(s.seq) + len(s.tokens) for s in segments],
            page_tables=[s.seq.pages for s in segments],
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=device),
            masks=masks,
            page_size=self.pool.page_size,
        )
        as_tensor = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
        return layout, as_tensor(tokens), as_tensor(positions)

    @staticmethod
    def _mask(s: Segment) -> Tensor | None:
        """The segment's explicit mask, or None for plain causal attention with nothing hidden."""
        if s.mask is None and not s.seq.hidden:
            return None
        n, total = len(s.tokens), len(s.seq) + len(s.tokens)
        if s.mask is not None:
            mask = s.mask.to(torch.bool).clone()
        else:
            mask = torch.ones(n, total, dtype=torch.bool).tril(total - n)
        if s.seq.hidden:
            mask[:, sorted(s.seq.hidden)] = False
        return mask

    def _results(self, segments: list[Segment], logits: Tensor) -> list[Result]:
        counts = [len(s.outputs) if s.outputs is not None else 1 for s in segments]
        self._call_masks(segments, counts, logits)
        sampled = self._sample_all(segments, counts, logits)
        out: list[Result] = []
        start = taken = 0
        for s, n in zip(segments, counts, strict=True):
            if isinstance(s.returns, Sample):  # the commonest case first: its slice of `sampled`
                out.append(sampled[taken : taken + n])
                taken += n
                start += n
                continue
            rows = logits[start : start + n]
            start += n
            if n == 0:
                out.append(rows.new_empty(0))
            elif isinstance(s.returns, TopK):
                probs, ids = torch.softmax(rows, dim=-1).topk(s.returns.k, dim=-1)
                out.append(TopKResult(ids, probs))
            elif isinstance(s.returns, LogProbs):
                want = torch.tensor(s.returns.tokens, dtype=torch.long, device=rows.device)
                out.append(torch.log_softmax(rows, dim=-1).gather(-1, want))
            else:
                out.append(rows)
        return out

    def _call_masks(self, segments: list[Segment], counts: list[int], logits: Tensor) -> None:
        """Each call's own `allowed` bitmask and `bias` (on TopK, LogProbs, Sample), in place on
        its rows, after the file's grammar; InvalidArgument if together they allow nothing."""
        start = 0
        for i, (s, n) in enumerate(zip(segments, counts, strict=True)):
            allowed, bias = getattr(s.returns, "allowed", None), getattr(s.returns, "bias", None)
            if n and (allowed is not None or bias):
                rows = logits[start : start + n]
                if allowed is not None:
                    refused = refused_by(allowed, self.vocab_size).to(rows.device)
                    rows.masked_fill_(refused, float("-inf"))
                if bias:
                    ids = torch.tensor(list(bias), dtype=torch.long, device=rows.device)
                    rows[:, ids] += torch.tensor(
                        list(bias.values()), dtype=rows.dtype, device=rows.device
                    )
                if not torch.isfinite(rows).any(-1).all():
                    where = f"segment {i}" if len(segments) > 1 else "forward"
                    raise InvalidArgument(
                        f"{where}: no token is allowed: the call's allowed mask and bias leave"
                        " none (with the file's grammar, if it has one)"
                    )
            start += n

    @staticmethod
    def _sample_all(segments: list[Segment], counts: list[int], logits: Tensor) -> list[int]:
        """One sampler call for every row that asked for a sampled token: their ids, in order."""
        rows: list[int] = []
        params: list[SamplingParams] = []
        gens: list[torch.Generator | None] = []
        start = 0
        for s, n in zip(segments, counts, strict=True):
            if isinstance(s.returns, Sample):
                rows.extend(range(start, start + n))
                params += [s.returns.params] * n
                gens += [s.returns.generator] * n
            start += n
        if not rows:
            return []
        return sample(logits if len(rows) == len(logits) else logits[rows], params, gens)

    def validate(self, segments: list[Segment]) -> None:
        """InvalidArgument naming the segment and the problem, before anything changes."""
        if not segments:
            raise InvalidArgument("a forward needs at least one segment")
        if len({id(s.seq) for s in segments}) != len(segments):
            raise InvalidArgument("a sequence may appear only once in a forward")
        for i, s in enumerate(segments):
            self.check(s, f"segment {i}")

    def check(self, s: Segment, where: str = "the segment", length: int | None = None) -> None:
        """InvalidArgument naming `where` and the problem, for one segment on its own.

        length: the sequence's length when the segment will run (default: its length now).
        """
        n = len(s.tokens)
        length = len(s.seq) if length is None else length
        if n == 0:
            raise InvalidArgument(f"{where}: no tokens")
        if min(s.tokens) < 0 or max(s.tokens) >= self.vocab_size:
            raise InvalidArgument(f"{where}: token ids must be in 0..{self.vocab_size - 1}")
        if s.positions is not None and (len(s.positions) != n or min(s.positions) < 0):
            raise InvalidArgument(
                f"{where}: need {n} non-negative positions, got {len(s.positions)}"
            )
        queued = length - len(s.seq)  # tokens of the calls before it (default positions)
        last = max(s.positions) if s.positions is not None else s.seq.next_position + queued + n - 1
        if last >= self.context_length:
            raise ContextTooLong(where, last, self.context_length)
        if s.mask is not None and tuple(s.mask.shape) != (n, length + n):
            raise InvalidArgument(
                f"{where}: mask must have shape ({n}, {length + n}), got {tuple(s.mask.shape)}"
            )
        if s.outputs and (min(s.outputs) < 0 or max(s.outputs) >= n):
            raise InvalidArgument(f"{where}: output indices must be in 0..{n - 1}")
        self._validate_returns(where, s)

    def _validate_returns(self, where: str, s: Segment) -> None:
        n_out = len(s.outputs) if s.outputs is not None else 1
        if isinstance(s.returns, Sample):  # the commonest first: one check per decode step
            if s.returns.params.top_k > self.vocab_size:
                raise InvalidArgument(
                    f"{where}: SamplingParams.top_k must be in 0..{self.vocab_size} (0 is off),"
                    f" got {s.returns.params.top_k}"
                )
        elif isinstance(s.returns, TopK) and not 1 <= s.returns.k <= self.vocab_size:
            raise InvalidArgument(f"{where}: top-k needs 1 <= k <= {self.vocab_size}")
        r = s.returns
        if getattr(r, "allowed", None) is not None or getattr(r, "bias", None) is not None:
            self._validate_constraint(where, r)
        if isinstance(s.returns, LogProbs):
            rows = s.returns.tokens
            if len(rows) != n_out or len({len(r) for r in rows}) > 1:
                raise InvalidArgument(
                    f"{where}: log-probs need one equal-length token list per output"
                )
            if any(not 0 <= t < self.vocab_size for r in rows for t in r):
                raise InvalidArgument(
                    f"{where}: log-prob token ids must be in 0..{self.vocab_size - 1}"
                )

    def _validate_constraint(self, where: str, returns: Returns) -> None:
        """A call's own `allowed` bitmask and `bias`, checked before anything runs."""
        allowed, bias = getattr(returns, "allowed", None), getattr(returns, "bias", None)
        if allowed is not None:
            size = -(-self.vocab_size // 32) * 4
            if not isinstance(allowed, bytes) or len(allowed) != size:
                raise InvalidArgument(
                    f"{where}: allowed must be {size} bytes (records.token_bitmask), not"
                    f" {len(allowed) if isinstance(allowed, bytes) else type(allowed).__name__}"
                )
            if refused_by(allowed, self.vocab_size).all():
                raise InvalidArgument(f"{where}: the allowed mask allows no token")
        if bias is not None:
            if not isinstance(bias, Mapping) or not all(
                type(t) is int and 0 <= t < self.vocab_size for t in bias
            ):
                raise InvalidArgument(
                    f"{where}: bias maps token ids in 0..{self.vocab_size - 1} to numbers"
                )
            if not all(isinstance(v, (int, float)) and v < math.inf for v in bias.values()):
                raise InvalidArgument(f"{where}: a bias is a number below +inf (-inf bans)")
