"""Stop strings: where one matched, and how much text could still turn into one.

Torch-free: the engine's `sample_loop` call checks stop strings with it as tokens come, and a
client that streams text holds back what `held_back` says.
"""

from __future__ import annotations

from collections.abc import Sequence


def first_stop(text: str, stops: Sequence[str], start: int = 0) -> tuple[int, str] | None:
    """The earliest stop string in text that ends after index `start` (where the text last
    grew), as (its index, the string); None when there is none."""
    found = None
    for s in stops:
        i = text.find(s, max(0, start - len(s) + 1))
        if i >= 0 and (found is None or i < found[0]):
            found = (i, s)
    return found


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of text could be the start of a stop string (not shown yet)."""
    return max(
        (
            n
            for s in stops
            for n in range(min(len(s) - 1, len(text)), 0, -1)
            if text.endswith(s[:n])
        ),
        default=0,
    )
