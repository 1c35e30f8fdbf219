"""gallery/11-why-wasnt-my-prefix-shared.ipynb: a hit and three misses, each explained."""

from __future__ import annotations

import re

from engine.prefix_cache import EVICTIONS_KEPT


def number(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    assert match, (pattern, text)
    return int(match.group(1))


def test_why_wasnt_my_prefix_shared_notebook(run_notebook) -> None:  # type: ignore[no-untyped-def]
    nb = run_notebook("11-why-wasnt-my-prefix-shared.ipynb")
    setup = nb.text("setup")
    page = number(r"(\d+) tokens per page", setup)
    system = number(r"the system prompt is (\d+) tokens", setup)
    assert system > 2 * page  # long enough to fill pages

    hit = nb.text("hit")
    cached = number(r"second: (\d+) of \d+ tokens from the cache", hit)
    assert cached >= (system // page) * page and cached % page == 0  # the system prompt's pages
    assert "computed by ['" in hit and "/first']" in hit
    hit_view = nb.text("hit-view")
    assert "second file: at token" in hit_view and "the tokens differ" in hit_view

    space = nb.text("space")
    at = number(r"stopped at token (\d+): differ", space)
    assert at < system and number(r"third: (\d+) tokens from the cache", space) == at // page * page
    assert "' ' here" in space or "'  ' here" in space  # the doubled space, shown as a token
    assert "the tokens differ" in nb.text("space-view")

    floor = nb.text("floor")
    assert number(r"short-2: (\d+) tokens", floor) < page
    assert re.search(r"0 from the cache; stopped at token 0: floor", floor), floor

    drop = nb.text("drop")
    assert number(r"dropped (\d+)", drop) >= system // page
    assert 0 < number(r"dropped (\d+)", drop) <= EVICTIONS_KEPT
    evicted = nb.text("evicted")
    assert re.search(r"again: 0 tokens from the cache; stopped at token 0: evicted", evicted), (
        evicted
    )
    view = nb.text("evicted-view")
    assert "evicted" in view and "pages hit" in view
