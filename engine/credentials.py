"""Credentials: a token for each user, issued by the engine's owner.

Who can do what:
- The engine's own token (in its connection file, mode 0600) is its owner's. Whoever holds it may
  say hello as any user, and issue and revoke users' tokens: it is the token of one person's
  engine, as a Jupyter kernel's is. The Jupyter server extension holds it, and acts as the
  Jupyter server's user.
- `symphony user add NAME` asks the running engine for a token of NAME's own and writes a
  connection file holding it (mode 0600) to give to NAME. A client with it may say hello only as
  NAME; its messages are signed with NAME's token, and the engine's replies to it too. NAME then
  reads and writes only what the KV file system lets NAME (engine.kvfs), waits on and kills only
  NAME's processes, and replaces only NAME's tools.
- `symphony user remove NAME` revokes the token and ends NAME's sessions at once.

Tokens live in `<data dir>/users.json` (mode 0600), so they outlive a restart of the engine.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path

from engine.wire.errors import InvalidArgument

USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")


class Credentials:
    """The owner's token and each user's, by credential name ("" is the owner)."""

    def __init__(self, owner_token: str, path: Path | None = None) -> None:
        self.owner = owner_token.encode()
        self.path = path
        self.tokens: dict[str, str] = {}
        if path is not None and path.exists():
            doc = json.loads(path.read_text())
            self.tokens = {k: v for k, v in doc.items() if isinstance(v, str) and USER.fullmatch(k)}

    def key(self, cred: str) -> bytes | None:
        """The key that signs the messages of credential cred, or None for an unknown one."""
        if cred == "":
            return self.owner
        token = self.tokens.get(cred)
        return None if token is None else token.encode()

    def add(self, user: str) -> str:
        """A new token for user (replacing an earlier one, which stops working)."""
        if not isinstance(user, str) or not USER.fullmatch(user):
            raise InvalidArgument(f"a user name is letters, digits and ._- (not {user!r})")
        self.tokens[user] = secrets.token_hex(32)
        self._save()
        return self.tokens[user]

    def remove(self, user: str) -> bool:
        """Revoke user's token; whether there was one."""
        had = self.tokens.pop(user, None) is not None
        self._save()
        return had

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.tokens, f)
        os.replace(tmp, self.path)
