"""Passes, one module per family. Importing this package registers every pass."""

from optc.passes import fp16, fuse, prune, quantize  # noqa: F401  (registers on import)
from optc.passes.registry import PassConfig, PassContext, PassOutcome, describe, lookup, registered_passes

__all__ = ["PassConfig", "PassContext", "PassOutcome", "describe", "lookup", "registered_passes"]
