"""Programs that run beside the engine as its clients: `python -m engine.programs.NAME`.

- `worker`: a `%%lip --server` cell's process (started by `engine.workers`);
- `rpc_probe`: the notebook kernel's side of `symphony bench rpc` (started by `engine.bench.rpc`).

Each one acts as a notebook does, through `workbench.client`, so these programs are the one place
on the engine's side that imports `workbench`; the engine itself only starts them, by module
name (tests/unit/test_wire_imports.py checks both).
"""
