"""The compare flow: how an optimized model's outputs (and, optionally, its intermediate tensors) differ from the
original's on the same inputs, with accuracy of both when the data has labels."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from optc.data import input_specs, load_dataset, refuse_guessed_image_sizes, synthetic_dataset
from optc.errors import OptcError
from optc.measure.accuracy import AccuracyResult, evaluate
from optc.measure.environment import Environment, current_environment
from optc.measure.interface import check_same_inputs
from optc.measure.providers import Unavailable, open_session
from optc.measure.tensor_error import TensorComparison, compare_tensors
from optc.modelio import load_model
from optc.progress import Progress
from optc.verify import session_source

COMPARE_SCHEMA_VERSION = 1


@dataclass
class CompareRequest:
    original: Path
    optimized: Path
    data: Path | None = None
    samples: int | None = None
    per_tensor: bool = False
    provider: str = "cpu"
    metric: Literal["auto", "top1", "fidelity"] = "auto"
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    seed: int = 0
    batch_size: int = 1  # both models run at this batch size (the deployment one: dynamic int8 depends on it)


class CompareReport(BaseModel):
    schema_version: int = COMPARE_SCHEMA_VERSION
    original: str
    optimized: str
    provider: str
    data: str  # the data file, or "synthetic"
    accuracy: AccuracyResult  # with labels: top-1 of both; per-output fidelity always
    per_tensor: TensorComparison | None = None
    warnings: list[str]
    environment: Environment


def compare(request: CompareRequest, progress: Progress) -> CompareReport:
    with progress.stage("loading models"):
        original, optimized = load_model(request.original), load_model(request.optimized)
    specs = input_specs(original.model)
    check_same_inputs([original, optimized])
    warnings: list[str] = []
    if request.data is not None:
        dataset = load_dataset(request.data, specs, request.samples)
    else:
        refuse_guessed_image_sizes(specs, request.input_shapes)
        dataset = synthetic_dataset(original.model, specs, request.seed, request.input_shapes)
        warnings.append("no data given: fidelity is measured on seeded synthetic inputs")
        progress.warn(warnings[-1])
    with tempfile.TemporaryDirectory(prefix="optc-compare-") as tmp:
        workdir = Path(tmp)
        sessions = {}
        for label, loaded in (("original", original), ("optimized", optimized)):
            session = open_session(session_source(loaded.model, workdir, label), request.provider)
            if isinstance(session, Unavailable):
                raise OptcError(f"{request.provider}: cannot compare on this provider — {session.reason}")
            sessions[label] = session
        with progress.stage(f"outputs on {len(dataset)} samples"):
            accuracy = evaluate(
                sessions["original"], sessions["optimized"], dataset, specs, request.metric, request.batch_size
            )
        progress.done(f"{accuracy.metric}: {accuracy.original:.2f} → {accuracy.optimized:.2f}")
        per_tensor = None
        if request.per_tensor:
            with progress.stage("intermediate tensors"):
                batch = dataset.feed_batch_size(specs, request.batch_size)
                feeds = dataset.batches(batch)
                per_tensor = compare_tensors(original.model, optimized.model, feeds, request.provider, workdir)
            progress.done(f"compared {len(per_tensor.tensors)} shared tensors")
            if not per_tensor.tensors:
                warnings.append("the two graphs share no intermediate tensor names: nothing to compare per tensor")
    return CompareReport(
        original=str(request.original),
        optimized=str(request.optimized),
        provider=request.provider,
        data=dataset.source,
        accuracy=accuracy,
        per_tensor=per_tensor,
        warnings=warnings,
        environment=current_environment(),
    )
