"""Typed errors the engine raises. Every one names what was wrong."""

from __future__ import annotations


class EngineError(Exception):
    """Base class for every error the engine reports to a caller."""


class ModelLoadError(EngineError):
    """A checkpoint could not be loaded: names the file and the problem."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


class ModelNotFound(EngineError):
    """A model named on the command line or in a setting that is not on this machine.

    Names every place the engine looked (nothing is ever downloaded).
    """

    def __init__(self, model: str, looked: list[str]) -> None:
        where = "".join(f"\n  - {place}" for place in looked)
        super().__init__(f"model {model!r} not found; looked in:{where}")
        self.model = model
        self.looked = "\n".join(looked)


class OutOfPages(EngineError):
    """The page pool has fewer free pages than a request needs. Nothing was allocated."""

    def __init__(self, needed: int, free: int, detail: str | None = None) -> None:
        super().__init__(f"out of KV pages: {detail or f'needed {needed}, {free} free'}")
        self.needed = needed
        self.free = free


class NoSuchProcess(EngineError):
    """No process of that pid (never was, or exited so long ago that the engine forgot it)."""


class ProcessExited(EngineError):
    """A call from a process that has exited (killed, or its client went away), or to one (a
    message sent to it)."""


class InvalidArgument(EngineError, ValueError):
    """A call's argument is out of range or of the wrong kind."""


class BadArgument(InvalidArgument):
    """A call's argument that its declaration does not take (an unknown name, a missing one, a
    value of the wrong type): names the op and the argument."""

    def __init__(self, op: str, argument: str, problem: str) -> None:
        super().__init__(f"{op}: {problem}")
        self.op = op
        self.argument = argument


class HandleNotOpen(InvalidArgument):
    """A KV file handle that no process of this client has open (closed, or another's)."""

    def __init__(self, fd: int) -> None:
        super().__init__(f"handle {fd} is not open in this session")
        self.fd = fd


class NeedsProcess(InvalidArgument):
    """A process's call sent without a process: attach one and make the call as it (its pid)."""


class ContextTooLong(InvalidArgument):
    """A token's position past the model's context length (`max_position_embeddings`)."""

    def __init__(self, where: str, position: int, context_length: int) -> None:
        super().__init__(
            f"{where}: position {position} is past the model's context length "
            f"({context_length} positions: 0..{context_length - 1})"
        )
        self.position = position
        self.context_length = context_length


class GrammarError(InvalidArgument):
    """A grammar `kv.constrain` cannot compile: names its kind and llguidance's reason."""


class TokenRefused(InvalidArgument):
    """A forward appends a token that the file's grammar refuses (see `kv.constrain`).

    Nothing was appended; the message names the token, its index in the call and its text.
    """


class _PathProblem(EngineError):
    """Something about one KV file path; the message names the path and the reason."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class FileNotFound(_PathProblem):
    """No KV file at that path (or none the caller may see)."""


class FileExists(_PathProblem):
    """The path already names a KV file or a directory."""


class PermissionDenied(_PathProblem):
    """The caller may not do this to that file (mode, /proc privacy, read-only handle)."""


class NotAttached(PermissionDenied):
    """A call acting as a process that this client did not attach (or that is not its)."""

    def __init__(self, pid: int) -> None:
        super().__init__(f"process {pid}", "is not attached by this client")
        self.pid = pid


class BadPath(_PathProblem, InvalidArgument):
    """A path that is malformed: relative, `..`, control characters, too long, unknown root."""


class IncompatibleFile(_PathProblem):
    """A saved KV file that this engine cannot load: another model, other shapes, not a KV file."""


class ProcessFailed(EngineError):
    """`wait` on a process that raised or was killed, or a server run that failed.

    traceback: the failed code's traceback where there is one (a `%%lip --server` cell's);
    reason: how it ended ("raised ValueError: ...", "killed"), where the raiser knows it.
    """

    traceback: str | None = None
    reason: str | None = None

    def __init__(
        self, message: str, traceback: str | None = None, reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.traceback = traceback
        self.reason = reason


class ToolFailed(EngineError):
    """A tool call that raised, ran past its time limit, or lost its host (see engine.tools)."""

    traceback: str | None = None

    def __init__(self, message: str, traceback: str | None = None) -> None:
        super().__init__(message)
        self.traceback = traceback


# ---- talking to an engine over the wire (engine.wire.protocol) ----


class ProtocolError(EngineError):
    """A message the engine or a client could not accept; nothing was changed."""


class AuthenticationFailed(ProtocolError):
    """A message's signature does not match: the connection token is wrong."""


class MessageTooLarge(ProtocolError):
    """A message longer than the receiver's limit."""


class BadMessage(ProtocolError):
    """A message that is not a well-formed request or reply."""


class UnknownOperation(ProtocolError):
    """A request for an operation the engine does not have."""


class UnknownSession(ProtocolError):
    """A request from a session the engine never greeted: say `hello` first."""


class SessionEnded(EngineError):
    """The engine ended this client's session (it went silent, or the engine stopped), and
    detached its processes. `await client.reconnect()` starts a new session."""


class ClientClosed(EngineError):
    """A call through a client that has been closed (or a call in flight when it closed)."""


class EngineNotRunning(EngineError):
    """No engine to connect to: no connection file, a stale one, or no answer at its address."""
