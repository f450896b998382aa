"""Peak host memory of a step: how far resident memory rose above where it started while the step ran.

Linux keeps a process-wide high-water mark of resident memory (``VmHWM``) that writing ``5`` to
``/proc/self/clear_refs`` resets; resetting it just before a step and reading it just after gives that step's peak
without sampling. Where that is not possible (another OS, a locked-down /proc) the peak is ``None``, never a guess.
Freed memory that the allocator keeps would be reused without raising the mark, hiding what a step needs, so the
allocator is asked to hand free pages back to the OS first (glibc's ``malloc_trim``). Device memory on a GPU is not
counted here.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def with_peak_memory(step: Callable[[], T]) -> tuple[T, int | None]:
    """Run ``step``; return its result and the peak resident bytes it added (None where it cannot be measured)."""
    baseline = _reset_high_water_mark()
    result = step()
    if baseline is None:
        return result, None
    peak = _status_kib("VmHWM")
    return result, None if peak is None else max(0, peak - baseline) * 1024


def _reset_high_water_mark() -> int | None:
    """Reset VmHWM to the current resident size and return that size in KiB, or None when not supported."""
    _release_free_memory()
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return None
    return _status_kib("VmRSS")


def _status_kib(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _release_free_memory() -> None:
    # Not glibc: nothing to trim, and the peak may be understated by memory freed earlier in this process.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
