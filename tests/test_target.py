"""Targets: CPU feature detection, the int8 defaults table, and the report saying where figures were measured.

Target-specific choices are tested with injected CPU features, so these tests mean the same on every machine.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from onnx import numpy_helper

import optc.compress
from optc.cli.app import app
from optc.data import Dataset
from optc.passes.quantize import QuantizeConfig, run_quantize
from optc.passes.quantize_defaults import INT8_DEFAULTS
from optc.passes.registry import PassContext
from optc.target import TARGETS, CpuFeatures, parse_cpuinfo, resolve_target, target_mismatch
from tests.conftest import CNN, CNN_TEST, mlp_model, report_of

X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
"""


def cpu(*flags: str, arch: str = "x86_64") -> CpuFeatures:
    return CpuFeatures(arch=arch, model="test CPU", flags=frozenset(flags))


def test_cpuinfo_flags_are_read_for_x86_and_arm64():
    x86 = parse_cpuinfo(X86_CPUINFO, "x86_64")
    assert x86.model == "AMD EPYC 9R14"
    assert x86.flags == {"avx2", "avx512f", "avx512bw", "avx512_vnni"}  # only the int8-relevant ones are kept
    arm = parse_cpuinfo(ARM_CPUINFO, "aarch64", fallback_model="Neoverse")
    assert arm.flags == {"asimddp"} and arm.model == "Neoverse" and arm.isa == "arm64"


@pytest.mark.parametrize(
    ("flags", "arch", "isa"),
    [
        (("avx2", "avx512f", "avx512_vnni"), "x86_64", "x86-vnni"),
        (("avx2", "avx_vnni"), "x86_64", "x86-vnni"),  # Alder Lake and later: VNNI without AVX-512
        (("avx2", "avx512f", "amx_int8"), "x86_64", "x86-vnni"),
        (("avx2", "avx512f", "avx512bw"), "x86_64", "x86-avx512"),
        (("avx2",), "x86_64", "x86-avx2"),
        ((), "x86_64", "portable"),
        (("asimddp",), "aarch64", "arm64"),
        ((), "riscv64", "portable"),
    ],
)
def test_isa_level_follows_the_dot_product_instructions(flags, arch, isa):
    assert cpu(*flags, arch=arch).isa == isa


def test_auto_resolves_to_the_running_cpu_and_names_stand_for_themselves():
    assert resolve_target("auto", cpu("avx2")) == "x86-avx2"
    assert resolve_target("x86-vnni", cpu("avx2")) == "x86-vnni"
    assert set(INT8_DEFAULTS) == set(TARGETS) - {"auto"}


def test_mismatch_is_reported_only_when_the_measuring_cpu_is_not_the_target():
    assert target_mismatch("x86-avx2", cpu("avx2"), ["cpu"]) is None
    assert target_mismatch("portable", cpu("avx2"), ["cpu"]) is None
    warning = target_mismatch("x86-vnni", cpu("avx2"), ["cpu"])
    assert "measured on x86-avx2" in warning and "target x86-vnni" in warning
    assert "GPU" in target_mismatch("cuda", cpu("avx2"), ["cpu"])
    assert target_mismatch("cuda", cpu("avx2"), ["cpu", "cuda"]) is None


def context(tmp_path: Path, target: str) -> PassContext:
    x = np.random.default_rng(0).standard_normal((32, 16)).astype(np.float32)
    return PassContext(
        label="passes[0] quantize",
        workdir=tmp_path,
        seed=0,
        dataset=Dataset(inputs={"x": x}, labels=None, source="test"),
        sample_inputs=[{"x": x[:4]}],
        target=target,
    )


