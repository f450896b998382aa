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
from optc.measure.latency import LatencyStats

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


@dataclass
class TokenPredictions:
    """One model's next-token predictions over the evaluation sequences, each run as a prefill."""

    argmax: list[np.ndarray]  # per sequence, the top-1 token at every position
    losses: list[float]  # per sequence, the mean negative log-likelihood of each next token


def decoder_feeds(
    io: DecoderIO, specs: list[InputSpec], dataset: Dataset, original: ort.InferenceSession
) -> dict[str, dict[str, np.ndarray]]:
    """The calls a decoder is timed on: a prefill of the first evaluation sequence with an empty cache, and one
    decode step after it with the cache the original model made."""
    prefill = prefill_feed(io, specs, _first_sequence(io, dataset))
    return {"prefill": prefill, "decode": decode_feed(io, specs, prefill, original)}


def token_predictions(
    io: DecoderIO, specs: list[InputSpec], session: ort.InferenceSession, dataset: Dataset
) -> TokenPredictions:
    argmax, losses = [], []
    for ids in dataset.inputs[io.input_ids]:
        tokens = ids.reshape(1, -1)
        logits = session.run([LOGITS], prefill_feed(io, specs, tokens))[0][0].astype(np.float64)
        argmax.append(logits.argmax(-1))
        losses.append(_next_token_loss(logits, tokens[0]))
    return TokenPredictions(argmax=argmax, losses=losses)


def decoder_measurement(
    feeds: dict[str, dict[str, np.ndarray]],
    latency: dict[str, dict[str, LatencyStats]],
    original: TokenPredictions,
    optimized: TokenPredictions,
    real_tokens: bool,
) -> DecoderMeasurement:
    """``latency`` by phase ("prefill", "decode") and model; perplexity only when the sequences are real text."""
    tokens = feeds["prefill"]["input_ids"].shape[1]
    phases = {
        phase: PhaseLatency(
            tokens=tokens,
            original=stats["original"],
            optimized=stats["optimized"],
            speedup=stats["original"].p50_ms / stats["optimized"].p50_ms,
        )
        for phase, stats in latency.items()
    }
    agree = sum(int(np.sum(a == b)) for a, b in zip(original.argmax, optimized.argmax, strict=True))
    positions = sum(len(a) for a in original.argmax)
    perplexity = {
        label: float(np.exp(np.mean(p.losses))) if real_tokens else None
        for label, p in (("original", original), ("optimized", optimized))
    }
    return DecoderMeasurement(
        prefill=phases["prefill"],
        decode=phases["decode"],
        next_token_agreement=100.0 * agree / max(positions, 1),
        positions=positions,
        perplexity_original=perplexity["original"],
        perplexity_optimized=perplexity["optimized"],
    )


def _first_sequence(io: DecoderIO, dataset: Dataset) -> np.ndarray:
    ids = dataset.inputs[io.input_ids][0]
    return ids.reshape(1, -1) if ids.ndim <= 1 else ids[:1].reshape(1, -1)


def _next_token_loss(logits: np.ndarray, tokens: np.ndarray) -> float:
    """Mean negative log-likelihood of token t+1 under the logits at t."""
    shifted = logits[:-1] - logits[:-1].max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return float(-np.mean(log_probs[np.arange(len(tokens) - 1), tokens[1:]]))
