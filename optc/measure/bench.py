"""The bench flow: latency, throughput and memory of one or more models on each provider, batch size and thread
count, with the models' runs interleaved and each compared to the first within the noise the run met."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from optc.data import Dataset, InputSpec, input_specs, load_dataset, refuse_guessed_image_sizes, synthetic_dataset
from optc.measure.environment import Environment, current_environment
from optc.measure.inference_call import inference_call
from optc.measure.interface import check_same_inputs
from optc.measure.latency import LatencyStats, time_interleaved
from optc.measure.memory import with_peak_memory
from optc.measure.noise import CONFIDENCE, NOISY_CV, Ratio, is_noisy, p50_ratio
from optc.measure.profile import OpProfile, profile_op_types
from optc.measure.providers import Unavailable, open_session
from optc.modelio import LoadedModel, load_model
from optc.progress import Progress
from optc.verify import session_source

BENCH_SCHEMA_VERSION = 1


@dataclass
class BenchRequest:
    models: list[Path]
    providers: list[str] = field(default_factory=lambda: ["cpu"])
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    threads: list[int] = field(default_factory=lambda: [1])
    warmup: int = 10
    runs: int = 50
    min_time_s: float = 1.0
    data: Path | None = None
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    seed: int = 0
    include_copies: bool = False  # CUDA: time host-device copies too
    profile: bool = False
    max_cv: float = NOISY_CV


class BenchModel(BaseModel):
    path: str
    size_bytes: int
    sha256: str


class BenchSettings(BaseModel):
    warmup: int
    runs: int  # at least this many interleaved rounds...
    min_time_s: float  # ...and at least this long
    include_copies: bool
    max_cv: float  # a model whose runs scatter more than this is flagged noisy
    confidence: float  # of the ratio intervals


class ModelTiming(BaseModel):
    model: int  # index into BenchReport.models
    latency: LatencyStats
    throughput_per_s: float  # samples per second at the mean latency
    peak_memory_bytes: int | None  # host memory the session added while loading and running once; None: unknown
    ratio_to_first: Ratio | None  # p50 over the first model's p50; None for the first model itself
    noisy: bool  # latency.cv above settings.max_cv
    profile: OpProfile | None = None


class BenchCase(BaseModel):
    provider: str
    batch_size: int
    threads: int
    measured: bool
    reason: str | None = None  # why not measured
    results: list[ModelTiming] = []


class BenchReport(BaseModel):
    schema_version: int = BENCH_SCHEMA_VERSION
    models: list[BenchModel]
    data: str  # the data file, or "synthetic"
    settings: BenchSettings
    cases: list[BenchCase]
    noisy: bool  # any measured model was noisy
    warnings: list[str]
    environment: Environment


def bench(request: BenchRequest, progress: Progress) -> BenchReport:
    with progress.stage("loading models"):
        loaded = [load_model(path) for path in request.models]
    specs = input_specs(loaded[0].model)
    check_same_inputs(loaded)
    warnings: list[str] = []
    if request.data is not None:
        dataset = load_dataset(request.data, specs, None)
    else:
        refuse_guessed_image_sizes(specs, request.input_shapes)
        dataset = synthetic_dataset(loaded[0].model, specs, request.seed, request.input_shapes)
    cases = []
    with tempfile.TemporaryDirectory(prefix="optc-bench-") as tmp:
        workdir = Path(tmp)
        sources = [session_source(m.model, workdir, f"model{i}") for i, m in enumerate(loaded)]
        for provider in request.providers:
            # The first session of a process also sets up ONNX Runtime itself; keep that out of any model's memory.
            _open_and_run_once(sources[0], provider, 1, dataset.first_batch(dataset.feed_batch_size(specs, 1)), False)
            for threads in request.threads:
                for batch in request.batch_sizes:
                    case = _bench_case(request, sources, dataset, specs, provider, batch, threads, workdir, progress)
                    cases.append(case)
                    warnings += _case_warnings(case, loaded, request.max_cv)
    for warning in warnings:
        progress.warn(warning)
    return BenchReport(
        models=[BenchModel(path=str(m.path), size_bytes=m.size_bytes, sha256=m.sha256) for m in loaded],
        data=dataset.source,
        settings=BenchSettings(
            warmup=request.warmup,
            runs=request.runs,
            min_time_s=request.min_time_s,
            include_copies=request.include_copies,
            max_cv=request.max_cv,
            confidence=CONFIDENCE,
        ),
        cases=cases,
        noisy=any(r.noisy for c in cases for r in c.results),
        warnings=warnings,
        environment=current_environment(),
    )


def _bench_case(
    request: BenchRequest,
    sources: list[bytes | str],
    dataset: Dataset,
    specs: list[InputSpec],
    provider: str,
    batch: int,
    threads: int,
    workdir: Path,
    progress: Progress,
) -> BenchCase:
    where = {"provider": provider, "batch_size": batch, "threads": threads}
    if dataset.feed_batch_size(specs, batch) != batch:
        fixed = dataset.feed_batch_size(specs, batch)
        return BenchCase(measured=False, reason=f"the model's batch axis is fixed at {fixed}", **where)
    feed = dataset.first_batch(batch)
    calls, memory = {}, []
    # Fresh sessions per case: an arena grown by an earlier (larger) batch would hide this batch's memory.
    for index, source in enumerate(sources):
        opened, peak = with_peak_memory(
            lambda s=source: _open_and_run_once(s, provider, threads, feed, request.include_copies)
        )
        if isinstance(opened, Unavailable):
            return BenchCase(measured=False, reason=opened.reason, **where)
        calls[str(index)] = opened
        memory.append(peak)
    with progress.stage(f"{provider}, batch {batch}, {threads} thread(s): timing {len(sources)} model(s)"):
        timings = time_interleaved(calls, request.warmup, request.runs, request.min_time_s)
    results = []
    for index in range(len(sources)):
        seconds = timings[str(index)]
        stats = LatencyStats.of(seconds)
        profile = None
        if request.profile:
            profiled = profile_op_types(sources[index], provider, threads, feed, workdir, f"{index}")
            profile = None if isinstance(profiled, Unavailable) else profiled
        results.append(
            ModelTiming(
                model=index,
                latency=stats,
                throughput_per_s=batch * 1e3 / stats.mean_ms,
                peak_memory_bytes=memory[index],
                ratio_to_first=p50_ratio(timings["0"], seconds) if index else None,
                noisy=is_noisy(stats.cv, request.max_cv),
                profile=profile,
            )
        )
    first = results[0].latency
    progress.done(
        f"{provider}, batch {batch}, {threads} thread(s): p50 "
        + ", ".join(f"{r.latency.p50_ms:.3f}" for r in results)
        + f" ms ({first.runs} rounds)"
    )
    return BenchCase(measured=True, results=results, **where)


def _open_and_run_once(
    source: bytes | str, provider: str, threads: int, feed: dict[str, np.ndarray], include_copies: bool
) -> Callable[[], None] | Unavailable:
    session = open_session(source, provider, threads)
    if isinstance(session, Unavailable):
        return session
    call = inference_call(session, feed, include_copies)
    call()  # the first run allocates the arena: part of the memory a session needs, excluded from timing by warm-up
    return call


def _case_warnings(case: BenchCase, loaded: list[LoadedModel], max_cv: float) -> list[str]:
    where = f"{case.provider}, batch {case.batch_size}, {case.threads} thread(s)"
    if not case.measured:
        return [f"{where}: not measured — {case.reason}"]
    return [
        f"{where}: {loaded[r.model].path} runs scatter by {r.latency.cv:.0%} of the mean (over {max_cv:.0%}); "
        "the machine was busy or throttling, so absolute figures are unreliable — ratios carry their interval"
        for r in case.results
        if r.noisy
    ]
