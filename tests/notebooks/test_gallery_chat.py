"""gallery/05-chat-and-prompt-cache.ipynb: tokens, the chat template, a system prompt cached in
/shared and forked by two users, and turn 2 of a chat reusing turn 1's KV file."""

from __future__ import annotations

import ast
import re
from typing import Any

from runner import IDLE_EXIT, wait_gone

PAGE = 16  # the engine's page size (engine.page_pool.DEFAULT_PAGE_SIZE)


def literal(pattern: str, text: str) -> Any:
    """The Python literal a notebook printed where pattern's group matches."""
    match = re.search(pattern, text)
    assert match, (pattern, text)
    return ast.literal_eval(match.group(1))


def test_chat_and_prompt_cache_notebook(run_notebook) -> None:  # type: ignore[no-untyped-def]
    nb = run_notebook("05-chat-and-prompt-cache.ipynb")

    tokens = nb.text("tokens")
    match = re.search(r"(\d+) characters -> (\d+) tokens: (\[.*\])", tokens)
    assert match, tokens
    ids = ast.literal_eval(match.group(3))
    assert int(match.group(2)) == len(ids) and 1 < len(ids) < int(match.group(1))
    pieces = re.search(r"pieces: (\[.*\])", tokens)
    assert (
        pieces
        and "".join(ast.literal_eval(pieces.group(1))) == "A tuple is immutable; a list is not."
    )
    assert "back to the same text: True" in tokens
    assert "the vocabulary has 49152 tokens" in tokens  # SmolLM2's

    template = nb.text("template")
    assert "<|im_start|>system\nYou are a patient teacher" in template, template
    assert template.rstrip().endswith("a reply ends at: ['<|im_end|>']"), template
    assert "<|im_start|>user\nWhat is a tuple?<|im_end|>\n<|im_start|>assistant" in template

    users = nb.text("users")
    prefills = {
        u: ast.literal_eval(p)
        for u, p in re.findall(r"^(\w+): prefills of (\[.*\]) tokens", users, re.M)
    }
    steps = [int(n) for n in re.findall(r"then (\d+) decode steps", users)]
    system = re.search(r"the system prompt is (\d+) tokens", users)
    assert system and len(steps) == 2 and all(steps), users
    n = int(system.group(1))
    # alice computed the system prompt (all but its last token) and then her question; bob only
    # his question: he forked the file her process made
    assert len(prefills["alice"]) == 2 and prefills["alice"][0] == n - 1, users
    assert len(prefills["bob"]) == 1 and prefills["bob"][0] < n - 1, users
    answers = re.findall(r"^  (['\"].*['\"])$", users, re.M)
    assert len(answers) == 2 and all(ast.literal_eval(a).strip() for a in answers), users

    shown = nb.text("pages")
    held = re.search(r": (\d+) tokens in (\d+) pages of (\d+)", shown)
    assert held and int(held.group(1)) == n - 1 and int(held.group(3)) == PAGE, shown
    counts = literal(r"holding each of its pages: (\[.*\])", shown)
    full = (n - 1) // PAGE
    assert full >= 2 and counts[:full] == [3] * full, shown  # the cache and both users' forks
    shared_by = literal(r"-> pages: (\{.*\})", shown)
    assert shared_by.get(3) == full, shown

    turn2 = nb.text("turn2")
    match = re.search(r"held (\d+) tokens; turn 2's conversation is (\d+) tokens", turn2)
    reuse = re.search(r"reused (\d+) tokens of turn 1's file, forwarded (\d+)", turn2)
    assert match and reuse, turn2
    held_1, total = (int(g) for g in match.groups())
    reused, forwarded = (int(g) for g in reuse.groups())
    assert reused + forwarded == total and forwarded > 0
    assert n - 1 + prefills["alice"][1] <= reused <= held_1  # at least the whole of turn 1's prompt
    assert re.search(r"turn 1's (\d+) full pages begin turn 2's page table: True", turn2)
    assert re.search(r"^alice: ['\"].+['\"]$", turn2, re.M), turn2

    end = nb.text("end")
    after = literal(r"the cache's pages: (\[.*\])", end)
    assert after == [1] * len(counts)  # the forks went with their processes; the cache stays

    outputs = nb.cell("pages").get("outputs", [])
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    assert wait_gone(nb.engine_pid(), IDLE_EXIT + 30)
