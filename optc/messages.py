"""Making text from elsewhere fit for a message: long lists capped, library errors cut to their reason, control
characters made visible.

Names in models and paths come from files optc did not write; printed raw, an ANSI escape in a file name would
recolour or rewrite the user's terminal and garble ``report.md``.
"""

from __future__ import annotations

import re

LIST_LIMIT = 8
REASON_LIMIT = 1200
# ONNX Runtime prefixes every error with its status: "[ONNXRuntimeError] : 1 : FAIL : Load model from ... failed:".
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*[A-Z_]+\s*:\s*")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def quoted_list(names: list[str], limit: int = LIST_LIMIT) -> str:
    """``'a', 'b', 'c'``, or the first ``limit`` and a count of the rest."""
    shown = ", ".join(repr(printable(str(n))) for n in names[:limit])
    rest = len(names) - limit
    return f"{shown} and {rest:,} more" if rest > 0 else shown


def exception_reason(exc: BaseException, limit: int = REASON_LIMIT) -> str:
    """An exception's text on one line, without ONNX Runtime's status prefix; when too long, its start and its end
    (where ONNX Runtime puts the reason) with the middle cut."""
    text = " ".join((str(exc).strip() or type(exc).__name__).split())
    text = _ORT_PREFIX.sub("", text)
    if len(text) > limit:
        head = limit // 3
        text = f"{text[:head]} … {text[-(limit - head) :]}"
    return printable(text)


def printable(text: str) -> str:
    """``text`` with control characters (ESC, BEL, CR, ...) shown as escapes; newlines and tabs kept."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
