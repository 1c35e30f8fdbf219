"""Symphony's serving OS: model loading and forward, the page pool, attention backends, and more."""
