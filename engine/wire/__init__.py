"""The wire layer: what an engine and its clients share, without torch.

- `engine.wire.calls`: every call declared once (name, typed parameters, result, whether it
  needs a process, whether it may wait);
- `engine.wire.arguments`: a call's arguments checked against its declaration;
- `engine.wire.records`: the records calls take and return;
- `engine.wire.errors`: the typed errors, rebuilt as their own types on the client;
- `engine.wire.protocol`: the messages (ZeroMQ frames, msgpack, HMAC-signed);
- `engine.wire.connection`: the connection file (where an engine listens, its token).

A notebook imports only this package of the engine (tests/unit/test_wire_imports.py).
"""