def weight_codes(model, op_type: str) -> list[np.ndarray]:
    """The integer weights a quantized model stores (int8 initializers read by DequantizeLinear / MatMulInteger)."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return [
        inits[name]
        for node in model.graph.node
        if node.op_type == op_type
        for name in node.input
        if name in inits and inits[name].dtype == np.int8 and inits[name].ndim == 2
    ]


@pytest.mark.parametrize("mode", ["static", "dynamic"])
@pytest.mark.parametrize(("target", "seven_bit"), [("x86-avx2", True), ("x86-avx512", True), ("x86-vnni", False)])
def test_weights_are_seven_bit_only_where_int8_sums_can_saturate(tmp_path, mode, target, seven_bit):
    outcome = run_quantize(mlp_model(), QuantizeConfig(type="quantize", mode=mode), context(tmp_path, target))
    assert outcome.details["reduce_range"] is seven_bit
    assert outcome.details["target"]["target"] == target
    codes = weight_codes(outcome.model, "DequantizeLinear" if mode == "static" else "MatMulInteger")
    assert codes
    largest = max(int(np.abs(c.astype(np.int32)).max()) for c in codes)
    assert (largest <= 64) is seven_bit


def test_arm64_and_cuda_get_int8_activations(tmp_path):
    for target in ("arm64", "cuda"):
        outcome = run_quantize(mlp_model(), QuantizeConfig(type="quantize", mode="static"), context(tmp_path, target))
        assert outcome.details["activation_type"] == "int8"


def test_a_field_the_recipe_sets_wins_over_the_target(tmp_path):
    config = QuantizeConfig(type="quantize", mode="static", reduce_range=False, activation_type="int8")
    outcome = run_quantize(mlp_model(), config, context(tmp_path, "x86-avx2"))
    assert outcome.details["reduce_range"] is False and outcome.details["activation_type"] == "int8"
    assert "reduce_range" not in outcome.details["target"]["from_target"]
    assert "weight_type" in outcome.details["target"]["from_target"]


def compress_json(runner, tmp_path: Path, *extra: str) -> tuple[int, dict]:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\npasses:\n  - type: quantize\n    mode: dynamic\n"
        "evaluate:\n  latency: {warmup: 1, runs: 2, min_time_s: 0}\n"
    )
    args = ["compress", str(CNN), "-r", str(recipe), "-o", str(tmp_path / "o.onnx"), "--data", str(CNN_TEST)]
    result = runner.invoke(app, [*args, "--json", *extra])
    return result.exit_code, json.loads(result.stdout)


def test_report_names_target_and_measuring_cpu_and_warns_when_they_differ(runner, tmp_path, monkeypatch):
    monkeypatch.setattr(optc.compress, "detect_cpu", lambda: cpu("avx2"))
    code, payload = compress_json(runner, tmp_path, "--target", "x86-vnni")
    assert code == 0
    report = payload["report"]
    assert report["target"]["name"] == "x86-vnni" and report["target"]["measured_on"] == "x86-avx2"
    assert "latency and accuracy will differ" in report["target"]["warning"]
    assert any("target x86-vnni" in w for w in report["warnings"])
    assert report["environment"]["cpu_isa"]  # the real CPU of this machine, whatever it is
    assert "target: x86-vnni" in report_of(tmp_path / "o.onnx", ".md").read_text()


def test_auto_target_is_the_measuring_cpu_and_gives_no_warning(runner, tmp_path, monkeypatch):
    monkeypatch.setattr(optc.compress, "detect_cpu", lambda: cpu("avx2", "avx512f", "avx512_vnni"))
    code, payload = compress_json(runner, tmp_path)
    assert code == 0
    assert payload["report"]["target"] == {
        "requested": "auto",
        "name": "x86-vnni",
        "measured_on": "x86-vnni",
        "warning": None,
    }
    assert payload["report"]["passes"][0]["details"]["reduce_range"] is False


def test_unknown_target_in_a_recipe_is_refused_naming_the_field(runner, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\ntarget: x86-sse\npasses:\n  - type: quantize\n    mode: dynamic\n")
    result = runner.invoke(app, ["compress", str(CNN), "-r", str(recipe), "-o", str(tmp_path / "o.onnx")])
    assert result.exit_code == 2
    assert "target" in result.stderr and "x86-vnni" in result.stderr
    assert not (tmp_path / "o.onnx").exists()
