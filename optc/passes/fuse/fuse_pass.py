"""The ``fuse`` pass: transformer fusions (optional), the generic rewrites, ONNX Runtime's offline optimization
(optional), then the proof that the outputs did not move.

Transformer fusion runs first because ONNX Runtime's optimizer matches the exporter's patterns exactly, and the
generic rewrites would change them (merging the attention mask's two Unsqueezes, for one).
"""

from __future__ import annotations

from typing import Literal

import onnx
from pydantic import Field, model_validator

from optc.errors import PassError
from optc.model_facts import node_count
from optc.passes.fuse import rewrites  # noqa: F401  (registers the generic rewrites before the config reads them)
from optc.passes.fuse.driver import rewrites as registered_rewrites
from optc.passes.fuse.driver import simplify
from optc.passes.fuse.graph import is_standard
from optc.passes.fuse.ort_offline import optimize_offline
from optc.passes.fuse.proof import compare_outputs
from optc.passes.fuse.transformer import fuse_transformer
from optc.passes.registry import PassConfig, PassContext, PassOutcome, register

REWRITE_NAMES = tuple(registered_rewrites())
DEFAULT_TOLERANCE = 1e-4


class FuseConfig(PassConfig):
    type: Literal["fuse"]
    skip: list[Literal[REWRITE_NAMES]] = Field(  # type: ignore[valid-type]
        default_factory=list, description="Generic rewrites to leave out, by name."
    )
    transformer: Literal["bert", "gpt2", "auto"] | None = Field(
        default=None,
        description="Run ONNX Runtime's transformer optimizer (Attention, SkipLayerNormalization, Gelu fusions; "
        "for a CPU target without SkipLayerNormalization and BiasGelu, whose CPU kernels are slower than what they "
        "replace). auto: detect a BERT-like encoder and its heads and hidden size, and warn (fusing nothing) where "
        "there is none. The result needs ONNX Runtime.",
    )
    num_heads: int | None = Field(default=None, ge=1, description="Attention heads (transformer only).")
    hidden_size: int | None = Field(default=None, ge=1, description="Hidden size (transformer only).")
    embed_layer_norm: bool = Field(
        default=True,
        description="Fuse the embedding lookups and their LayerNorm into EmbedLayerNormalization (transformer only). "
        "Off keeps the Gathers, so dynamic int8 can store the embedding tables in int8 (bert-int8).",
    )
    ort_level: Literal["basic", "extended"] | None = Field(
        default=None,
        description="Also apply ONNX Runtime's offline graph optimizations. basic stays portable across execution "
        "providers; extended adds CPU-specific contrib ops.",
    )
    portable: bool = Field(default=False, description="Allow standard ONNX ops only in the result.")
    tolerance: float = Field(
        default=DEFAULT_TOLERANCE,
        gt=0,
        description="Largest allowed max |fused - original| per output, relative to the output's max |value|.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> FuseConfig:
        if self.portable and self.transformer:
            raise ValueError("portable: true excludes transformer fusion (it produces ONNX Runtime contrib ops)")
        if self.portable and self.ort_level == "extended":
            raise ValueError("portable: true excludes ort_level: extended (it produces ONNX Runtime contrib ops)")
        if (self.num_heads or self.hidden_size or "embed_layer_norm" in self.model_fields_set) and not self.transformer:
            raise ValueError(
                "num_heads, hidden_size and embed_layer_norm only apply with transformer: bert, gpt2 or auto"
            )
        if self.num_heads and self.hidden_size and self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        return self

    def reads_lazy_weights(self) -> bool:
        return True

    def compresses(self) -> bool:
        return False


@register(FuseConfig)
def run_fuse(model: onnx.ModelProto, config: FuseConfig, context: PassContext) -> PassOutcome:
    original = model
    details: dict = {"nodes_before": node_count(model), "skipped": list(config.skip)}
    fusions: list[dict] = []
    warnings: list[str] = []
    if config.transformer:
        for_cpu = context.target != "cuda"
        model, fused_ops, details["transformer"] = fuse_transformer(
            model,
            config.transformer,
            config.num_heads,
            config.hidden_size,
            config.embed_layer_norm,
            for_cpu,
            context.label,
            context.workdir,
        )
        fusions += [{"fusion": f"transformer: {op}", "applied": n} for op, n in fused_ops.items()]
        if "not_found" in details["transformer"]:
            warnings.append(
                f"{context.label}: {details['transformer']['not_found']}; if the model has one, set transformer: "
                "bert (or gpt2) with num_heads and hidden_size"
            )
        elif not for_cpu and not fused_ops.get("Attention"):
            warnings.append(f"{context.label}: ONNX Runtime's transformer optimizer fused no Attention block")
    model, counts = simplify(model, skip=config.skip)
    fusions += [{"fusion": name, "applied": n} for name, n in counts.items()]
    if config.ort_level:
        before = node_count(model)
        model = optimize_offline(model, config.ort_level, context.workdir)
        fusions.append({"fusion": f"ort_level: {config.ort_level}", "applied": before - node_count(model)})
    _check_outputs_kept(original, model, context.label)
    checks, samples = compare_outputs(original, model, context.dataset, context.workdir, config.tolerance)
    moved = [c for c in checks if c.moved]
    if moved:
        fired = [row["fusion"] for row in fusions if row["applied"]]
        raise PassError(
            context.label,
            "the fused model's output(s) moved beyond the tolerance: "
            + "; ".join(
                f"{c.output} (max |diff| {c.max_abs_diff:.3g} > allowed {c.allowed:.3g}"
                + (f"; ONNX Runtime's own optimizations move it {c.noise:.3g})" if c.noise is not None else ")")
                for c in moved
            ),
            hint=f"fusions that applied: {', '.join(fired) or 'none'}; leave one out with skip: [NAME] to find it",
        )
    new_ops = _non_standard_ops(model) - _non_standard_ops(original)
    if new_ops:
        warnings.append(
            f"{context.label}: the result needs ONNX Runtime: it uses contrib op(s) {', '.join(sorted(new_ops))}"
        )
    details.update(
        fusions=fusions,
        nodes_after=node_count(model),
        needs_onnxruntime=bool(new_ops),
        contrib_ops=sorted(new_ops),
        tolerance=config.tolerance,
        proof_samples=samples,
        proof_data=context.dataset.source,
        proof=[c.as_row() for c in checks],
    )
    return PassOutcome(model=model, details=details, warnings=warnings)


def _check_outputs_kept(original: onnx.ModelProto, fused: onnx.ModelProto, label: str) -> None:
    lost = [o.name for o in original.graph.output if o.name not in {f.name for f in fused.graph.output}]
    if lost:
        raise PassError(label, f"the fused model lost graph output(s) {', '.join(lost)}")


def _non_standard_ops(model: onnx.ModelProto) -> set[str]:
    return {f"{n.domain}.{n.op_type}" for n in model.graph.node if not is_standard(n)}
