"""Quantization: optc's static int8 against ONNX Runtime's ``quantize_static`` with default arguments, the format and
type choices behind optc's defaults, calibration memory, dynamic int8 on a BERT-shaped encoder, and fp16."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_dynamic, quantize_static

from optc.passes.ort_tools import quiet_root_logger
from optc.recipe import builtin_recipe_text
from optc.target import detect_cpu

from harness import ROOT, latency_table, optc_compress, session
from models import CACHE, bert_inputs, cached, resnet_images

TITLE = "Quantization"
SAMPLES = ROOT / "sample_models"
FAST_EVAL = "evaluate:\n  latency: {warmup: 1, runs: 3, min_time_s: 0}\n"


class ArrayReader(CalibrationDataReader):
    """ONNX Runtime's calibration reader over in-memory arrays, one sample per feed (as its examples do)."""

    def __init__(self, inputs: dict[str, np.ndarray]) -> None:
        count = len(next(iter(inputs.values())))
        self.feeds = iter([{k: v[i : i + 1] for k, v in inputs.items()} for i in range(count)])

    def get_next(self):
        return next(self.feeds, None)


def ort_default_int8(model: Path, calibration: dict[str, np.ndarray], out: Path) -> Path:
    with quiet_root_logger():
        quantize_static(str(model), str(out), ArrayReader(calibration))
    return out


def ort_variant(model: Path, calibration: dict[str, np.ndarray], out: Path, **options) -> Path:
    with quiet_root_logger():
        quantize_static(str(model), str(out), ArrayReader(calibration), **options)
    return out


