"""Running a step where a crash in a native library cannot take optc down with it.

ONNX Runtime and its converters are C++; on some graphs (recurrent cells and control flow converted to fp16 have
done it) they die with SIGSEGV, which no Python handler can catch. Such steps run in a forked child: a crash there
becomes an ``OptcError`` naming the signal, and optc exits with a message instead of vanishing.
"""

from __future__ import annotations

import multiprocessing
import signal
import traceback
from collections.abc import Callable
from typing import TypeVar

from optc.errors import PassError

T = TypeVar("T")
# Op types whose kernels and conversions have crashed ONNX Runtime: graphs holding them are run isolated.
RISKY_OP_TYPES = frozenset({"LSTM", "GRU", "RNN", "Loop", "Scan", "If"})


class NativeCrash(PassError):
    """ONNX Runtime (or another native library) died of a signal while running a pass's result."""


def _child(fn: Callable[..., T], args: tuple, connection) -> None:
    try:
        connection.send(("ok", fn(*args)))
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent to be raised there
        connection.send(("error", (exc, traceback.format_exc())))
    finally:
        connection.close()


def run_isolated(label: str, fn: Callable[..., T], *args) -> T:
    """``fn(*args)`` in a forked child; its result, its exception, or a ``PassError`` if it died of a signal."""
    context = multiprocessing.get_context("fork")
    receiving, sending = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(fn, args, sending), daemon=True)
    child.start()
    sending.close()
    try:
        status, payload = receiving.recv()
    except EOFError:
        child.join()
        code = child.exitcode or 0
        name = signal.Signals(-code).name if code < 0 else f"exit code {code}"
        raise NativeCrash(
            label, f"ONNX Runtime crashed ({name}) running the result", hint="exclude the op types it cannot handle"
        ) from None
    finally:
        receiving.close()
    child.join()
    if status == "error":
        raise payload[0]
    return payload
