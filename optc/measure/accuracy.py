"""Accuracy of the optimized model: top-1 against labels, or fidelity to the original on the same inputs."""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel

from optc.data import Dataset, InputSpec
from optc.errors import OptcError, PassError
from optc.measure.values import run_as_arrays

SQNR_FLOOR_DB = -100.0
# Below this many values per sample (a wake-word score, a regression value), a per-sample cosine only tests the
# sign; such outputs are compared as one vector over all samples.
POOLED_BELOW = 16
SEARCH_STEP_S = 8.0  # over this, a search's steps evaluate a head of the data (Evaluator.for_search) ...
SEARCH_SAMPLES = 8  # ... of this many samples


class OutputFidelity(BaseModel):
    name: str
    # Mean over samples of the cosine similarity between original and optimized outputs; for outputs of fewer than
    # POOLED_BELOW values per sample, the cosine of all samples' values taken together (``pooled``). For integer
    # outputs (ids, labels, masks) the fraction of values that are equal: ids have no magnitude, and a text
    # recognizer's ids [.., 17, ..] read as [.., 18, ..] kept a cosine of 0.9999 with a character wrong.
    cosine: float
    pooled: bool = False
    # Float outputs compared per sample: the cosine of all samples' values taken together, which weighs each sample
    # by the size of its output. The mean per sample can hide the samples with the largest outputs moving most (a
    # pruned face detector's heat map: 0.985 per sample, 0.972 taken together), so the min_cosine gate takes the
    # lower of the two.
    cosine_all_samples: float | None = None
    max_abs_error: float
    mean_abs_error: float
    # percent, for outputs that read as class scores (reads_as_class_scores): samples whose optimized top class is the
    # original's, or one the original scores within TIE_MARGIN of it (``top1_ties`` counts those)
    top1_agreement: float | None = None
    top1_ties: int | None = None
    top5_agreement: float | None = None  # percent of samples whose original top-1 class is in the optimized top 5
    sqnr_db: float | None = None  # signal-to-quantization-noise ratio; None when the outputs are identical


class AccuracyResult(BaseModel):
    metric: Literal["top1", "top1_agreement", "cosine"]
    samples: int
    data: str  # the data file, or "synthetic"
    original: float  # percent
    optimized: float  # percent
    drop: float  # percentage points; positive = worse
    outputs: list[OutputFidelity]
    batch_size: int | None = None  # the batch size both models ran at (the deployment one: dynamic int8 depends on it)

    @property
    def min_cosine(self) -> float:
        """The worst output's cosine, per sample or all samples together (non-float outputs count as 1 when they
        agree exactly)."""
        worst = (
            o.cosine if o.cosine_all_samples is None else min(o.cosine, o.cosine_all_samples) for o in self.outputs
        )
        return min(worst, default=1.0)


def run_all(
    session: ort.InferenceSession, dataset: Dataset, batch: int, outputs: list[str] | None = None
) -> list[np.ndarray]:
    """Every output in ``outputs`` (default: all) over the whole dataset, concatenated on the sample axis."""
    chunks = [run_as_arrays(session, outputs, feed) for feed in dataset.batches(batch)]
    return [
        np.concatenate([c[i] for c in chunks]) if chunks[0][i].ndim else np.stack([c[i] for c in chunks])
        for i in range(len(chunks[0]))
    ]


