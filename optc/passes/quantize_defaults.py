"""Int8 defaults per target: the settings a recipe leaves unset are filled from this table.

The figures behind each row are in the README ("Targets") and bench/RESULTS.md. In short, on ONNX Runtime's x86 CPU
kernels uint8 activations with int8 weights (u8s8) are several times faster than int8 activations (s8s8) or uint8
weights (u8u8); without VNNI, u8s8 sums pairs of products in 16 bits and saturates, which 7-bit weights
(``reduce_range``) prevent at no cost in speed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from optc.passes.quantize import QuantizeConfig


@dataclass(frozen=True)
class Int8Defaults:
    activation_type: Literal["uint8", "int8"]
    weight_type: Literal["int8", "uint8"]
    per_channel: bool
    reduce_range: bool
    activation_symmetric: bool
    why: str


_NO_VNNI = Int8Defaults(
    "uint8",
    "int8",
    per_channel=True,
    reduce_range=True,
    activation_symmetric=False,
    why="without VNNI, u8×s8 products are summed in pairs in 16 bits and saturate; 7-bit weights cannot saturate "
    "and run as fast",
)

INT8_DEFAULTS: dict[str, Int8Defaults] = {
    "x86-vnni": Int8Defaults(
        "uint8",
        "int8",
        per_channel=True,
        reduce_range=False,
        activation_symmetric=False,
        why="VNNI sums u8×s8 products in 32 bits: full 8-bit weights on the fastest kernels",
    ),
    "x86-avx512": _NO_VNNI,
    "x86-avx2": _NO_VNNI,
    "portable": Int8Defaults(
        "uint8",
        "int8",
        per_channel=True,
        reduce_range=True,
        activation_symmetric=False,
        why="accurate on every CPU: 7-bit weights cannot saturate 16-bit sums on x86 without VNNI, and u8s8 runs "
        "on the fast kernels of every x86 and arm64 CPU",
    ),
    "arm64": Int8Defaults(
        "int8",
        "int8",
        per_channel=True,
        reduce_range=False,
        activation_symmetric=False,
        why="arm64 dot-product kernels sum in 32 bits; ONNX Runtime recommends s8s8 there (not measured by optc)",
    ),
    "cuda": Int8Defaults(
        "int8",
        "int8",
        per_channel=True,
        reduce_range=False,
        activation_symmetric=True,
        why="ONNX Runtime's GPU int8 path (TensorRT) takes QDQ with symmetric int8 activations and weights "
        "(not measured by optc)",
    ),
}
TARGET_FIELDS = ("activation_type", "weight_type", "per_channel", "reduce_range", "activation_symmetric")


def with_target_defaults(config: QuantizeConfig, target: str) -> tuple[QuantizeConfig, dict]:
    """``config`` with its unset int8 settings taken from ``target``'s row, and a record of what came from where."""
    row = asdict(INT8_DEFAULTS[target])
    filled = {name: row[name] for name in TARGET_FIELDS if getattr(config, name) is None}
    record = {"target": target, "from_target": sorted(filled), "why": row["why"]} if filled else {"target": target}
    return config.model_copy(update=filled), record
