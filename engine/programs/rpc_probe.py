"""The kernel's side of `symphony bench rpc`: time system calls made through `workbench.client`.

    python -m engine.programs.rpc_probe CONNECTION_FILE PROMPT_TOKENS ECHO_ENDPOINT

It connects and attaches a process as a notebook kernel does, prefills a KV file, then answers
commands on stdin, one per line: `noop N` (N `ps` calls), `forward N` (N one-token greedy
forwards, the file rolled back after them) or `echo N` (N round trips of a `ps` request's
frames, built once, through a plain blocking socket to the bench's echo at ECHO_ENDPOINT: the
transport alone); each answer is a JSON list of N round trips in seconds on stdout. `quit` ends
it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import zmq

from engine.bench.common import timed_calls
from engine.wire.protocol import REQUEST, request_body
from workbench.client import LIP, Client, Sample


def echo_times(client: Client, lip: LIP, sock: zmq.Socket, n: int) -> list[float]:
    """Round trips of a no-op request's frames through a bare echo: no Python work between."""
    header = {"kind": REQUEST, "session": client.session, "id": 1}
    frames = client.wire.frames(header, request_body(1, "ps", {}, lip.pid))
    times = []
    for _ in range(n):
        start = time.perf_counter()
        sock.send_multipart(frames)
        sock.recv_multipart()
        times.append(time.perf_counter() - start)
    return times


async def main(connection_file: str, prompt_tokens: int, echo: str) -> None:
    client = await Client.connect(connection_file, name="bench-rpc-probe")
    echo_sock: zmq.Socket = zmq.Context.instance().socket(zmq.DEALER)
    echo_sock.connect(echo)
    lip = await client.attach("rpc-client")
    vocab = client.engine["vocab_size"]
    f = await lip.kv.create()
    await lip.forward(f, [i % vocab for i in range(3, 3 + prompt_tokens)], outputs=[])
    calls = {"noop": lip.ps, "forward": lambda: lip.forward(f, [7], returns=Sample())}
    print("ready", flush=True)
    while (line := await asyncio.to_thread(sys.stdin.readline)).strip() not in ("", "quit"):
        case, n = line.split()
        if case == "echo":
            print(json.dumps(echo_times(client, lip, echo_sock, int(n))), flush=True)
            continue
        times = await timed_calls(int(n), calls[case])
        await lip.kv.truncate(f, prompt_tokens)
        print(json.dumps(times), flush=True)
    await lip.exit()
    await client.close()
    echo_sock.close(linger=0)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