class Evaluator:
    """Candidates against one original on ``dataset``: the original's outputs are computed once, so a search that
    tries many candidates (fallback, pruning) pays for one model run per candidate, not two."""

    def __init__(
        self,
        original: ort.InferenceSession,
        dataset: Dataset,
        specs: list[InputSpec],
        metric: Literal["auto", "top1", "fidelity"],
        batch_size: int,
    ) -> None:
        self.original, self.dataset, self.specs, self.metric = original, dataset, specs, metric
        self.batch = dataset.feed_batch_size(specs, batch_size)
        self.names = [o.name for o in original.get_outputs()]
        started = time.perf_counter()
        self.reference = dict(zip(self.names, run_all(original, dataset, self.batch, self.names), strict=True))
        self.reference_s = time.perf_counter() - started

    def for_search(self, seconds: float | None = None) -> Evaluator:
        """This evaluator, or, where its run of the original took longer than ``seconds``, one over the first
        ``SEARCH_SAMPLES`` samples of its data: a search's steps then cost seconds each, and only the model it settles
        on needs the whole data. DNSMOS (32 clips of 9 s, 0.49 s each) spent 16 s per step of int8-accurate's search,
        1015 s in all. A fixed head, not one sized by the time measured, so that two runs on one machine agree."""
        seconds = SEARCH_STEP_S if seconds is None else seconds
        if self.reference_s <= seconds or len(self.dataset) <= SEARCH_SAMPLES:
            return self
        return Evaluator(self.original, self.dataset.head(SEARCH_SAMPLES), self.specs, self.metric, self.batch)

    def __call__(self, optimized: ort.InferenceSession) -> AccuracyResult:
        names = shared_outputs(self.names, [o.name for o in optimized.get_outputs()])
        candidate = run_all(optimized, self.dataset, self.batch, names)
        reference = [self.reference[name] for name in names]
        return compare_outputs(names, reference, candidate, self.dataset, self.metric, self.batch)


def evaluate(
    original: ort.InferenceSession,
    optimized: ort.InferenceSession,
    dataset: Dataset,
    specs: list[InputSpec],
    metric: Literal["auto", "top1", "fidelity"],
    batch_size: int,
) -> AccuracyResult:
    """Both models on every sample at ``batch_size`` (the deployment batch: dynamic quantization picks its scales per
    batch, so fidelity at batch 32 overstates that at batch 1); see ``compare_outputs``."""
    return Evaluator(original, dataset, specs, metric, batch_size)(optimized)


def shared_outputs(original: list[str], optimized: list[str]) -> list[str]:
    """The outputs both models have, by name, in the optimized model's order: a pass may drop outputs (prune
    method: outputs)."""
    names = [name for name in optimized if name in set(original)]
    if not names:
        raise OptcError("the optimized model shares no output name with the original, so nothing can be compared")
    return names


def compare_outputs(
    names: list[str],
    reference: list[np.ndarray],
    candidate: list[np.ndarray],
    dataset: Dataset,
    metric: Literal["auto", "top1", "fidelity"],
    batch: int,
) -> AccuracyResult:
    """The accuracy result of two models' outputs on the whole dataset. Refuses an optimized model whose outputs
    turn non-finite where the original's stay finite: that model is broken whatever its average says."""
    _refuse_new_non_finite(names, reference, candidate)
    fidelity = [output_fidelity(name, r, c) for name, r, c in zip(names, reference, candidate, strict=True)]
    first, first_ref = fidelity[0], reference[0]
    if metric == "top1" and dataset.labels is None:
        raise OptcError(f"{dataset.source}: metric top1 needs a 'labels' array in the evaluation data")
    if dataset.labels is not None and metric != "fidelity":
        if not _is_classifier(first_ref):
            raise OptcError(
                f"{dataset.source}: has labels, but the first output {names[0]!r} is not [batch, classes] "
                f"(shape {list(first_ref.shape)})",
                hint="use metric: fidelity",
            )
        labels = dataset.labels
        if len(labels) != len(first_ref):
            raise OptcError(f"{dataset.source}: {len(labels)} labels for {len(first_ref)} outputs")
        before = _top1(first_ref, labels)
        after = _top1(candidate[0], labels)
        return AccuracyResult(
            metric="top1",
            samples=len(labels),
            data=dataset.source,
            original=before,
            optimized=after,
            drop=before - after,
            outputs=fidelity,
            batch_size=batch,
        )
    if first.top1_agreement is not None:
        value, kind = first.top1_agreement, "top1_agreement"
    else:  # the worst output: a model's first output may be a pass-through of its inputs
        value, kind = 100.0 * min(o.cosine for o in fidelity), "cosine"
    return AccuracyResult(
        metric=kind,
        samples=len(first_ref),
        data=dataset.source,
        original=100.0,
        optimized=value,
        drop=100.0 - value,
        outputs=fidelity,
        batch_size=batch,
    )


