"""The one error type optc raises, and the exit codes it maps to.

Every failure a user can cause or meet is an ``OptcError`` with a message for a human (naming the file, field or node)
and an optional hint. The CLI turns it into an exit code in one place (``optc.cli.app``).
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    GATE_FAILED = 1  # the model and report were written, but a gate did not hold
    BAD_INPUT = 2  # bad usage, unreadable model, bad recipe or data; nothing written
    PASS_FAILED = 3  # a pass failed or its result did not verify; nothing written
    INTERNAL = 4  # a bug in optc; nothing written
    INTERRUPTED = 130


class OptcError(Exception):
    """A failure with a message meant for the person running optc."""

    exit_code: ExitCode = ExitCode.BAD_INPUT

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class PassError(OptcError):
    """A pass raised, or its output failed verification."""

    exit_code = ExitCode.PASS_FAILED

    def __init__(self, pass_label: str, message: str, hint: str | None = None) -> None:
        super().__init__(f"{pass_label}: {message}", hint)
        self.pass_label = pass_label
        self.reason = message


class NotApplicable(PassError):
    """The pass can do nothing for this model: nothing it works on, or no result within its accuracy budget. A
    recipe that marks the pass ``optional`` goes on without it (the pipeline records it as skipped)."""
