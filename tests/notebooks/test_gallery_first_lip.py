"""gallery/01-first-lip.ipynb: tokenize, forward, sample and stream, fork once, chat."""

from __future__ import annotations

import ast
import re

from runner import IDLE_EXIT, wait_gone


def test_first_lip_notebook(run_notebook) -> None:  # type: ignore[no-untyped-def]
    nb = run_notebook("01-first-lip.ipynb")
    for tag in ("tokenize", "forward", "stream", "fork", "chat"):
        assert re.search(r"LIP \d+ \(\w+\) exited", nb.text(tag)), nb.text(tag)

    lines = nb.text("tokenize").splitlines()
    ids, pieces = ast.literal_eval(lines[-3]), ast.literal_eval(lines[-2])
    assert len(ids) == len(pieces) >= 4 and all(isinstance(i, int) for i in ids)
    assert "".join(pieces) == lines[-1] == "The return value of a function"

    forward = nb.text("forward")
    probs = [float(p) for p in re.findall(r"  (0\.\d{3})$", forward, re.M)]
    assert len(probs) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1.0
    assert re.search(rf"/proc/\d+/\S+: {len(ids)} tokens in 1 page\(s\)", forward)

    generated, in_file = map(
        int, re.search(r"(\d+) tokens; (\d+) in the KV", nb.text("stream")).groups()
    )
    prompt = pieces.index(" value") + 1  # "The return value"
    assert generated == 41 and in_file == prompt + generated - 1  # the last token is not fed back

    fork = nb.text("fork")
    base, branch = (
        re.search(rf"{w}: \.\.\.(.+)$", fork, re.M).group(1) for w in ("base", "branch")
    )
    assert base != branch  # two continuations of one prompt
    shared = re.search(r"shares (\d+) of its (\d+) pages with \['/home/[^/]+/prompt'\]", fork)
    assert shared and 1 <= int(shared.group(1)) < int(shared.group(2))

    chat = nb.text("chat")  # the instruct model, through its chat template, greedily
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>" in chat, chat
    assert re.search(r"^reply: .*Paris", chat, re.M), chat

    ps = nb.text("ps")
    for name in ("tokens", "forward", "stream", "fork", "chat"):
        assert re.search(rf"^\d+\s+{name}\s+\S+\s+exited\s", ps, re.M), ps
    assert re.fullmatch(r"(\S+/\n)+", nb.text("ls"))

    assert wait_gone(nb.engine_pid(), IDLE_EXIT + 20)  # started for the notebook, gone after it
