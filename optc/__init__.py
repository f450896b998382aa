"""optc: make ONNX models smaller and faster without losing track of their accuracy."""

__version__ = "0.1.0"
