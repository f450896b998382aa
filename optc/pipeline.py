"""Run a recipe's passes in order, verifying each result and recording what it did."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import Any

import onnx
from pydantic import BaseModel

from optc.errors import NotApplicable, OptcError, PassError
from optc.messages import exception_reason
from optc.model_facts import node_count
from optc.modelio import serialized_size, too_large_to_serialize
from optc.passes import PassConfig, PassContext, PassOutcome, describe, lookup
from optc.progress import Progress
from optc.report.format import human_bytes
from optc.tensors import has_lazy_tensors, materialize
from optc.verify import verify_model


class PassRecord(BaseModel):
    index: int
    type: str
    label: str
    wall_s: float
    size_before: int
    size_after: int
    nodes_before: int
    nodes_after: int
    details: dict[str, Any]
    warnings: list[str]
    calibrated_on: str | None = None  # a path, or "synthetic"; None for passes that do not calibrate
    skipped: str | None = None  # why an optional pass was left out; it changed nothing


def run_passes(
    model: onnx.ModelProto,
    passes: list[PassConfig],
    base_context: PassContext,
    progress: Progress,
    finite_outputs: set[str],
) -> tuple[onnx.ModelProto, list[PassRecord]]:
    """Run ``passes`` in order; ``base_context`` is copied for each pass with that pass's label. An optional pass
    that finds it can do nothing for the model (``NotApplicable``) is recorded as skipped; where the skipped ones
    leave no pass that compresses the model (only fusion ran), the recipe does not apply to it and is refused.

    ``finite_outputs`` are the input model's outputs that were finite on the sample inputs (NaN/Inf appearing in
    them after a pass fails that pass).
    """
    workdir = base_context.workdir
    feed = base_context.sample_inputs[0] if base_context.sample_inputs else None
    records = []
    # What each pass is compared with; a pass's "after" is the next one's "before", so each is computed once.
    size, nodes, digest = serialized_size(model), node_count(model), _digest(model)
    first = model
    for index, config in enumerate(passes):
        config.refuse_input(model, f"passes[{index}] {describe(config)}")
    skipped: list[NotApplicable] = []
    for index, config in enumerate(passes):
        label = f"passes[{index}] {describe(config)}"
        registered = lookup(config.type)
        context = dataclasses.replace(base_context, label=label, pipeline_input=first)
        with progress.stage(f"{label}"):
            if not config.reads_lazy_weights() and has_lazy_tensors(model):
                materialize(model)
            started = time.perf_counter()
            skip: NotApplicable | None = None
            try:
                outcome = registered.run(model, config, context)
            except NotApplicable as exc:
                if not config.optional:
                    raise
                skip = exc
                outcome = PassOutcome(model=model, warnings=[f"{label} skipped (optional): {exc.reason}"])
            except OptcError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure inside a pass is that pass's failure
                raise PassError(label, f"failed: {type(exc).__name__}: {exception_reason(exc)}") from exc
            wall = time.perf_counter() - started
            if skip is None:
                verify_model(outcome.model, label, workdir, feed, finite_outputs)
        warnings = list(outcome.warnings)
        size_before, nodes_before, digest_before = size, nodes, digest
        if skip is None:
            model = outcome.model
            size, nodes, digest = serialized_size(model), node_count(model), _digest(model)
            if digest_before is not None and digest == digest_before:
                warnings.append(f"{label} left the model unchanged")
        else:
            skipped.append(skip)
        record = PassRecord(
            index=index,
            type=config.type,
            label=label,
            wall_s=wall,
            size_before=size_before,
            size_after=size,
            nodes_before=nodes_before,
            nodes_after=nodes,
            details=outcome.details,
            warnings=warnings,
            calibrated_on=outcome.calibrated_on,
            skipped=skip.reason if skip else None,
        )
        records.append(record)
        if skip is None:
            progress.done(
                f"{label}: {record.nodes_before}→{record.nodes_after} nodes, "
                f"{human_bytes(record.size_before)}→{human_bytes(record.size_after)} in {wall:.2f} s"
            )
        for warning in warnings:
            progress.warn(warning)
    ran = [config for config, record in zip(passes, records, strict=True) if record.skipped is None]
    if skipped and not any(config.compresses() for config in ran):
        raise NotApplicable(
            "recipe",
            "none of its optional passes can do anything for this model: " + "; ".join(e.message for e in skipped),
            hint=skipped[0].hint,
        )
    return _without_added_value_info(model, first), records


def _without_added_value_info(model: onnx.ModelProto, original: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` without the ``value_info`` that passes added (the transformer fusion's and ONNX Runtime's symbolic
    shape inference fill it for every tensor, so that later passes can type them). With every shape known, ONNX
    Runtime fuses Add + LayerNormalization into SkipLayerNormalization when it loads the model, and that CPU kernel is
    a scalar loop, 6x slower than the two ops: bert-int8 ran a MiniLM at 1.99x fp32 with it, 2.45x without. What the
    input model declared stays."""
    declared = {v.name for v in original.graph.value_info}
    kept = [v for v in model.graph.value_info if v.name in declared]
    if len(kept) < len(model.graph.value_info):
        del model.graph.value_info[:]
        model.graph.value_info.extend(kept)
    return model


def _digest(model: onnx.ModelProto) -> str | None:
    """A fingerprint to tell whether a pass changed anything; None for models too large to serialize at once."""
    if too_large_to_serialize(model):
        return None
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()
