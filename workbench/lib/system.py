"""What the library needs of a process: the calls `Syscalls` and `LIP` both have."""

from __future__ import annotations

import inspect
import random
from collections.abc import Awaitable, Sequence
from typing import Any, Protocol

from engine.wire.records import PageMap, ProcessInfo, Spliced


class KV(Protocol):
    """The KV file calls the library makes (`sys.kv.*`); each is awaited."""

    def create(self, path: str | None = None, mode: int | None = None) -> Awaitable[Any]: ...
    def fork(self, src: Any, dst: str | None = None) -> Awaitable[Any]: ...
    def truncate(self, handle: Any, n: int) -> Awaitable[None]: ...
    def constrain(self, handle: Any, grammar: Any, start: int | None = None) -> Awaitable[None]: ...
    def unlink(self, path: str) -> Awaitable[None]: ...
    def close(self, handle: Any) -> Awaitable[None]: ...
    def stat(self, path: Any) -> Awaitable[Any]: ...
    def read(self, path: Any, start: int = 0, stop: int | None = None) -> Awaitable[list[int]]: ...
    def hide(self, handle: Any, indices: Sequence[int]) -> Awaitable[None]: ...
    def splice(
        self, handle: Any, src: Any, start: int = 0, stop: int | None = None
    ) -> Awaitable[Spliced]: ...
    def drop(self, handle: Any, start: int, stop: int) -> Awaitable[None]: ...
    def link(self, src: Any, dst: str) -> Awaitable[None]: ...
    def pages(self) -> Awaitable[PageMap]: ...


class System(Protocol):
    """The system calls of one process (`engine.syscalls.Syscalls`, `workbench.client.LIP`);
    a call that goes to the engine is awaited."""

    @property
    def kv(self) -> KV: ...

    @property
    def pid(self) -> int: ...

    def tokenize(self, text: str) -> list[int]: ...
    def detokenize(self, ids: Sequence[int]) -> str: ...
    def special_tokens(self) -> Awaitable[Any]: ...
    def chat_template(
        self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True
    ) -> Awaitable[list[int]]: ...
    def tool(self, name: str, /, *args: Any, **kwargs: Any) -> Awaitable[Any]: ...
    def sleep(self, seconds: float) -> Awaitable[None]: ...
    def ps(self) -> Awaitable[list[ProcessInfo]]: ...
    def wait(self, pid: int) -> Awaitable[Any]: ...
    # a message to a process of this user's: at once in process, awaited over RPC
    def send(self, pid: int, data: Any) -> Any: ...
    def receive(self, timeout: float | None = None) -> Awaitable[Any]: ...
    # a child process's pid: at once in process (Syscalls), awaited over RPC (LIP ships main)
    def spawn(
        self, main: Any, *args: Any, name: str | None = None, priority: int | None = None
    ) -> Any: ...
    # who this process is (an Identity): at once in process, awaited over RPC
    def whoami(self) -> Any: ...
    def sample_loop(
        self,
        file: Any,
        tokens: Sequence[int],
        max_tokens: int = 64,
        returns: Any = None,
        stop_ids: Sequence[int] = (),
        stop: Sequence[str] = (),
        before: Sequence[int] = (),
    ) -> Awaitable[Any]: ...
    def forward(
        self,
        file: Any,
        tokens: Sequence[int],
        positions: Sequence[int] | None = None,
        mask: Any = None,
        outputs: Sequence[int] | None = None,
        returns: Any = None,
    ) -> Awaitable[Any]: ...


def ids_of(sys: System, prompt: str | Sequence[int]) -> list[int]:
    """A prompt as token ids: text is tokenized, ids pass through."""
    return sys.tokenize(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]


async def discard(sys: System, handle: Any) -> None:
    """Remove a file this process made and close its handle: its pages go back to the pool."""
    await sys.kv.unlink(handle.path)
    await sys.kv.close(handle)


def seeds(seed: int | None) -> random.Random | None:
    """A stream of per-call seeds (a Sample's int seed starts a fresh stream for one call)."""
    return None if seed is None else random.Random(seed)


def next_seed(stream: random.Random | None) -> int | None:
    return None if stream is None else stream.getrandbits(62)


async def settled(result: Any) -> Any:
    """A call's result, for the calls that answer at once in process and are awaited over RPC
    (spawn, send, whoami, ps)."""
    return await result if inspect.isawaitable(result) else result


async def spawn(sys: System, main: Any, *args: Any, name: str | None = None) -> int:
    """A child process running `main(sys, *args)`: in process at once, over RPC main's source
    is shipped to an engine-side worker (self-contained: imports inside, plain arguments)."""
    return int(await settled(sys.spawn(main, *args, name=name)))


async def home(sys: System) -> str:
    """This process's user's home directory (`/home/<user>`), where its children see files."""
    return str((await settled(sys.whoami())).home)
