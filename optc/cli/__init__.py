"""The command line: parses arguments, calls the flow, renders results. The only part of optc that knows Typer."""

from optc.cli.app import app, main

__all__ = ["app", "main"]
