"""gallery/03-decoding.ipynb: greedy, sampling settings and seeds, beam search."""

from __future__ import annotations

import re

from runner import IDLE_EXIT, wait_gone

WIDTH = 4


def test_decoding_notebook(run_notebook) -> None:  # type: ignore[no-untyped-def]
    nb = run_notebook("03-decoding.ipynb")

    greedy = nb.text("greedy")
    assert "generate() gives the same tokens: True" in greedy, greedy
    greedy_text = re.search(r"^greedy: (.*)$", greedy, re.M)
    assert greedy_text, greedy

    sampling = nb.text("sampling")
    texts = dict(re.findall(r"^ *(.+?): ('.*'|\".*\")$", sampling, re.M))
    assert texts["greedy"] == greedy_text.group(1)  # temperature 0 is greedy decoding
    assert len(set(texts.values())) > 1  # the settings change the text
    assert "with the same seed again gives the same text: True" in sampling, sampling

    beams = nb.text("beams")
    alive = [int(n) for n in re.findall(r"^step +\d+: (\d+) beams", beams, re.M)]
    assert alive and max(alive) == WIDTH and all(n <= WIDTH for n in alive)
    scores = [float(s) for s in re.findall(r"^log-probability +(-?[\d.]+):", beams, re.M)]
    assert len(scores) == WIDTH and scores == sorted(scores, reverse=True)
    assert "width 1 gives greedy decoding's tokens: True" in beams, beams

    timeline = nb.text("timeline")
    match = re.search(r"beam search: (\d+) batches, up to (\d+) calls each", timeline)
    assert match and int(match.group(2)) == WIDTH  # a step's beams share one forward pass
    assert wait_gone(nb.engine_pid(), IDLE_EXIT + 30)  # the engine it started stops by itself
