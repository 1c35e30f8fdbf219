"""The LIP library: serving techniques as short programs over the system calls.

Each function takes `sys`, the system calls of a process: `Syscalls` in the engine's own
process, or a `LIP` over RPC (a `%%lip` cell's `lip`). The same code runs in both, and the
engine batches the calls of every program that runs at once.

| function | technique |
| --- | --- |
| `generate` | sampling loop: token limit, stop tokens and stop strings, streamed text |
| `parallel_samples` | n continuations of one prompt: one prefill, n forks |
| `self_consistency` | a majority vote over parallel samples' answers |
| `beam_search` | the `width` most likely continuations, beams forked and dropped |
| `speculative_decode` | greedy decoding, drafts (prompt lookup, a draft LIP) verified at once |
| `score` | each candidate continuation's log-probability under the model |
| `cached_prompt` | a prompt computed once into a named file, forked by every process after |
| `generate_regex`, `generate_json` | text a regex matches, JSON a schema validates |
| `choose`, `constrained` | one of some strings; any grammar (masked in the engine) |
| `attention_sink`, `sliding_window` | sampling in bounded memory: tokens leave by `kv.drop` |
| `tree_of_thought` | thoughts forked from thoughts, the best kept by a value function |
| `skeleton_of_thought` | a skeleton of points, each expanded by a spawned child process |
| `graph_of_thought` | n thoughts merged by `kv.splice` (nothing computed again), aggregated |
| `Chat` | a multi-turn conversation that keeps its KV file across turns |
| `react` | a ReAct agent calling engine-side tools, its steps in the ReAct format by grammar |
"""

from workbench.lib.agent import AgentRun, Step, react
from workbench.lib.chat import Chat, Turn
from workbench.lib.constrained import (
    Constrained,
    Incomplete,
    choose,
    constrained,
    generate_json,
    generate_regex,
)
from workbench.lib.decoding import Generation, generate
from workbench.lib.draft_lip import DraftLIP
from workbench.lib.prompt_cache import CachedPrompt, cached_prompt
from workbench.lib.sampling import Vote, parallel_samples, self_consistency
from workbench.lib.scoring import score
from workbench.lib.search import Beam, beam_search
from workbench.lib.speculative import (
    Drafter,
    PromptLookup,
    Proposal,
    Speculation,
    speculative_decode,
)
from workbench.lib.thought import (
    Graph,
    Skeleton,
    Thought,
    graph_of_thought,
    skeleton_of_thought,
    tree_of_thought,
)
from workbench.lib.windows import Windowed, attention_sink, sliding_window

__all__ = [
    "AgentRun",
    "Beam",
    "CachedPrompt",
    "Chat",
    "Constrained",
    "DraftLIP",
    "Drafter",
    "Generation",
    "Graph",
    "Incomplete",
    "PromptLookup",
    "Proposal",
    "Skeleton",
    "Speculation",
    "Thought",
    "Step",
    "Turn",
    "Vote",
    "Windowed",
    "attention_sink",
    "beam_search",
    "cached_prompt",
    "choose",
    "constrained",
    "generate",
    "generate_json",
    "generate_regex",
    "graph_of_thought",
    "parallel_samples",
    "react",
    "score",
    "self_consistency",
    "skeleton_of_thought",
    "sliding_window",
    "speculative_decode",
    "tree_of_thought",
]
