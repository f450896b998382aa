"""The compress flow: load → passes (each verified) → measure → report → write.

Nothing is written until everything before it has succeeded; then the model and the report files are each written
atomically. Gate failures do not stop the write: the caller turns them into exit code 1.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx

import optc
from optc.data import Dataset, input_specs, load_dataset, synthetic_dataset
from optc.gates import evaluate_gates
from optc.measure.accuracy import evaluate
from optc.measure.environment import current_environment
from optc.measure.latency import measure_interleaved
from optc.measure.profile import compare_profiles, profile_op_types
from optc.measure.providers import Unavailable, open_session
from optc.model_facts import node_count, parameter_count
from optc.modelio import load_model, refuse_overwriting_input, save_model, serialized_size, write_text_atomic
from optc.passes import PassContext
from optc.pipeline import run_passes
from optc.progress import Progress
from optc.recipe import Gates, LoadedRecipe
from optc.report.html import render_html
from optc.report.markdown import render_markdown
from optc.report.schema import ModelInfo, ProviderMeasurement, RecipeInfo, Report, TargetInfo
from optc.target import detect_cpu, resolve_target, target_mismatch
from optc.verify import finite_output_names, session_source


@dataclass
class CompressRequest:
    model_path: Path
    output_path: Path
    recipe: LoadedRecipe
    data_path: Path | None = None  # wins over the recipe's evaluate.data
    calibration_data: Path | None = None  # wins over a pass's own calibration data
    providers: list[str] | None = None  # wins over the recipe's evaluate.providers
    gate_overrides: dict[str, float] = field(default_factory=dict)
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    report_path: Path | None = None  # report.json; report.md and report.html go beside it
    seed: int = 0
    profile: bool = False  # aggregate ONNX Runtime's profiler per op type, original vs optimized
    target: str | None = None  # wins over the recipe's target


@dataclass
class CompressResult:
    report: Report
    output_path: Path
    report_json: Path
    report_md: Path
    report_html: Path


def compress(request: CompressRequest, progress: Progress) -> CompressResult:
    recipe = request.recipe.recipe
    report_json = request.report_path or request.output_path.parent / "report.json"
    report_md = report_json.with_suffix(".md")
    report_html = report_json.with_suffix(".html")
    refuse_overwriting_input(request.output_path, request.model_path)
    for path in (report_json, report_md, report_html):
        refuse_overwriting_input(path, request.model_path)
    with progress.stage(f"loading {request.model_path}"):
        loaded = load_model(request.model_path)
    original = ModelInfo(
        path=str(request.model_path),
        size_bytes=loaded.size_bytes,
        parameters=parameter_count(loaded.model),
        nodes=node_count(loaded.model),
        sha256=loaded.sha256,
    )
    # Sessions of the original read the input file itself: it is exactly the loaded model, and nothing needs the
    # in-memory copy after the passes — for a multi-gigabyte model, that copy is gigabytes measurement can spare.
    original_source = str(request.model_path)
    model = loaded.model
    del loaded
    specs = input_specs(model)
    warnings: list[str] = []
    dataset = _evaluation_data(request, specs, model, warnings, progress)
    providers = request.providers or list(recipe.evaluate.providers)
    cpu = detect_cpu()
    requested_target = request.target or recipe.target
    target = resolve_target(requested_target, cpu)
    latency = recipe.evaluate.latency
    batch = dataset.feed_batch_size(specs, latency.batch_size)

    with tempfile.TemporaryDirectory(prefix="optc-") as tmp:
        workdir = Path(tmp)
        context = PassContext(
            label="",
            workdir=workdir,
            seed=request.seed,
            dataset=dataset,
            metric=recipe.evaluate.metric,
            calibration_data=request.calibration_data,
            recipe_dir=request.recipe.base_dir,
            sample_inputs=[dataset.first_batch(batch)],
            target=target,
        )
        finite = finite_output_names(model, workdir, context.sample_inputs[0], request.model_path)
        optimized, records = run_passes(model, list(recipe.passes), context, progress, finite)
        del model
        _stamp_provenance(optimized, original.sha256, request.recipe.sha256)
        for record in records:
            warnings.extend(record.warnings)
        measurements = [
            _measure_on(provider, original_source, optimized, dataset, specs, recipe, batch, workdir, progress)
            for provider in providers
        ]
        if request.profile:
            measurements = [
                _with_profile(m, original_source, optimized, dataset, batch, workdir, progress) for m in measurements
            ]
    for m in measurements:
        if not m.measured:
            progress.warn(f"{m.provider}: not measured — {m.reason}")
            warnings.append(f"{m.provider}: not measured — {m.reason}")
    mismatch = target_mismatch(target, cpu, [m.provider for m in measurements if m.measured])
    if mismatch:
        progress.warn(mismatch)
        warnings.append(mismatch)

    gates = Gates.model_validate({**recipe.gates.model_dump(), **request.gate_overrides})
    optimized_size = serialized_size(optimized)
    size_ratio = optimized_size / original.size_bytes
    gate_results = evaluate_gates(gates, size_ratio, measurements)
    report = Report(
        optc_version=optc.__version__,
        recipe=RecipeInfo(source=request.recipe.source, name=recipe.name, sha256=request.recipe.sha256),
        original=original,
        optimized=ModelInfo(
            path=str(request.output_path),
            size_bytes=optimized_size,
            parameters=parameter_count(optimized),
            nodes=node_count(optimized),
        ),
        size_ratio=size_ratio,
        passes=records,
        data=dataset.source,
        measurements=measurements,
        gates=gate_results,
        gates_passed=all(g.passed for g in gate_results),
        warnings=warnings,
        environment=current_environment(),
        target=TargetInfo(requested=requested_target, name=target, measured_on=cpu.isa, warning=mismatch),
    )
    with progress.stage(f"writing {request.output_path}"):
        report.optimized.size_bytes = save_model(optimized, request.output_path)
        write_text_atomic(report_json, report.model_dump_json(indent=2) + "\n")
        write_text_atomic(report_md, render_markdown(report))
        write_text_atomic(report_html, render_html(report))
    return CompressResult(
        report=report,
        output_path=request.output_path,
        report_json=report_json,
        report_md=report_md,
        report_html=report_html,
    )


def _evaluation_data(request, specs, model, warnings: list[str], progress: Progress) -> Dataset:
    evaluate_settings = request.recipe.recipe.evaluate
    path = request.data_path
    if path is None and evaluate_settings.data is not None:
        base = request.recipe.base_dir or Path.cwd()
        path = evaluate_settings.data if evaluate_settings.data.is_absolute() else base / evaluate_settings.data
    if path is not None:
        return load_dataset(path, specs, evaluate_settings.samples)
    dataset = synthetic_dataset(model, specs, request.seed, request.input_shapes)
    message = "no evaluation data given: accuracy is fidelity to the original on seeded synthetic inputs"
    progress.warn(message)
    warnings.append(message)
    return dataset


def _measure_on(
    provider, original_source, optimized, dataset, specs, recipe, batch, workdir, progress
) -> ProviderMeasurement:
    latency = recipe.evaluate.latency
    base = {"provider": provider, "batch_size": batch, "threads": latency.threads, "warmup": latency.warmup}
    sessions = {}
    for label, source in (("original", original_source), ("optimized", session_source(optimized, workdir, "measured"))):
        session = open_session(source, provider, latency.threads)
        if isinstance(session, Unavailable):
            return ProviderMeasurement(measured=False, reason=session.reason, **base)
        sessions[label] = session
    with progress.stage(f"{provider}: accuracy on {len(dataset)} samples"):
        accuracy = evaluate(sessions["original"], sessions["optimized"], dataset, specs, recipe.evaluate.metric)
    with progress.stage(f"{provider}: latency, batch {batch}, {latency.threads} thread(s)"):
        stats = measure_interleaved(
            sessions, dataset.first_batch(batch), latency.warmup, latency.runs, latency.min_time_s
        )
    speedup = stats["original"].p50_ms / stats["optimized"].p50_ms
    progress.done(
        f"{provider}: p50 {stats['original'].p50_ms:.3f} → {stats['optimized'].p50_ms:.3f} ms ({speedup:.2f}×), "
        f"{accuracy.metric} {accuracy.original:.2f} → {accuracy.optimized:.2f}"
    )
    return ProviderMeasurement(
        measured=True,
        original=stats["original"],
        optimized=stats["optimized"],
        speedup=speedup,
        accuracy=accuracy,
        **base,
    )


def _with_profile(m, original_source, optimized, dataset, batch, workdir, progress) -> ProviderMeasurement:
    """``m`` with the per-op-type profile of both models, on sessions of their own (profiling slows every run)."""
    if not m.measured:
        return m
    feed = dataset.first_batch(batch)
    profiles = {}
    with progress.stage(f"{m.provider}: profiling per op type"):
        sources = {"original": original_source, "optimized": session_source(optimized, workdir, "profiled")}
        for label, source in sources.items():
            profiles[label] = profile_op_types(source, m.provider, m.threads, feed, workdir, label)
    if any(isinstance(p, Unavailable) for p in profiles.values()):
        return m
    return m.model_copy(update={"profile": compare_profiles(profiles["original"], profiles["optimized"])})


def _stamp_provenance(model: onnx.ModelProto, input_sha256: str, recipe_sha256: str) -> None:
    """Record where the model came from; no timestamps or paths, so equal inputs give equal bytes."""
    stamp = {"optc.version": optc.__version__, "optc.recipe_sha256": recipe_sha256, "optc.input_sha256": input_sha256}
    kept = [p for p in model.metadata_props if p.key not in stamp]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in stamp.items():
        model.metadata_props.add(key=key, value=value)
