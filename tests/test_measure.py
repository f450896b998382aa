import numpy as np
import onnxruntime as ort
import pytest

from optc.data import Dataset, input_specs
from optc.errors import OptcError
from optc.gates import evaluate_gates
from optc.measure import providers
from optc.measure.accuracy import (
    SEARCH_SAMPLES,
    AccuracyResult,
    Evaluator,
    compare_outputs,
    evaluate,
    output_cosine,
    output_fidelity,
)
from optc.measure.latency import LatencyStats, measure_interleaved
from optc.recipe import Gates
from optc.report.format import top1_agreement_text
from optc.report.schema import ProviderMeasurement
from tests.conftest import mlp_model


def session(model=None):
    return ort.InferenceSession((model or mlp_model()).SerializeToString(), providers=["CPUExecutionProvider"])


def logits_mlp(seed: int = 0):
    """mlp_model with its raw scores named as a classifier's: top-1 agreement is asked only of class scores."""
    model = mlp_model(seed)
    model.graph.node[-1].output[0] = model.graph.output[0].name = "logits"
    return model


def test_cpu_session_runs_on_cpu():
    s = providers.open_session(mlp_model().SerializeToString(), "cpu")
    assert s.get_providers()[0] == "CPUExecutionProvider"


def test_cuda_missing_from_the_build_is_not_measured(monkeypatch):
    monkeypatch.setattr(providers.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    result = providers.open_session(mlp_model().SerializeToString(), "cuda")
    assert isinstance(result, providers.Unavailable)
    assert "onnxruntime-gpu" in result.reason


def test_silent_fallback_to_cpu_is_detected(monkeypatch):
    """ONNX Runtime accepts CUDA in the provider list but runs on the CPU when no GPU works."""
    monkeypatch.setattr(
        providers.ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    real = providers.ort.InferenceSession

    def fake_session(model, sess_options=None, providers=None):
        return real(model, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(providers.ort, "InferenceSession", fake_session)
    result = providers.open_session(mlp_model().SerializeToString(), "cuda")
    assert isinstance(result, providers.Unavailable)
    assert "fell back to CPUExecutionProvider" in result.reason


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="needs onnxruntime-gpu")
def test_cuda_session_runs_on_cuda_when_present():
    result = providers.open_session(mlp_model().SerializeToString(), "cuda")
    if isinstance(result, providers.Unavailable):
        pytest.skip(result.reason)
    assert result.get_providers()[0] == "CUDAExecutionProvider"


def test_interleaved_latency_times_every_session():
    feed = {"x": np.zeros((1, 16), np.float32)}
    stats = measure_interleaved({"a": session(), "b": session()}, feed, warmup=1, runs=5, min_time_s=0)
    assert set(stats) == {"a", "b"}
    assert all(s.runs == 5 and 0 < s.p50_ms <= s.p90_ms <= s.max_ms for s in stats.values())


def test_latency_stats_percentiles():
    stats = LatencyStats.of([0.001 * i for i in range(1, 101)])
    assert stats.p50_ms == pytest.approx(50.5)
    assert stats.min_ms == pytest.approx(1.0) and stats.max_ms == pytest.approx(100.0)


def dataset(labels=None, n=40):
    x = np.random.default_rng(0).standard_normal((n, 16)).astype(np.float32)
    return Dataset(inputs={"x": x}, labels=labels, source="data.npz")


def test_top1_with_labels_and_agreement_without():
    specs = input_specs(mlp_model())
    original = session(logits_mlp())
    reference = original.run(None, {"x": dataset().inputs["x"]})[0]
    labels = reference.argmax(1)
    labels[:10] = (labels[:10] + 1) % 10  # the original gets 30 of 40 right
    same = evaluate(original, original, dataset(labels), specs, "auto", 1)
    assert same.metric == "top1" and same.original == pytest.approx(75.0) and same.drop == 0
    other = evaluate(original, session(logits_mlp(seed=5)), dataset(), specs, "auto", 1)
    assert other.metric == "top1_agreement" and other.original == 100.0
    assert other.optimized < 60 and other.drop == pytest.approx(100 - other.optimized)
    assert other.outputs[0].cosine < 0.9 and other.outputs[0].max_abs_error > 0


def softmax(scores: np.ndarray) -> np.ndarray:
    exp = np.exp(scores - scores.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("name", "form", "agreement"),
    [
        ("logits", "raw", True),
        ("class_scores", "raw", True),
        ("Identity:0", "probabilities", True),
        ("output", "log-probabilities", True),
        ("fingerprint", "raw", False),
        ("sentence_embedding", "probabilities", False),
        ("y", "raw", False),  # raw scores of unknown meaning: a regression's, as like as a classifier's
    ],
)
def test_top1_agreement_is_for_class_scores_only(name, form, agreement):
    """A molecular encoder's 2-D 'fingerprint' output was scored by its argmax: a 20-point 'drop' at cosine 0.997."""
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((32, 64))
    noisy = scores + 0.05 * rng.standard_normal((32, 64))
    as_form = {"raw": lambda s: s, "probabilities": softmax, "log-probabilities": lambda s: np.log(softmax(s))}[form]
    fidelity = output_fidelity(name, as_form(scores).astype(np.float32), as_form(noisy).astype(np.float32))
    assert (fidelity.top1_agreement is not None) == agreement and fidelity.cosine > 0.99


@pytest.mark.parametrize("form", ["probabilities", "log-probabilities", "logits"])
def test_a_flip_between_classes_the_original_ties_is_no_disagreement(form):
    """Magika decides one of 32 files by 0.9 points of probability: any compression may flip it, and counted as a
    disagreement it costs 3.1 points of agreement, so int8-accurate kept every node in float and refused. A flip
    between two classes the original scores within TIE_MARGIN counts as a tie; a confident one still counts."""
    probabilities = np.full((32, 4), 0.02)
    probabilities[:, 0] = 0.94
    probabilities[0, :2] = [0.485, 0.475]  # a tie: 1 point apart
    probabilities[1, :2] = [0.56, 0.40]  # decided: 16 points apart
    candidate = probabilities.copy()
    candidate[:2, :2] = candidate[:2, ::-1][:, 2:]  # both samples flip to class 1
    as_form = {"probabilities": lambda p: p, "log-probabilities": np.log, "logits": lambda p: np.log(p) + 3.0}[form]
    fidelity = output_fidelity("probs", as_form(probabilities), as_form(candidate))
    assert fidelity.top1_agreement == pytest.approx(100 * 31 / 32) and fidelity.top1_ties == 1
    assert top1_agreement_text(fidelity) == "96.88 % (1 tie)"  # as the report shows it


def test_regression_scores_are_judged_by_cosine_not_by_their_argmax():
    """DNSMOS's [clips, 3] MOS scores (Identity:0) were scored by top-1 agreement: which of three close scores is
    largest flips with noise far below what moves a score, so a 1-point budget on 32 clips allowed no flip and
    int8-accurate searched 3.4x as long as int8. The same scores are now judged by their cosine."""
    rng = np.random.default_rng(0)
    mos = 3.0 + 0.5 * rng.standard_normal((32, 1)) + 0.02 * rng.standard_normal((32, 3))  # three close scores
    noisy = mos + 0.02 * rng.standard_normal(mos.shape)
    reference, candidate = mos.astype(np.float32), noisy.astype(np.float32)
    assert (reference.argmax(1) != candidate.argmax(1)).sum() >= 4  # what top-1 agreement would have counted
    data = Dataset(inputs={"x": np.zeros((32, 1), np.float32)}, labels=None, source="clips.npz")
    result = compare_outputs(["Identity:0"], [reference], [candidate], data, "auto", 1)
    assert result.metric == "cosine" and result.drop < 0.1
    assert result.outputs[0].top1_agreement is None


def test_integer_outputs_count_by_the_share_of_equal_values():
    """A text recognizer's ids: one character read as its neighbour in the alphabet (17 -> 18) is wrong however
    close the numbers are; the cosine of the id vectors had stayed at 0.9999."""
    reference = np.tile(np.arange(1, 41, dtype=np.int64), (4, 1))  # 4 lines of 40 characters
    misread = reference.copy()
    misread[0, 16] = 18
    fidelity = output_fidelity("ids", reference, misread)
    assert fidelity.cosine == pytest.approx(159 / 160)
    assert output_fidelity("ids", reference, reference).cosine == 1.0
    mask = np.array([[True, False, True]] * 8)
    assert output_fidelity("mask", mask, ~mask).cosine == 0.0  # pooled (3 per sample): every value differs


@pytest.mark.parametrize("shape", [(32, 64), (4, 1, 48, 40), (8, 3), (5,), ()])
def test_the_fidelity_searches_cosine_is_the_reports_cosine(shape):
    """Searches score every attempt with output_cosine alone (a text detector's map made the full fidelity a quarter
    of int8's wall time): it must be the very cosine the report and its gate measure, integer outputs included."""
    rng = np.random.default_rng(1)
    reference = rng.standard_normal(shape).astype(np.float32)
    candidate = (reference + 0.3 * rng.standard_normal(shape)).astype(np.float32)
    assert output_cosine(reference, candidate) == output_fidelity("y", reference, candidate).cosine
    ids, read = np.asarray(rng.integers(0, 4, shape)), np.asarray(rng.integers(0, 4, shape))
    assert output_cosine(ids, read) == output_fidelity("ids", ids, read).cosine


def test_the_cosine_gate_also_sees_all_samples_together():
    """Nine faint samples exact and one strong sample off: the mean per sample stays high, but the outputs that
    matter most moved, and the gate must see it (a pruned face detector passed at 0.985 per sample, 0.972 together)."""
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((10, 64))
    reference[0] *= 20
    candidate = reference.copy()
    candidate[0] += 0.6 * np.linalg.norm(reference[0]) / 8 * rng.standard_normal(64)
    fidelity = output_fidelity("heatmap", reference, candidate)
    assert fidelity.cosine > 0.98 > fidelity.cosine_all_samples
    result = AccuracyResult(
        metric="cosine",
        samples=10,
        data="d.npz",
        original=100,
        optimized=100 * fidelity.cosine,
        drop=0,
        outputs=[fidelity],
    )
    assert result.min_cosine == fidelity.cosine_all_samples
    assert output_fidelity("score", reference[:, :4], candidate[:, :4]).cosine_all_samples is None  # pooled already


def test_top1_metric_without_labels_is_bad_input():
    with pytest.raises(OptcError, match="needs a 'labels'"):
        evaluate(session(), session(), dataset(), input_specs(mlp_model()), "top1", 1)


def measurement(provider="cpu", speedup=2.0, drop=0.5, measured=True):
    from optc.measure.accuracy import AccuracyResult

    accuracy = AccuracyResult(
        metric="top1", samples=10, data="d", original=90, optimized=90 - drop, drop=drop, outputs=[]
    )
    if not measured:
        return ProviderMeasurement(
            provider=provider, measured=False, reason="no GPU", batch_size=1, threads=1, warmup=1
        )
    return ProviderMeasurement(
        provider=provider, measured=True, batch_size=1, threads=1, warmup=1, speedup=speedup, accuracy=accuracy
    )


def test_gates_pass_fail_and_unmeasured():
    gates = Gates(max_accuracy_drop=1.0, min_speedup=1.5, max_size_ratio=0.5)
    results = evaluate_gates(gates, 0.4, [measurement(), measurement("cuda", measured=False)], [])
    assert all(r.passed for r in results) and len(results) == 3
    failing = evaluate_gates(gates, 0.6, [measurement(speedup=1.2, drop=2.0)], [])
    assert [r.passed for r in failing] == [False, False, False]
    assert "1.200" in failing[1].detail and "1.5" in failing[1].detail
    nothing = evaluate_gates(Gates(min_speedup=1.1), 0.5, [measurement(measured=False)], [])
    assert not nothing[0].passed and "not measured" in nothing[0].detail


def test_fidelity_compares_only_the_outputs_both_models_still_have():
    from onnx import TensorProto, helper

    from tests.conftest import make_model

    def model(outputs):
        nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"), helper.make_node("Neg", ["x"], ["b"], name="neg")]
        return make_model(
            nodes,
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["batch", 16]) for o in outputs],
        )

    result = evaluate(session(model(["a", "b"])), session(model(["b"])), dataset(), input_specs(mlp_model()), "auto", 1)
    assert [o.name for o in result.outputs] == ["b"] and result.outputs[0].cosine == pytest.approx(1.0)


def test_a_search_evaluates_a_head_of_data_that_takes_long_and_all_of_data_that_does_not():
    labels = np.arange(40) % 10
    evaluator = Evaluator(session(), dataset(labels), input_specs(mlp_model()), "auto", 1)
    assert evaluator.for_search(seconds=3600) is evaluator
    head = evaluator.for_search(seconds=0.0)  # every run counts as slow: the fewest samples a step may use
    assert len(head.dataset) == SEARCH_SAMPLES < len(evaluator.dataset)
    assert np.array_equal(head.dataset.labels, labels[:SEARCH_SAMPLES])
    assert np.array_equal(head.dataset.inputs["x"], evaluator.dataset.inputs["x"][:SEARCH_SAMPLES])
    result = head(session(mlp_model(seed=5)))
    assert result.samples == SEARCH_SAMPLES and result.metric == "top1"
