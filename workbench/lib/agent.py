"""`react`: a ReAct agent (reason, act, observe) whose actions are engine-side tools.

The agent keeps one KV file for its whole run: each step forwards only what is new (the tool's
observation), never the history again. Each step's text is constrained by a grammar in the
engine (`kv.constrain`) to the ReAct format, an optional thought then an action on one of the
given tools or a final answer, so even a small model writes steps the agent can parse. While a
tool runs (beside the engine, `sys.tool`) the process waits, and the engine runs the other
processes' forwards meanwhile: the timeline shows the tool's span, with other batches in it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import NamedTuple

from engine.wire.errors import ToolFailed
from engine.wire.records import Grammar, SamplingParams
from workbench.lib.decoding import generate
from workbench.lib.system import System, discard

THOUGHT_CHARS = 40  # the longest thought a step may write
ARGUMENT_CHARS = 24  # the longest argument of an action
ANSWER_CHARS = 60  # the longest final answer
STEP_TOKENS = 160  # tokens a step may take: more than the longest step the grammar allows
OBSERVATION_CHARS = 200  # an observation is cut to this many characters

SYSTEM = (
    "Answer the question. You may use these tools, one per step:\n{tools}\n"
    "Write each step as\nThought: what to do next\nAction: tool[argument]\n"
    "and read the Observation that follows. When you know the answer, write\n"
    "Final Answer: the answer"
)


class Step(NamedTuple):
    text: str  # what the model wrote (the thought and the action, or the final answer)
    tool: str | None  # the tool it called, if any
    argument: str | None
    observation: str | None  # what the tool returned (or why it failed), as text


class AgentRun(NamedTuple):
    answer: str | None  # the final answer, None when the steps ran out first
    steps: list[Step]
    forwarded: list[int]  # tokens each step forwarded first: the prompt, then observations
    context: list[int]  # tokens the file held as each step sampled: what a client re-sends


def step_grammar(tools: Mapping[str, str], act: bool, answer: bool) -> Grammar:
    """The ReAct format of one step: a thought, then an action on a tool (if act) or a final
    answer (if answer), then a newline."""
    names = "|".join(re.escape(t) for t in tools)
    action = rf"Action: ({names})\[[^\]\n]{{1,{ARGUMENT_CHARS}}}\]"
    final = rf"Final Answer: [^\n]{{1,{ANSWER_CHARS}}}"
    ends = "|".join(e for e, on in ((action, act), (final, answer)) if on)
    return Grammar.regex(rf"Thought: [^\n]{{1,{THOUGHT_CHARS}}}\n({ends})\n")


def parse_step(text: str) -> tuple[str | None, str | None, str | None]:
    """(tool, argument, final answer) of a step's text, None where absent."""
    action = re.search(r"Action: ([^\[\n]+)\[([^\]\n]*)\]", text)
    if action:
        return action.group(1), action.group(2), None
    final = re.search(r"Final Answer: ([^\n]*)", text)
    return None, None, final.group(1).strip() if final else None


async def react(
    sys: System,
    question: str,
    tools: Mapping[str, str],
    max_steps: int = 4,
    min_tool_calls: int = 0,
    params: SamplingParams | None = None,
    seed: int | None = None,
) -> AgentRun:
    """Answer `question` in at most `max_steps` steps, calling the engine-side tools named in
    `tools` (name -> what it does, as the model is told). Each action calls the tool with its
    argument (a str); its result, as text, is the observation the next step reads. A step may
    give the final answer once `min_tool_calls` tools have been called, and the last step
    (`max_steps`) must give it then.
    """
    if not tools:
        raise ValueError("react needs at least one tool")
    listing = "\n".join(f"- {name}: {what}" for name, what in tools.items())
    messages = [
        {"role": "system", "content": SYSTEM.format(tools=listing)},
        {"role": "user", "content": question},
    ]
    file = await sys.kv.create()
    fed = await sys.chat_template(messages)
    stops = (await sys.special_tokens()).stop
    steps: list[Step] = []
    forwarded: list[int] = []
    context: list[int] = []
    try:
        for n in range(max_steps):
            length = (await sys.kv.stat(file)).tokens
            may_answer = n >= min_tool_calls
            act = not (may_answer and n == max_steps - 1)  # the last step answers
            grammar = step_grammar(tools, act, may_answer)
            await sys.kv.constrain(file, grammar, start=length + len(fed))
            forwarded.append(len(fed))
            context.append(length + len(fed))
            seed_n = None if seed is None else seed + n
            g = await generate(sys, file, fed, STEP_TOKENS, params, stops, seed=seed_n)
            await sys.kv.constrain(file, None)
            text = sys.detokenize(g.tokens[:-1]) if g.stop == "token" else g.text
            tool, argument, final = parse_step(text)
            if tool is None or argument is None:
                steps.append(Step(text, None, None, None))
                return AgentRun(final, steps, forwarded, context)
            observation = await call_tool(sys, tool, argument)
            steps.append(Step(text, tool, argument, observation))
            ending = g.tokens[-1:] if g.stop != "token" else []  # the step's last token, if kept
            fed = ending + sys.tokenize(f"Observation: {observation}\n")
        return AgentRun(None, steps, forwarded, context)
    finally:
        await discard(sys, file)


async def call_tool(sys: System, tool: str, argument: str) -> str:
    """A tool's result as an observation: text (JSON for anything but a str), cut to length;
    a tool that fails gives its error as the observation, and the agent goes on."""
    try:
        result = await sys.tool(tool, argument)
    except ToolFailed as e:
        return f"error: {str(e).splitlines()[0]}"[:OBSERVATION_CHARS]
    text = result if isinstance(result, str) else json.dumps(result)
    return text[:OBSERVATION_CHARS]
