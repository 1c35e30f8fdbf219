"""The kernel's side of `symphony bench rpc`: time system calls made through `workbench.client`.

    python -m workbench.rpc_probe CONNECTION_FILE PROMPT_TOKENS

It connects and attaches a process as a notebook kernel does, prefills a KV file, then answers
commands on stdin, one per line: `noop N` (N `ps` calls) or `forward N` (N one-token greedy
forwards, the file rolled back after them); each answer is a JSON list of N round trips in
seconds on stdout. `quit` ends it.
"""

from __future__ import annotations

import asyncio
import json
import sys

from engine.bench.common import timed_calls
from workbench.client import Client, Sample


async def main(connection_file: str, prompt_tokens: int) -> None:
    client = await Client.connect(connection_file, name="bench-rpc-probe")
    lip = await client.attach("rpc-client")
    vocab = client.engine["vocab_size"]
    f = await lip.kv.create()
    await lip.forward(f, [i % vocab for i in range(3, 3 + prompt_tokens)], outputs=[])
    calls = {"noop": lip.ps, "forward": lambda: lip.forward(f, [7], returns=Sample())}
    print("ready", flush=True)
    while (line := await asyncio.to_thread(sys.stdin.readline)).strip() not in ("", "quit"):
        case, n = line.split()
        times = await timed_calls(int(n), calls[case])
        await lip.kv.truncate(f, prompt_tokens)
        print(json.dumps(times), flush=True)
    await lip.exit()
    await client.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
