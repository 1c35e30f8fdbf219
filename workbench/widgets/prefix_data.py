"""The prefix view's data: files' tokens aligned page by page, which pages they share, where the
first of them diverges from the others, and why each file's prefix was or was not shared.

Pure functions from engine replies (`FileStat`, `kv.read` tokens, `PrefixReport`) to
NamedTuples; `prefix_view.PrefixView` draws them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from engine.wire.records import FileStat, PrefixReport, Stop
from workbench.widgets.kv_data import common_prefix

Detokenize = Callable[[Sequence[int]], str]


class PrefixPage(NamedTuple):
    number: int  # the page's index in its file
    page: int | None  # its pool page (None: in host memory, swapped out)
    text: str  # its tokens as text
    tokens: int  # how many tokens it holds (page_size but for a file's last page)
    same_as_first: bool  # the first file holds the same pool page at this index
    from_cache: bool  # an automatic-sharing lookup took it


class Divergence(NamedTuple):
    """Where a file's tokens first differ from the first file's."""

    at: int  # token index (in both files)
    page: int  # its page index
    ours: str  # the first file's token there ("" past its end)
    theirs: str  # this file's token there ("" past its end)


class PrefixRow(NamedTuple):
    path: str
    pages: list[PrefixPage]
    tokens_cached: int  # tokens its lookups took from the cache
    reason: str  # why its last lookup stopped, in words ("" without one)
    divergence: Divergence | None  # None for the first file, or where no token differs


class PrefixViewData(NamedTuple):
    page_size: int
    rows: list[PrefixRow]


def reason(stop: Stop, page_size: int, detokenize: Detokenize) -> str:
    """Why matching stopped, in words a learner reads."""
    at = f"at token {stop.at}"
    match stop.kind:
        case "end":
            return "every full page was found in the cache"
        case "floor":
            return (
                f"{at} the tokens left do not fill a page of {page_size}: a partly filled page"
                " is never shared (the page-size floor)"
            )
        case "output":
            return f"{at} a page holds a token whose output was asked for: it is computed"
        case "differ":
            ours = detokenize([stop.ours]) if stop.ours is not None else "?"
            theirs = detokenize([stop.theirs]) if stop.theirs is not None else "?"
            return f"{at} the tokens differ: {ours!r} here, {theirs!r} in the cached page"
        case "positions":
            return f"{at} the cached page holds the same tokens at other positions"
        case "evicted":
            when = f"{stop.when or 0:.1f} s"
            return f"{at} the page was cached, and the pool took it back at {when} (evicted)"
        case "other_user":
            return (
                f"{at} the page is cached among {stop.owner}'s private pages: a user's pages"
                " are reused only by that user (/shared pages by everyone)"
            )
        case "hidden":
            return (
                f"{at} the file hides tokens (or was computed under a tree mask): its keys and"
                " values are not a plain prefix's"
            )
        case "edited":
            return (
                f"{at} the file had tokens spliced in or dropped before it (kv.splice, kv.drop):"
                " its keys and values are not a plain prefix's"
            )
        case "off":
            return "prefix sharing is off for this file"
        case "constrained":
            return (
                f"{at} the file has a grammar (kv.constrain): its tokens are checked as they are"
                " computed, so none is taken from the cache"
            )
        case "unaligned":
            return f"{at} the forward did not start at a page boundary"
        case _:  # "new"
            return f"{at} nothing after this prefix was ever computed (or it was forgotten)"


def prefix_view(
    stats: Sequence[FileStat],
    tokens: Sequence[Sequence[int]],
    reports: Sequence[PrefixReport],
    page_size: int,
    detokenize: Detokenize,
) -> PrefixViewData:
    """One row per file (stats, tokens and reports in the same order), aligned page by page
    with the first file."""
    first_pages = list(stats[0].page_table) if stats else []
    first_tokens = list(tokens[0]) if tokens else []
    rows = []
    for n, (st, ids, report) in enumerate(zip(stats, tokens, reports, strict=True)):
        taken = {p for r in report.reuses for p in r.pages}
        pages = []
        for i, page in enumerate(st.page_table):
            chunk = list(ids[i * page_size : (i + 1) * page_size])
            same = n > 0 and i < len(first_pages) and page is not None and first_pages[i] == page
            pages.append(PrefixPage(i, page, detokenize(chunk), len(chunk), same, page in taken))
        last = report.reuses[-1].stop if report.reuses else None
        why = "" if last is None else reason(last, page_size, detokenize)
        divergence = None if n == 0 else _divergence(first_tokens, list(ids), page_size, detokenize)
        rows.append(PrefixRow(st.path, pages, report.tokens_cached, why, divergence))
    return PrefixViewData(page_size, rows)


def _divergence(
    a: list[int], b: list[int], page_size: int, detokenize: Detokenize
) -> Divergence | None:
    i = common_prefix(a, b)
    if i == len(a) == len(b):
        return None
    ours = detokenize([a[i]]) if i < len(a) else ""
    theirs = detokenize([b[i]]) if i < len(b) else ""
    return Divergence(i, i // page_size, ours, theirs)
