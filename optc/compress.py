"""The compress flow: check every path → load → passes (each verified) → measure → report → write.

Every input and output path is checked before any work (``optc.outputs``), and nothing becomes visible until
everything before it has succeeded: the model, its external data and the three reports are staged and then renamed
into place together. A model that fails a gate is written under rejected names beside the destination (or, on
request, to the destination itself, or nowhere), so a Makefile never mistakes it for a built target.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

import optc
from optc.data import Dataset, input_specs, load_dataset, refuse_guessed_image_sizes, synthetic_dataset
from optc.data_files import check_data_path
from optc.errors import OptcError
from optc.gates import effective_gates, evaluate_gates
from optc.measure.environment import current_environment
from optc.measure.pair import LatencySettings, ModelSource, measure_pair
from optc.measure.profile import compare_profiles, profile_op_types
from optc.measure.providers import Unavailable, unavailable_reason
from optc.model_facts import node_count, parameter_count
from optc.modelio import adopt_model, load_model, serialized_size, sha256_of_files, write_model
from optc.outputs import InputFile, OutputSet, check_outputs, input_files, resolve_outputs, staged_outputs, write_file
from optc.passes import PassContext
from optc.pipeline import run_passes
from optc.progress import Progress
from optc.recipe import LoadedRecipe
from optc.report.format import speed_change, timing_order
from optc.report.html import render_html
from optc.report.markdown import render_markdown
from optc.report.schema import ModelInfo, ProviderMeasurement, RecipeInfo, Report, TargetInfo
from optc.target import detect_cpu, resolve_target, target_mismatch
from optc.verify import finite_outputs, run_reference, session_source

GateFailurePolicy = Literal["rejected", "write", "discard"]


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
    # Where a model that fails a gate goes: beside the destination under rejected names, to the destination anyway,
    # or nowhere.
    on_gate_failure: GateFailurePolicy = "rejected"
    allow_unmeasured: bool = False  # write the model even when no provider asked for can measure it


@dataclass
class CompressResult:
    report: Report
    written: OutputSet | None  # None when a gate failed and the policy was to discard
    rejected: bool  # a gate failed


def compress(request: CompressRequest, progress: Progress) -> CompressResult:
    recipe = request.recipe.recipe
    outputs, rejected_outputs = resolve_outputs(request.output_path, request.report_path)
    data_paths = _data_paths(request)
    for role, path in data_paths:
        check_data_path(role, path)
    with progress.stage(f"loading {request.model_path}"):
        loaded = load_model(request.model_path)
    inputs = [
        InputFile("the input model", loaded.path),
        *(InputFile("the input model's external data", f) for f in loaded.external_files),
        *(f for role, path in data_paths for f in input_files(role, path)),
        *([InputFile("the recipe", Path(request.recipe.source))] if request.recipe.base_dir is not None else []),
    ]
    check_outputs(outputs, inputs, rejected_outputs if request.on_gate_failure == "rejected" else None)
    providers = request.providers or list(recipe.evaluate.providers)
    _refuse_unmeasurable(providers, request.allow_unmeasured)
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
    original_outputs = [o.name for o in model.graph.output]
    del loaded
    specs = input_specs(model)
    warnings: list[str] = []
    dataset = _evaluation_data(request, specs, model, warnings, progress)
    cpu = detect_cpu()
    requested_target = request.target or recipe.target
    target = resolve_target(requested_target, cpu)
    latency = recipe.evaluate.latency
    batch = dataset.feed_batch_size(specs, latency.batch_size)

    # The work folder lives until the model is written: the optimized model's untouched weights may still be
    # references into files there (see optc.tensors).
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
            batch_size=batch,
            target=target,
        )
        try:
            source = "optc's synthetic inputs" if dataset.synthetic else dataset.source
            reference = run_reference(request.model_path, context.sample_inputs[0], source)
        except OptcError as exc:
            if dataset.synthetic:  # the guessed sizes or values may be what the model cannot take
                raise OptcError(exc.message, hint=_synthetic_feed_hint(context.sample_inputs[0])) from exc
            raise
        dataset.check_labels_fit(reference)
        optimized, records = run_passes(model, list(recipe.passes), context, progress, finite_outputs(reference))
        del model
        _stamp_provenance(optimized, original.sha256, request.recipe.sha256)
        for record in records:
            warnings.extend(record.warnings)
        optimized_source = session_source(optimized, workdir, "measured")
        if isinstance(optimized_source, str):  # written out: keep references to that file, not a copy in memory
            optimized = adopt_model(Path(optimized_source), rename=False)
        models = {
            "original": ModelSource(original_source, original.size_bytes, original_outputs),
            "optimized": ModelSource(
                optimized_source, serialized_size(optimized), [o.name for o in optimized.graph.output]
            ),
        }
        measurements = [_measure_on(p, models, dataset, specs, recipe, batch, progress) for p in providers]
        if request.profile:
            measurements = [_with_profile(m, models, dataset, batch, workdir, progress) for m in measurements]
        for m in measurements:
            if not m.measured:
                progress.warn(f"{m.provider}: not measured — {m.reason}")
                warnings.append(f"{m.provider}: not measured — {m.reason}")
            elif not m.interleaved:
                warnings.append(f"{m.provider}: latency timed {timing_order(m)}")
        if not any(m.measured for m in measurements) and not request.allow_unmeasured:
            reasons = "; ".join(f"{m.provider}: {m.reason}" for m in measurements)
            raise OptcError(
                f"measured on none of the providers asked for ({reasons}); nothing was written",
                hint="use --providers cpu, or --allow-unmeasured to write the model without figures",
            )
        mismatch = target_mismatch(target, cpu, [m.provider for m in measurements if m.measured])
        if mismatch:
            progress.warn(mismatch)
            warnings.append(mismatch)

        gates, sources = effective_gates(recipe, request.gate_overrides)
        size_ratio = serialized_size(optimized) / original.size_bytes
        gate_results = evaluate_gates(gates, size_ratio, measurements, records, sources, dataset.synthetic)
        gates_passed = all(g.passed for g in gate_results)
        report = Report(
            optc_version=optc.__version__,
            recipe=RecipeInfo(source=request.recipe.source, name=recipe.name, sha256=request.recipe.sha256),
            original=original,
            optimized=ModelInfo(
                path=str(request.output_path),
                size_bytes=serialized_size(optimized),
                parameters=parameter_count(optimized),
                nodes=node_count(optimized),
            ),
            size_ratio=size_ratio,
            passes=records,
            data=dataset.source,
            measurements=measurements,
            gates=gate_results,
            gates_passed=gates_passed,
            warnings=warnings,
            environment=current_environment(),
            target=TargetInfo(requested=requested_target, name=target, measured_on=cpu.isa, warning=mismatch),
        )
        destination = _destination(outputs, rejected_outputs, gates_passed, request.on_gate_failure)
        if destination is None:
            return CompressResult(report=report, written=None, rejected=True)
        with progress.stage(f"writing {destination.model}"), staged_outputs() as staging:
            data_file = staging.path_for(destination.external_data)
            model_file = staging.path_for(destination.model)
            written = write_model(optimized, model_file)
            report.optimized.path = str(destination.model)
            report.optimized.size_bytes = sum(p.stat().st_size for p in written)
            report.optimized.sha256 = sha256_of_files([model_file, *([data_file] if data_file in written else [])])
            report.size_ratio = report.optimized.size_bytes / original.size_bytes
            for path, text in (
                (destination.report_json, report.model_dump_json(indent=2) + "\n"),
                (destination.report_md, render_markdown(report)),
                (destination.report_html, render_html(report)),
            ):
                write_file(staging.path_for(path), text.encode("utf-8"))
        return CompressResult(report=report, written=destination, rejected=not gates_passed)


def _destination(
    outputs: OutputSet, rejected: OutputSet, gates_passed: bool, policy: GateFailurePolicy
) -> OutputSet | None:
    if gates_passed or policy == "write":
        return outputs
    return rejected if policy == "rejected" else None


def _data_paths(request: CompressRequest) -> list[tuple[str, Path]]:
    """Every data file or folder the run will read, with the option or recipe field that named it."""
    recipe = request.recipe.recipe
    found: list[tuple[str, Path]] = []
    if request.data_path is not None:
        found.append(("--data", request.data_path))
    elif recipe.evaluate.data is not None:
        found.append(("evaluate.data", request.recipe.resolve(recipe.evaluate.data)))
    if request.calibration_data is not None:
        found.append(("--calibration-data", request.calibration_data))
        return found
    for index, config in enumerate(recipe.passes):
        for field_path, path in config.data_files().items():
            found.append((f"passes[{index}].{field_path}", request.recipe.resolve(path)))
    return found


def _refuse_unmeasurable(providers: list[str], allow_unmeasured: bool) -> None:
    reasons = {p: unavailable_reason(p) for p in providers}
    if all(reasons.values()) and not allow_unmeasured:
        raise OptcError(
            "none of the providers asked for can be used here: "
            + "; ".join(f"{p}: {reason}" for p, reason in reasons.items()),
            hint="use --providers cpu, or --allow-unmeasured to write the model without figures",
        )


def _evaluation_data(request, specs, model, warnings: list[str], progress: Progress) -> Dataset:
    evaluate_settings = request.recipe.recipe.evaluate
    path = request.data_path
    role = "--data"
    if path is None and evaluate_settings.data is not None:
        path, role = request.recipe.resolve(evaluate_settings.data), "evaluate.data"
    if path is not None:
        return load_dataset(path, specs, evaluate_settings.samples, role=role)
    refuse_guessed_image_sizes(specs, request.input_shapes)
    dataset = synthetic_dataset(model, specs, request.seed, request.input_shapes)
    messages = ["no evaluation data given: accuracy is fidelity to the original on seeded synthetic inputs"]
    if dataset.assumed:
        sized = ", ".join(f"{name}={size}" for name, size in dataset.assumed.items())
        messages.append(f"symbolic dims of the synthetic inputs set by default: {sized} (choose with --input-shape)")
    for message in messages:
        progress.warn(message)
        warnings.append(message)
    return dataset


def _synthetic_feed_hint(feed: dict[str, np.ndarray]) -> str:
    """What optc fed a model that would not run on it, and how to give it what it takes instead."""

    def described(name: str, value: np.ndarray) -> str:
        return f"{name} {value.dtype}{list(value.shape)}" + (f" = {value.item()}" if value.size == 1 else "")

    shown = ", ".join(described(name, value) for name, value in feed.items())
    return (
        f"it ran on synthetic inputs ({shown}), whose sizes and values may not be ones this model takes: give real "
        "inputs with --data, or the sizes of its symbolic dims with --input-shape NAME=DIMS"
    )


def _measure_on(
    provider: str, models: dict[str, ModelSource], dataset, specs, recipe, batch, progress
) -> ProviderMeasurement:
    latency = recipe.evaluate.latency
    base = {"provider": provider, "batch_size": batch, "threads": latency.threads, "warmup": latency.warmup}
    settings = LatencySettings(latency.threads, latency.warmup, latency.runs, latency.min_time_s)
    with progress.stage(f"{provider}: accuracy on {len(dataset)} samples and latency, {latency.threads} thread(s)"):
        result = measure_pair(provider, models, dataset, specs, recipe.evaluate.metric, batch, settings)
    if isinstance(result, Unavailable):
        return ProviderMeasurement(measured=False, reason=result.reason, **base)
    before, after = result.latency["original"], result.latency["optimized"]
    speedup = before.p50_ms / after.p50_ms
    accuracy = result.accuracy
    progress.done(
        f"{provider}: p50 {before.p50_ms:.3f} → {after.p50_ms:.3f} ms ({speed_change(speedup)}), "
        f"{accuracy.metric} {accuracy.original:.2f} → {accuracy.optimized:.2f}"
    )
    return ProviderMeasurement(
        measured=True,
        original=before,
        optimized=after,
        speedup=speedup,
        accuracy=accuracy,
        decoder=result.decoder,
        interleaved=result.interleaved,
        **base,
    )


def _with_profile(m, models: dict[str, ModelSource], dataset, batch, workdir, progress) -> ProviderMeasurement:
    """``m`` with the per-op-type profile of both models, on sessions of their own (profiling slows every run)."""
    if not m.measured:
        return m
    feed = dataset.first_batch(batch)
    profiles = {}
    with progress.stage(f"{m.provider}: profiling per op type"):
        for label, model in models.items():
            profiles[label] = profile_op_types(model.source, m.provider, m.threads, feed, workdir, label)
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
