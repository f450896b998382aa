"""The ``fuse`` pass family: generic graph rewrites (one module each under ``rewrites/``), ONNX Runtime's transformer
and offline optimizers, and the numeric proof that the outputs did not move. Importing it registers the pass."""

from optc.passes.fuse import fuse_pass  # noqa: F401  (registers on import)