def outputs(path: Path, feed: dict[str, np.ndarray], batch: int = 32) -> np.ndarray:
    s = session(path)
    count = len(next(iter(feed.values())))
    return np.concatenate(
        [s.run(None, {k: v[i : i + batch] for k, v in feed.items()})[0] for i in range(0, count, batch)]
    )


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def fast_recipe(folder: Path, passes: str, name: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(f"version: 1\npasses:\n{passes}{FAST_EVAL}")
    return path


def latency_rows(paths: dict[str, Path], feeds: dict[int, dict[str, np.ndarray]]) -> list[str]:
    rows = []
    for batch, feed in feeds.items():
        stats = latency_table(paths, feed, runs=10 if batch > 1 else 30, warmup=2, min_time_s=2.0 if batch > 1 else 3.0)
        fp32 = stats["fp32"].p50_ms
        cells = " | ".join(f"{s.p50_ms:.2f} ms (p90 {s.p90_ms:.2f}, {fp32 / s.p50_ms:.2f}×)" for s in stats.values())
        rows.append(f"| batch {batch} | {cells} |")
    return rows


def cnn_section(tmp: Path) -> list[str]:
    model = SAMPLES / "digits_cnn.onnx"
    calib = dict(np.load(SAMPLES / "digits_calib.npz"))
    test = dict(np.load(SAMPLES / "digits_test.npz"))
    labels = test.pop("labels")
    ort_path = ort_default_int8(model, calib, tmp / "cnn_ort.onnx")
    run, payload = optc_compress(
        model,
        "int8",
        tmp / "cnn_optc.onnx",
        "--calibration-data",
        str(SAMPLES / "digits_calib.npz"),
        "--data",
        str(SAMPLES / "digits_test.npz"),
    )
    paths = {"fp32": model, "ORT default int8": ort_path, "optc int8": tmp / "cnn_optc.onnx"}
    top1 = {k: 100 * float(np.mean(outputs(p, test).argmax(1) == labels)) for k, p in paths.items()}
    sizes = {k: p.stat().st_size / model.stat().st_size for k, p in paths.items()}
    lines = [
        "### Sample CNN (digits_cnn.onnx, 200 calibration samples, 360 labelled test samples)",
        "",
        "| | " + " | ".join(paths) + " |",
        "|---|" + "---:|" * len(paths),
        *latency_rows(paths, {1: {"input": test["input"][:1]}, 32: {"input": test["input"][:32]}}),
        "| size ratio | " + " | ".join(f"{v:.3f}" for v in sizes.values()) + " |",
        "| top-1 | " + " | ".join(f"{v:.2f} %" for v in top1.values()) + " |",
        "",
        f"optc compress: {run.wall_s:.1f} s wall, peak RSS {run.peak_rss_mb:.0f} MB (exit {run.returncode}). "
        f"Top-1 drop optc vs fp32: **{top1['fp32'] - top1['optc int8']:.2f} points** (target ≤ 0.5).",
        "",
    ]
    if "error" in payload:
        lines.append(f"optc failed: {payload['error']}")
    return lines


def resnet_section(tmp: Path) -> list[str]:
    model = cached("resnet18")
    calib_images = resnet_images(100, seed=11)
    np.savez(tmp / "resnet_calib.npz", images=calib_images)
    np.savez(tmp / "resnet_eval.npz", images=resnet_images(64, seed=12))
    ort_path = ort_default_int8(model, {"images": calib_images}, tmp / "resnet_ort.onnx")
    data_args = ("--calibration-data", str(tmp / "resnet_calib.npz"), "--data", str(tmp / "resnet_eval.npz"))
    run, payload = optc_compress(model, "int8", tmp / "resnet_optc.onnx", *data_args)
    mismatched_target = "x86-vnni" if detect_cpu().isa != "x86-vnni" else "x86-avx2"
    # Seeded random weights: fully quantized, this net stays under the built-in recipe's 0.99 cosine target, so its
    # search keeps most Convs in float; the same recipe without that target shows what the int8 kernels do.
    untargeted = tmp / "int8-no-target.yaml"
    untargeted.write_text(builtin_recipe_text("int8").replace("    min_cosine: 0.99", "    # no target"))
    gate_off = (*data_args, "--min-cosine", "-1")
    optc_compress(model, untargeted, tmp / "resnet_untargeted.onnx", *gate_off)
    optc_compress(model, untargeted, tmp / "resnet_other.onnx", *gate_off, "--target", mismatched_target)
    evaluation = {"images": resnet_images(64, seed=12)}
    paths = {
        "fp32": model,
        "ORT default int8": ort_path,
        "optc int8": tmp / "resnet_optc.onnx",
        "optc int8 without min_cosine": tmp / "resnet_untargeted.onnx",
        f"optc int8 without min_cosine, --target {mismatched_target}": tmp / "resnet_other.onnx",
    }
    reference = outputs(model, evaluation)
    fidelity = {}
    for name, path in paths.items():
        got = outputs(path, evaluation)
        fidelity[name] = (cosine(reference, got), 100 * float(np.mean(got.argmax(1) == reference.argmax(1))))
    feeds = {1: {"images": evaluation["images"][:1]}, 32: {"images": resnet_images(32, seed=13)}}
    sizes = {k: p.stat().st_size / model.stat().st_size for k, p in paths.items()}
    main_rows = latency_rows(paths, feeds)
    speedup = _speedup_at(main_rows[-1], list(paths).index("optc int8 without min_cosine"))
    versus_ort = _speedup_at(main_rows[-1], 1) / speedup
    lines = [
        "### ResNet-18-shaped network, 224×224, seeded weights (100 calibration images, 64 evaluation images)",
        "",
        f"Latency cells: p50 (p90, speed-up over fp32). `optc int8` is the built-in recipe for this CPU "
        f"({detect_cpu().isa}): on these seeded random weights full int8 stays under its 0.99 cosine target, so its "
        "search keeps most Convs in float (and warns that the model will run about as fast as before). The next "
        "column is the same recipe without that target (and the gate off), the last one that compressed for "
        f"{mismatched_target}, measured here.",
        "",
        "| | " + " | ".join(paths) + " |",
        "|---|" + "---:|" * len(paths),
        *main_rows,
        "| size ratio | " + " | ".join(f"{v:.3f}" for v in sizes.values()) + " |",
        "| logits cosine vs fp32 | " + " | ".join(f"{c:.4f}" for c, _ in fidelity.values()) + " |",
        "| top-1 agreement vs fp32 | " + " | ".join(f"{a:.1f} %" for _, a in fidelity.values()) + " |",
        "",
        f"optc compress (100 calibration images): {run.wall_s:.1f} s wall, peak RSS {run.peak_rss_mb:.0f} MB "
        f"(exit {run.returncode}). Batch 32: optc int8 without min_cosine **{speedup:.2f}×** fp32, latency "
        f"**{versus_ort:.2f}×** that of ONNX Runtime's quantize_static defaults.",
        "",
        *choices_section(tmp, model, calib_images[:16], feeds[32], evaluation),
    ]
    if "error" in payload:
        lines.append(f"optc failed: {payload['error']}")
    return lines


def _speedup_at(row: str, column: int) -> float:
    """The speed-up figure of one cell of a latency row written by ``latency_rows``."""
    cell = row.split("|")[2 + column]
    return float(cell.rsplit(",", 1)[1].strip(" ×)"))


# The int8 type choices behind optc's target table: (activation, weight, per_channel, reduce_range).
CHOICES = {
    "s8s8 (ORT's default types)": dict(per_channel=True),
    "u8s8": dict(per_channel=True, activation_type=QuantType.QUInt8),
    "u8s8 reduce_range": dict(per_channel=True, activation_type=QuantType.QUInt8, reduce_range=True),
    "u8u8": dict(per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QUInt8),
    "u8s8 per-tensor": dict(activation_type=QuantType.QUInt8),
}


def choices_section(tmp: Path, model: Path, calibration, feed, evaluation) -> list[str]:
    """Each type choice on the ResNet (speed and logits fidelity) and on an MLP whose large int8 weights and
    activations saturate 16-bit sums on CPUs without VNNI (relative output error)."""
    from onnxruntime.quantization import quant_pre_process

    pre = tmp / "resnet_pre.onnx"
    with quiet_root_logger():
        quant_pre_process(str(model), str(pre))
    probe = saturation_probe(tmp)
    paths = {"fp32": model}
    probe_errors = {"fp32": 0.0}
    for i, (name, options) in enumerate(CHOICES.items()):
        paths[name] = ort_variant(pre, {"images": calibration}, tmp / f"choice{i}.onnx", **options)
        probe_errors[name] = probe(options)
    reference = outputs(model, evaluation)
    cosines = [cosine(reference, outputs(p, evaluation)) for p in paths.values()]
    return [
        "**Type choices behind the target table** (ONNX Runtime quantize_static on the pre-processed model, QDQ, "
        "16 calibration images; batch 32, interleaved):",
        "",
        "| | " + " | ".join(paths) + " |",
        "|---|" + "---:|" * len(paths),
        *latency_rows(paths, {32: feed}),
        "| ResNet logits cosine vs fp32 | " + " | ".join(f"{c:.4f}" for c in cosines) + " |",
        "| MLP saturation probe: relative output error | "
        + " | ".join(f"{e:.4f}" for e in probe_errors.values())
        + " |",
        "",
        "The probe is a 16→256→10 MLP with unit-variance weights and inputs, where pairs of u8×s8 products exceed "
        "the 16-bit sums of `vpmaddubsw` (CPUs without VNNI) unless weights are 7-bit.",
        "",
    ]


def saturation_probe(tmp: Path):
    """A function from quantize_static options to the relative output error on the probe MLP."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((16, 256)).astype(np.float32), rng.standard_normal(256).astype(np.float32)
    w2, b2 = rng.standard_normal((256, 10)).astype(np.float32), rng.standard_normal(10).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["h2"]),
        helper.make_node("Relu", ["h2"], ["h3"]),
        helper.make_node("MatMul", ["h3", "w2"], ["h4"]),
        helper.make_node("Add", ["h4", "b2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])],
        [numpy_helper.from_array(v, k) for k, v in {"w1": w1, "b1": b1, "w2": w2, "b2": b2}.items()],
    )
    model = tmp / "probe.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    x = rng.standard_normal((64, 16)).astype(np.float32)
    reference = session(model).run(None, {"x": x})[0]

    def error(options: dict) -> float:
        out = ort_variant(model, {"x": x}, tmp / "probe_q.onnx", **options)
        got = session(out).run(None, {"x": x})[0]
        return float(np.linalg.norm(got - reference) / np.linalg.norm(reference))

    return error


def memory_section(tmp: Path) -> list[str]:
    """Peak RSS of optc compress calibrating on 100 vs 1000 samples (a folder of .npy files, memory-mapped)."""
    model = cached("resnet18")
    recipe = fast_recipe(tmp, "  - type: quantize\n    mode: static\n", "int8_fast")
    np.savez(tmp / "mem_eval.npz", images=resnet_images(4, seed=21))
    runs = {}
    for count in (100, 1000):
        folder = CACHE / f"resnet_calib_{count}"
        if not (folder / "images.npy").exists():
            folder.mkdir(exist_ok=True)
            np.save(folder / "images.npy", resnet_images(count, seed=20))
        runs[count], _ = optc_compress(
            model,
            recipe,
            tmp / f"mem{count}.onnx",
            "--calibration-data",
            str(folder),
            "--data",
            str(tmp / "mem_eval.npz"),
        )
    ratio = runs[1000].peak_rss_mb / runs[100].peak_rss_mb
    return [
        "### Calibration memory (ResNet-18-shaped, minmax, batch 16)",
        "",
        "| calibration samples | data on disk | wall | peak RSS |",
        "|---:|---:|---:|---:|",
        *(
            f"| {n} | {n * 3 * 224 * 224 * 4 / 1e6:.0f} MB | {r.wall_s:.1f} s | {r.peak_rss_mb:.0f} MB |"
            for n, r in runs.items()
        ),
        "",
        f"Peak RSS ratio 1000 / 100 samples: **{ratio:.2f}×** (target ≤ 1.5×).",
        "",
    ]


def bert_section(tmp: Path) -> list[str]:
    model = cached("bert")
    data = bert_inputs(32, seed=31)
    np.savez(tmp / "bert_eval.npz", **data)
    run, payload = optc_compress(model, "int8-dynamic", tmp / "bert_optc.onnx", "--data", str(tmp / "bert_eval.npz"))
    with quiet_root_logger():
        quantize_dynamic(str(model), str(tmp / "bert_ort.onnx"))  # ONNX Runtime's defaults: per-tensor
    paths = {
        "fp32": model,
        "ORT default dynamic int8": tmp / "bert_ort.onnx",
        "optc int8-dynamic": tmp / "bert_optc.onnx",
    }
    reference = outputs(model, data, batch=8)
    cosines = {k: cosine(reference, outputs(p, data, batch=8)) for k, p in paths.items()}
    sizes = {k: p.stat().st_size / model.stat().st_size for k, p in paths.items()}
    rows = latency_rows(paths, {1: {k: v[:1] for k, v in data.items()}})
    lines = [
        "### BERT-shaped encoder (4 layers, hidden 384, sequence 128), dynamic int8",
        "",
        "| | " + " | ".join(paths) + " |",
        "|---|" + "---:|" * len(paths),
        *rows,
        "| size ratio | " + " | ".join(f"{v:.3f}" for v in sizes.values()) + " |",
        "| last hidden state cosine vs fp32 | " + " | ".join(f"{v:.4f}" for v in cosines.values()) + " |",
        "",
        f"optc compress: {run.wall_s:.1f} s wall, peak RSS {run.peak_rss_mb:.0f} MB (exit {run.returncode}). "
        "Targets: cosine ≥ 0.99, ≥ 2× faster than fp32 at batch 1.",
        "",
    ]
    if "error" in payload:
        lines.append(f"optc failed: {payload['error']}")
    return lines


def fp16_section(tmp: Path) -> list[str]:
    rows = []
    for name, model, feed in (
        ("ResNet-18-shaped", cached("resnet18"), {"images": resnet_images(8, seed=41)}),
        ("BERT-shaped", cached("bert"), {k: v for k, v in bert_inputs(8, seed=42).items()}),
    ):
        np.savez(tmp / f"{name}_eval.npz", **feed)
        out = tmp / f"{name}_fp16.onnx"
        run, payload = optc_compress(model, "fp16", out, "--data", str(tmp / f"{name}_eval.npz"), "--providers", "cpu")
        if "error" in payload:
            rows.append(f"| {name} | failed: {payload['error'][:200]} | | | |")
            continue
        details = payload["report"]["passes"][0]["details"]
        error = details["output_error"]  # the largest relative L2 error over the outputs
        stats = latency_table(
            {"fp32": model, "fp16": out}, {k: v[:1] for k, v in feed.items()}, runs=10, min_time_s=2.0
        )
        rows.append(
            f"| {name} | {out.stat().st_size / model.stat().st_size:.3f} | {error:.2e} | "
            f"{stats['fp32'].p50_ms:.2f} ms | {stats['fp16'].p50_ms:.2f} ms |"
        )
    return [
        "### fp16 (CPU provider; fp16 is meant for CUDA, where this machine has none)",
        "",
        "| model | size ratio | max output relative L2 error (tolerance 1e-2) | fp32 CPU p50 batch 1 | fp16 CPU p50 |",
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
    ]


def run() -> str:
    with tempfile.TemporaryDirectory(prefix="bench-quantize-") as folder:
        tmp = Path(folder)
        lines = []
        for section in (cnn_section, resnet_section, bert_section, fp16_section, memory_section):
            print(f"   {section.__name__}", flush=True)
            lines += section(tmp)
    return "\n".join(lines)
