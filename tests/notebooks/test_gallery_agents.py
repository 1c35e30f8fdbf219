"""gallery/07-agents-and-tools.ipynb: a ReAct agent calling an engine-side tool while another
process decodes; the tool's wait on the timeline holds the other process's batches only; the
agent's own trace; each later step forwarding only its observation."""

from __future__ import annotations

import ast
import operator
import re

from runner import IDLE_EXIT, wait_gone

OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.Mod: operator.mod,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def arithmetic(text: str) -> float | None:
    """text's value as arithmetic (None when it is not), to check the notebook's calculator."""

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in OPS:
            return OPS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in OPS:
            return OPS[type(node.op)](value(node.operand))
        raise ValueError(text)

    try:
        return value(ast.parse(text.replace("x", "*"), mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError):
        return None


def test_agents_and_tools_notebook(run_notebook) -> None:  # type: ignore[no-untyped-def]
    nb = run_notebook("07-agents-and-tools.ipynb")

    tools = nb.text("tools")
    assert "'calculator'" in tools and "6 * 7 = 42" in tools, tools

    agent = nb.text("agent")
    actions = re.findall(r"^  Action: calculator\[(.*)\]$", agent, re.M)
    observations = re.findall(r"^  Observation: (.*)$", agent, re.M)
    assert actions and len(actions) == len(observations), agent  # min_tool_calls=1: it acted
    for argument, observation in zip(actions, observations, strict=True):
        expected = arithmetic(argument)  # the tool ran the calculator on the model's argument
        if expected is None:
            assert observation.startswith("cannot evaluate"), agent
        else:
            assert float(observation) == expected, agent
    assert re.search(r"^step 1:\n  Thought: .+\n  Action: calculator\[", agent, re.M), agent
    final = re.search(r"^step 2:\n  Thought: .+\n  Final Answer: (.+)$", agent, re.M)
    assert final and f"final answer: {final.group(1).strip()}" in agent, agent  # the last step
    written = re.search(r"the writer wrote (\d+) tokens meanwhile", agent)
    assert written and int(written.group(1)) > 0, agent

    timeline = nb.text("timeline")
    spans = re.findall(
        r"calculator took ([\d.]+) s: (\d+) batches ran meanwhile, all of them the writer's "
        r"alone: (\w+)",
        timeline,
    )
    assert len(spans) == len(actions), timeline
    for seconds, inside, alone in spans:
        assert float(seconds) >= 0.5  # the tool sleeps half a second
        assert int(inside) > 0 and alone == "True", timeline  # the engine ran the writer

    seen = nb.text("self")
    me = re.search(r"pid (\d+) \(agent\) of user (\S+), home /home/(\S+)", seen)
    assert me and me.group(2) == me.group(3), seen
    shared = re.search(r"(\d+) batches held its calls, (\d+) of them beside", seen)
    assert shared and 0 < int(shared.group(2)) <= int(shared.group(1)), seen
    waited = re.search(r"its tool waits \((\d+)\): (\[.*\])", seen)
    assert waited and int(waited.group(1)) == len(actions), seen
    assert all(w.startswith("calculator ") for w in ast.literal_eval(waited.group(2)))

    reuse = nb.text("reuse")
    forwarded = ast.literal_eval(re.search(r"step forwarded: (\[.*\])", reuse).group(1))  # type: ignore[union-attr]
    context = ast.literal_eval(re.search(r"each step: (\[.*\])", reuse).group(1))  # type: ignore[union-attr]
    assert len(forwarded) == len(context) == 2 and len(actions) == 1, reuse
    assert forwarded[1] < forwarded[0] == context[0], reuse  # step 2: the observation only
    assert context[1] > context[0] + forwarded[1], reuse  # the history holds step 1's text too
    total = re.search(r"in all: (\d+) tokens forwarded, against (\d+) re-sent", reuse)
    assert total and (int(total.group(1)), int(total.group(2))) == (sum(forwarded), sum(context))

    outputs = nb.cell("timeline").get("outputs", [])
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    assert wait_gone(nb.engine_pid(), IDLE_EXIT + 30)