def _refuse_new_non_finite(names: list[str], reference: list[np.ndarray], candidate: list[np.ndarray]) -> None:
    for name, ref, cand in zip(names, reference, candidate, strict=True):
        if cand.dtype.kind != "f" or ref.shape != cand.shape:
            continue
        broken = np.isfinite(ref) & ~np.isfinite(cand)
        if broken.any():
            rows = broken.reshape(len(broken), -1).any(axis=1) if broken.ndim else broken.reshape(1)
            raise PassError(
                "the optimized model",
                f"output {name!r} turns NaN/Inf on {int(rows.sum())} of {len(rows)} evaluation samples where the "
                "original stays finite",
                hint="the model is broken on real inputs; nothing was written",
            )


# Outputs named like these are vectors (an embedding, a molecular fingerprint), not class scores: their argmax means
# nothing, and top-1 agreement on one made int8-accurate chase argmax noise into keeping 386 nodes in float.
VECTOR_NAME_PARTS = ("embed", "fingerprint", "feature", "hidden", "pooler", "vector", "encoding", "latent")
# Raw scores named like these are class scores; unnamed raw scores may be anything: DNSMOS's [batch, 3] output is
# three MOS regression scores, and the "top class" among them flips with any noise (int8-accurate searched 3.4x as
# long as int8; by cosine, int8's own model is within its 1-point budget).
CLASS_NAME_PARTS = ("logit", "prob", "class")
PROBABILITY_TOLERANCE = 1e-3  # how far a row's sum (or log-sum-exp) may stray from 1 (0) for a Softmax output
# A sample the original decides by less than this much probability between two classes is a tie: choosing the other
# one is not a disagreement. Magika's file-type classifier decides one of 32 samples by 0.9 points, a captcha reader's
# first digit one by 0.6; any compression may flip such a sample, and with 32 samples one flip is 3.1 points of
# agreement, three times the -accurate recipes' budget: their searches kept every node in float and refused.
TIE_MARGIN = 0.01


def _names_a_vector(name: str) -> bool:
    return any(part in name.lower() for part in VECTOR_NAME_PARTS)


def _is_classifier(output: np.ndarray) -> bool:
    return output.ndim == 2 and output.shape[1] > 1 and output.dtype.kind == "f"


def reads_as_class_scores(name: str, output: np.ndarray) -> bool:
    """Whether an output's argmax is a class: [batch, classes] floats that are probabilities per row (Softmax),
    log-probabilities (LogSoftmax), or raw scores named like logits. Top-1 agreement is only asked of these."""
    if not _is_classifier(output) or _names_a_vector(name):
        return False
    if any(part in name.lower() for part in CLASS_NAME_PARTS):
        return True
    rows = output.astype(np.float64)
    if not np.isfinite(rows).all():
        return False
    if (rows >= 0).all():
        return _are_probabilities(rows)
    if not (rows <= 0).all():
        return False
    peak = rows.max(axis=1, keepdims=True)
    log_sum_exp = peak[:, 0] + np.log(np.exp(rows - peak).sum(axis=1))
    return bool(np.allclose(log_sum_exp, 0.0, atol=PROBABILITY_TOLERANCE))


def _are_probabilities(rows: np.ndarray) -> bool:
    return bool((rows >= 0).all() and np.allclose(rows.sum(axis=1), 1.0, atol=PROBABILITY_TOLERANCE))


def _as_probabilities(scores: np.ndarray) -> np.ndarray:
    """Class scores as probabilities per row: as they are where they already are, exp of log-probabilities, else
    their softmax (raw logits)."""
    rows = scores.astype(np.float64)
    if _are_probabilities(rows):
        return rows
    exp = np.exp(rows - rows.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)  # the softmax of log-probabilities is their exp


