"""The ``scriptgate`` command line: ``main`` is the console entry point (see ``main.py``)."""

from server.cli.main import main

__all__ = ["main"]
