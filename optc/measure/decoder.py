"""Decoder-shaped measurement: an LLM with a KV cache is timed and judged the way it is used.

A model is treated as a decoder when it takes ``input_ids`` and ``past*`` cache inputs and writes ``logits``. Its
latency is measured twice: a prefill of N tokens with an empty cache, and one decode step (1 token) with a cache of
N, the cache made by running the original model's prefill. Its fidelity adds next-token top-1 agreement (the argmax
of the logits at every position) and, on real token sequences, the perplexity of both models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel

from optc.data import Dataset, InputSpec
from optc.measure.latency import LatencyStats, measure_interleaved

LOGITS = "logits"


@dataclass(frozen=True)
class DecoderIO:
    input_ids: str
    attention_mask: str | None
    position_ids: str | None
    past: list[str]  # cache inputs, in order
    present: list[str]  # cache outputs, in the same order


class PhaseLatency(BaseModel):
    tokens: int  # prompt tokens (prefill) or cache length (decode)
    original: LatencyStats
    optimized: LatencyStats
    speedup: float


class DecoderMeasurement(BaseModel):
    prefill: PhaseLatency
    decode: PhaseLatency
    next_token_agreement: float  # percent of positions whose argmax token is the original's
    positions: int
    perplexity_original: float | None = None  # on real token sequences only
    perplexity_optimized: float | None = None


def decoder_io(specs: list[InputSpec], output_names: list[str]) -> DecoderIO | None:
    names = [s.name for s in specs]
    past = [n for n in names if "past" in n.lower()]
    if "input_ids" not in names or not past or LOGITS not in output_names:
        return None
    present = [n for n in output_names if "present" in n.lower()]
    if len(present) != len(past):
        return None
    return DecoderIO(
        input_ids="input_ids",
        attention_mask="attention_mask" if "attention_mask" in names else None,
        position_ids="position_ids" if "position_ids" in names else None,
        past=past,
        present=present,
    )


def prefill_feed(io: DecoderIO, specs: list[InputSpec], tokens: np.ndarray) -> dict[str, np.ndarray]:
    """``tokens`` ``[1, N]`` with an empty cache."""
    by_name = {s.name: s for s in specs}
    feed = {io.input_ids: tokens.astype(by_name[io.input_ids].dtype)}
    length = tokens.shape[1]
    if io.attention_mask:
        feed[io.attention_mask] = np.ones((1, length), by_name[io.attention_mask].dtype)
    if io.position_ids:
        feed[io.position_ids] = np.arange(length, dtype=by_name[io.position_ids].dtype)[None]
    for name in io.past:
        shape = [
            1 if i == 0 else (0 if not isinstance(d, int) or d <= 0 else d) for i, d in enumerate(by_name[name].shape)
        ]
        feed[name] = np.zeros(shape, by_name[name].dtype)
    return feed


def decode_feed(io: DecoderIO, specs: list[InputSpec], prefill: dict, session: ort.InferenceSession) -> dict:
    """One next token after ``prefill``, with the cache ``session`` (the original model) made from it."""
    by_name = {s.name: s for s in specs}
    results = dict(zip([o.name for o in session.get_outputs()], session.run(None, prefill), strict=True))
    length = prefill[io.input_ids].shape[1]
    next_token = results[LOGITS][:, -1].argmax(-1)[:, None]
    feed = {io.input_ids: next_token.astype(by_name[io.input_ids].dtype)}
    if io.attention_mask:
        feed[io.attention_mask] = np.ones((1, length + 1), by_name[io.attention_mask].dtype)
    if io.position_ids:
        feed[io.position_ids] = np.array([[length]], by_name[io.position_ids].dtype)
    for past, present in zip(io.past, io.present, strict=True):
        feed[past] = results[present].astype(by_name[past].dtype)
    return feed


def measure_decoder(
    io: DecoderIO,
    specs: list[InputSpec],
    sessions: dict[str, ort.InferenceSession],
    dataset: Dataset,
    warmup: int,
    runs: int,
    min_time_s: float,
) -> DecoderMeasurement:
    tokens = _first_sequence(io, dataset)
    prefill = prefill_feed(io, specs, tokens)
    decode = decode_feed(io, specs, prefill, sessions["original"])
    phases = {}
    for phase, feed in (("prefill", prefill), ("decode", decode)):
        stats = measure_interleaved(sessions, feed, warmup, runs, min_time_s)
        phases[phase] = PhaseLatency(
            tokens=tokens.shape[1],
            original=stats["original"],
            optimized=stats["optimized"],
            speedup=stats["original"].p50_ms / stats["optimized"].p50_ms,
        )
    agreement, positions, perplexities = _token_fidelity(io, specs, sessions, dataset)
    return DecoderMeasurement(
        prefill=phases["prefill"],
        decode=phases["decode"],
        next_token_agreement=agreement,
        positions=positions,
        perplexity_original=perplexities[0],
        perplexity_optimized=perplexities[1],
    )


def _first_sequence(io: DecoderIO, dataset: Dataset) -> np.ndarray:
    ids = dataset.inputs[io.input_ids][0]
    return ids.reshape(1, -1) if ids.ndim <= 1 else ids[:1].reshape(1, -1)


def _token_fidelity(io, specs, sessions, dataset: Dataset) -> tuple[float, int, tuple[float | None, float | None]]:
    """Next-token agreement over every position of every evaluation sequence (each run as a prefill), and the
    perplexity of both models when the sequences are real."""
    agree = positions = 0
    losses: dict[str, list[float]] = {"original": [], "optimized": []}
    ids_all = dataset.inputs[io.input_ids]
    for index in range(len(ids_all)):
        tokens = ids_all[index].reshape(1, -1)
        feed = prefill_feed(io, specs, tokens)
        logits = {label: s.run([LOGITS], feed)[0][0].astype(np.float64) for label, s in sessions.items()}
        agree += int(np.sum(logits["original"].argmax(-1) == logits["optimized"].argmax(-1)))
        positions += tokens.shape[1]
        for label, values in logits.items():
            losses[label].append(_next_token_loss(values, tokens[0]))
    agreement = 100.0 * agree / max(positions, 1)
    if dataset.synthetic:
        return agreement, positions, (None, None)
    return agreement, positions, tuple(float(np.exp(np.mean(losses[k]))) for k in ("original", "optimized"))


def _next_token_loss(logits: np.ndarray, tokens: np.ndarray) -> float:
    """Mean negative log-likelihood of token t+1 under the logits at t."""
    shifted = logits[:-1] - logits[:-1].max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return float(-np.mean(log_probs[np.arange(len(tokens) - 1), tokens[1:]]))