def top1_agreement(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, int]:
    """Percent of samples whose top class in ``candidate`` is the original's or ties with it in the original's
    probabilities (within ``TIE_MARGIN``), and how many of them were such ties."""
    probabilities = _as_probabilities(reference)
    expected, chosen = np.argmax(reference, axis=1), np.argmax(candidate, axis=1)
    rows = np.arange(len(reference))
    tied = (chosen != expected) & (probabilities[rows, chosen] >= probabilities[rows, expected] - TIE_MARGIN)
    return 100.0 * float(np.mean((chosen == expected) | tied)), int(tied.sum())


def _top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float(np.mean(np.argmax(logits, axis=1) == labels))


def _per_sample_cosines(reference: np.ndarray, candidate: np.ndarray):
    """Both outputs as float64 rows (one per sample, or one pooled row for tiny outputs), |difference|, and the
    cosine of each row (the share of equal values for integer outputs)."""
    ref = reference.astype(np.float64).reshape(len(reference), -1) if reference.ndim else reference.reshape(1, 1)
    cand = candidate.astype(np.float64).reshape(ref.shape)
    pooled = ref.shape[1] < POOLED_BELOW
    if pooled:
        ref, cand = ref.reshape(1, -1), cand.reshape(1, -1)
    diff = np.abs(ref - cand)
    if reference.dtype.kind in "iub":
        return ref, cand, pooled, diff, np.mean(ref == cand, axis=1)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    dots = np.sum(ref * cand, axis=1)
    # Two all-zero outputs are identical; one zero and one not are orthogonal.
    cosines = np.where(norms > 0, dots / np.where(norms > 0, norms, 1), np.where(diff.max(axis=1) == 0, 1.0, 0.0))
    return ref, cand, pooled, diff, cosines


def output_cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    """``output_fidelity(...).cosine`` alone, without the rest: fidelity searches call it on every attempt (on a
    text detector's 640x480 maps, top-5 agreement over 307,200 "classes" took a quarter of int8's wall time)."""
    return float(np.mean(_per_sample_cosines(reference, candidate)[4]))


def output_fidelity(name: str, reference: np.ndarray, candidate: np.ndarray) -> OutputFidelity:
    ref, cand, pooled, diff, cosines = _per_sample_cosines(reference, candidate)
    together = None
    if reference.dtype.kind not in "iub" and not pooled and len(ref) > 1:
        total = float(np.linalg.norm(ref) * np.linalg.norm(cand))
        together = float(np.sum(ref * cand)) / total if total > 0 else float(diff.max() == 0)
    agreement = ties = top5 = None
    if reads_as_class_scores(name, reference):
        expected = np.argmax(reference, axis=1)
        agreement, ties = top1_agreement(reference, candidate)
        if reference.shape[1] > 5:
            top5_classes = np.argpartition(candidate, -5, axis=1)[:, -5:]
            top5 = 100.0 * float(np.mean(np.any(top5_classes == expected[:, None], axis=1)))
    return OutputFidelity(
        name=name,
        cosine=float(np.mean(cosines)),
        pooled=pooled,
        cosine_all_samples=together,
        max_abs_error=float(diff.max()) if diff.size else 0.0,
        mean_abs_error=float(diff.mean()) if diff.size else 0.0,
        top1_agreement=agreement,
        top1_ties=ties,
        top5_agreement=top5,
        sqnr_db=sqnr_db(float(np.sum(ref * ref)), float(np.sum((ref - cand) ** 2))),
    )


def sqnr_db(signal_power: float, noise_power: float) -> float | None:
    """10·log10(signal / noise): higher is closer. None for no noise at all, where the ratio is infinite; an
    all-zero reference with any error at all is floored at ``SQNR_FLOOR_DB`` so it still sorts as the worst."""
    if noise_power == 0:
        return None
    if signal_power == 0:
        return SQNR_FLOOR_DB
    return max(SQNR_FLOOR_DB, 10.0 * float(np.log10(signal_power / noise_power)))
