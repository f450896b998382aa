"""Where the CLI writes: results on stdout, progress and messages on stderr.

With ``--json`` stdout carries exactly one JSON document and nothing else. Colour follows rich's detection: off when
the stream is not a terminal or ``NO_COLOR`` is set.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape

from optc.messages import printable


@dataclass
class Output:
    json_mode: bool = False
    quiet: bool = False
    stdout: Console = field(default_factory=lambda: Console(highlight=False, soft_wrap=False))
    stderr: Console = field(default_factory=lambda: Console(stderr=True, highlight=False, soft_wrap=True))

    def configure(self, json_mode: bool, quiet: bool) -> None:
        self.json_mode, self.quiet = json_mode, quiet

    def result(self, renderable: Any) -> None:
        if not self.json_mode and not self.quiet:
            self.stdout.print(renderable)

    def json(self, payload: Any) -> None:
        # print() rather than rich: rich would wrap long lines and break the document.
        print(json.dumps(payload, indent=2, default=str), flush=True)

    def error(self, message: str, hint: str | None) -> None:
        self.stderr.print(f"[bold red]error:[/] {escape(printable(message))}")
        if hint:
            self.stderr.print(f"[dim]hint:[/] {escape(printable(hint))}")


OUTPUT = Output()


class TerminalProgress:
    """Spinners for slow steps (only on a terminal), a line per finished step, warnings; silent with --quiet."""

    def __init__(self, output: Output) -> None:
        self.output = output

    @contextlib.contextmanager
    def stage(self, description: str) -> Iterator[None]:
        console = self.output.stderr
        if self.output.quiet or not console.is_terminal:
            yield
            return
        with console.status(escape(printable(description)), spinner="dots"):
            yield

    def done(self, message: str) -> None:
        if not self.output.quiet:
            self.output.stderr.print(f"[green]✓[/] {escape(printable(message))}")

    def warn(self, message: str) -> None:
        if not self.output.quiet:
            self.output.stderr.print(f"[yellow]warning:[/] {escape(printable(message))}")
