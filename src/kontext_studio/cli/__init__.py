"""The ``kontext`` command line: thin Typer commands over the engine."""
