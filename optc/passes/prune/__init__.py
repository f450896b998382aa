"""Pruning: ``type: prune`` with ``method: magnitude | channel | outputs``. Importing this package registers it."""

from optc.passes.prune import run  # noqa: F401  (registers on import)
