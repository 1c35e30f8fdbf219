"""The notebook side of Symphony Workbench: LIP client API, magics, widgets (coming next)."""
