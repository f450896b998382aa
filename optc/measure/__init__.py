"""Measurement: sessions on named execution providers, latency, accuracy, and the environment they ran in."""
