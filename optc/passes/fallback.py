"""Keeping in float the nodes a conversion hurts most, as few as possible, until the result is good enough.

One pass ranks the nodes: the float model and the fully converted one run over a probe of the data with every tensor
they share exposed, and each node is charged with the signal-to-noise ratio it lost between its inputs and its output
(as NNCF's ranker and ONNX Runtime's ``qdq_loss_debug`` do). Re-converting node by node, as optc once did, costs one
conversion per node; this costs one run of each model. Then nodes are kept in float in that order, 1, 2, 4, ... at a
time and finally bisected, until ``acceptable`` holds — a handful of conversions however large the model.

Where the converted graph keeps its candidates' output names (dynamic int8: optc's own rewrite of MatMuls and
embedding tables), ``rank_by_output_damage`` ranks by what the one-pass ranking can only guess: the noise each node's
conversion alone brings to the model's outputs, a few samples per node through one switchable model. The local SQNR loss
misorders transformers: on all-MiniLM-L6 it put the attention's query/key projections first (their local loss is the
largest, but softmax damps it) and the embedding Gathers (exact inputs) before them, so keeping 16 of 38 nodes in
float bought nothing and 29 had to stay float for cosine 0.99.

Int8 (static and dynamic) and fp16 share this: each passes a ``convert(kept) -> model`` and an ``acceptable`` check.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from optc.data import Dataset, input_specs
from optc.errors import NotApplicable
from optc.measure import accuracy
from optc.measure.accuracy import output_cosine
from optc.measure.providers import check_options
from optc.measure.tensor_error import compare_tensors
from optc.measure.values import run_as_arrays
from optc.verify import session_source

Convert = Callable[[set[str]], onnx.ModelProto]  # node names kept in float -> converted model
Acceptable = Callable[[onnx.ModelProto], tuple[bool, dict]]  # model -> (good enough, facts for the report)
IDENTICAL_DB = 100.0  # what an exact tensor counts as (graph inputs, weights, tensors the conversion left alone)
FOLLOW_STEPS = 2
PROBE_SAMPLES = 64  # samples a fallback search checks its candidates on, and ranks the nodes on
# ... from at least this many feeds: a feed can hold many samples that agree with each other (a word segmenter's
# feeds are one text each, 64 characters as rows), and a probe of one text passed dynamic int8 at cosine 0.997 where
# the 32 texts of the evaluation data together gave 0.986 (8 texts: 0.988).
PROBE_FEEDS = 8
# Ranking exposes every tensor of both models: on a 640×480 text detector, 64 images took 126 of int8-accurate's
# 250 s. The order of the nodes settles on far fewer large samples, so ranking reads feeds up to this many input
# bytes (at least one feed): 8 such images, but all 64 samples of a model with small inputs.
RANKING_INPUT_BYTES = 32 * 2**20
OUTPUT_RANKING_SAMPLES = 8  # per converted model: the order settles on a few samples, the cost is one run per node
OUTPUT_RANKING_S = 120.0  # ... and one, or none (one-pass ranking), where that would take longer
RANKING_SELECTOR = "optc_ranking_selector"  # input of the switchable model: the candidate converted alone
PROMOTION_ROUNDS = 2  # searches again with the node that made the last difference first (keep_in_float_until)
# ... while a round leaves at most this share of the nodes it started from: each costs about as many conversions as
# the first search, and after a round that saved little the next rarely saves much (PP-OCRv4's detector, static int8
# in prune-auto: 167 -> 134 nodes in float, then 124 for 14 more conversions, 75 of the run's 400 s).
PROMOTION_WORTH = 0.5


@dataclass(frozen=True)
class NodeDamage:
    node: str
    op_type: str
    drop_db: float  # SQNR lost between the node's worst input and its output
    sqnr_db: float  # of its output

    def as_row(self) -> dict:
        return {
            "node": self.node,
            "op_type": self.op_type,
            "drop_db": round(self.drop_db, 2),
            "sqnr_db": round(self.sqnr_db, 2),
        }


@dataclass(frozen=True)
class OutputDamage:
    node: str
    op_type: str
    noise_db: float  # the worst output's noise-to-signal ratio with only this node converted

    def as_row(self) -> dict:
        return {"node": self.node, "op_type": self.op_type, "output_noise_db": round(self.noise_db, 2)}


@dataclass
class Fallback:
    model: onnx.ModelProto
    kept: list[str]  # nodes kept in float, most damaging first
    tried: list[dict] = field(default_factory=list)  # each configuration checked: {"kept_in_float": k, "ok": ...}
    ranking: list[NodeDamage | OutputDamage] = field(default_factory=list)  # empty when the first was acceptable
    facts: dict = field(default_factory=dict)  # the check of ``model`` (the last one tried may be a rejected one)


def rank_by_damage(
    float_model: onnx.ModelProto,
    converted: onnx.ModelProto,
    feeds: Iterable[dict[str, np.ndarray]],
    workdir: Path,
    candidate: Callable[[onnx.NodeProto], bool] = lambda node: True,
) -> list[NodeDamage]:
    """Nodes of ``float_model`` that ``candidate`` admits, most damaging first."""
    comparison = compare_tensors(float_model, converted, _first_bytes(feeds, RANKING_INPUT_BYTES), "cpu", workdir)
    sqnr = {t.name: IDENTICAL_DB if t.sqnr_db is None else min(t.sqnr_db, IDENTICAL_DB) for t in comparison.tensors}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in float_model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    ranking = []
    for node in float_model.graph.node:
        after = _output_sqnr(node, sqnr, consumers)
        if after is None or not candidate(node):
            continue
        before = min((sqnr.get(name, IDENTICAL_DB) for name in node.input if name), default=IDENTICAL_DB)
        ranking.append(NodeDamage(node.name, node.op_type, before - after, after))
    return sorted(ranking, key=lambda d: -d.drop_db)


def rank_by_output_damage(
    float_model: onnx.ModelProto,
    convert: Convert,
    candidates: list[str],
    always_kept: set[str],
    feeds: Iterable[dict[str, np.ndarray]],
    workdir: Path,
    limit: int = OUTPUT_RANKING_SAMPLES,
) -> list[OutputDamage]:
    """``candidates`` most damaging first, each charged with the noise its conversion alone (every other candidate
    kept in float) brings to the outputs of ``float_model`` over at most ``limit`` feeds."""
    samples = _first_bytes(feeds, RANKING_INPUT_BYTES)[:limit]
    reference = run_outputs(float_model, samples, workdir)
    op_types = {n.name: n.op_type for n in float_model.graph.node}
    switchable = switchable_model(float_model, convert(always_kept), candidates)
    if switchable is not None:
        session = _probe_session(switchable, workdir)

        def converted_alone(index: int, name: str) -> dict[str, np.ndarray]:
            selected = np.array(index, dtype=np.int64)
            return _outputs_of(session, [{**feed, RANKING_SELECTOR: selected} for feed in samples])

    else:

        def converted_alone(index: int, name: str) -> dict[str, np.ndarray]:
            return run_outputs(convert(always_kept | (set(candidates) - {name})), samples, workdir)

    ranking = [
        OutputDamage(name, op_types.get(name, "?"), float(_worst_noise_db(reference, converted_alone(index, name))))
        for index, name in enumerate(candidates)
    ]
    return sorted(ranking, key=lambda d: -d.noise_db)


def switchable_model(
    float_model: onnx.ModelProto, converted: onnx.ModelProto, candidates: list[str]
) -> onnx.ModelProto | None:
    """``converted`` with each candidate's float node put back beside its conversion, and a ``Where`` on each of its
    outputs choosing the converted value only when the int64 input ``RANKING_SELECTOR`` holds the candidate's index:
    one session then runs every "this candidate alone converted" model, where a session per candidate cost 0.46 s on
    a 3.6 MB segmenter with 191 MatMuls. None where the conversion renamed a candidate's outputs or dropped a tensor
    its float node reads."""
    out = onnx.ModelProto()
    out.CopyFrom(converted)
    graph = out.graph
    float_nodes = {node.name: node for node in float_model.graph.node}
    float_weights = {t.name: t for t in float_model.graph.initializer}
    available = {t.name for t in graph.initializer} | {i.name for i in graph.input}
    available |= {name for node in graph.node for name in node.output}
    index_of = {output: index for index, name in enumerate(candidates) for output in float_nodes[name].output if output}
    rebuilt: list[onnx.NodeProto] = []
    weights: list[onnx.TensorProto] = []
    for node in graph.node:
        rebuilt.append(node)
        for position, output in enumerate(node.output):
            if output not in index_of:
                continue
            original = float_nodes[candidates[index_of[output]]]
            missing = [name for name in original.input if name and name not in available and name not in float_weights]
            if missing:
                return None
            weights += [float_weights[n] for n in original.input if n in float_weights and n not in available]
            available |= set(original.input)
            node.output[position] = f"{output}_converted"
            rebuilt += _float_beside(original, output, index_of[output])
            del index_of[output]
    if index_of:  # an output the conversion no longer writes under its name
        return None
    del graph.node[:]
    graph.node.extend(rebuilt)
    graph.initializer.extend(weights)
    graph.input.append(helper.make_tensor_value_info(RANKING_SELECTOR, TensorProto.INT64, []))
    return out


def _float_beside(original: onnx.NodeProto, output: str, index: int) -> list[onnx.NodeProto]:
    """``original`` computing ``output`` under another name, and the Where picking between it and the conversion."""
    prefix = f"{output}_ranking"
    float_node = onnx.NodeProto()
    float_node.CopyFrom(original)
    float_node.name = f"{prefix}_float"
    del float_node.output[:]
    float_node.output.extend(f"{o}_float" if o == output else "" for o in original.output)
    return [
        float_node,
        helper.make_node("Constant", [], [f"{prefix}_index"], name=f"{prefix}_index", value_int=index),
        helper.make_node("Equal", [RANKING_SELECTOR, f"{prefix}_index"], [f"{prefix}_chosen"], name=f"{prefix}_equal"),
        helper.make_node(
            "Where", [f"{prefix}_chosen", f"{output}_converted", f"{output}_float"], [output], name=f"{prefix}_where"
        ),
    ]


def _worst_noise_db(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> float:
    worst = max(_relative_errors(reference, candidate).values(), default=0.0)
    if not np.isfinite(worst):
        return IDENTICAL_DB
    return 20 * np.log10(worst) if worst > 0 else -IDENTICAL_DB


def _relative_errors(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> dict[str, float]:
    """``||candidate - reference|| / ||reference||`` of each numeric output, integer and boolean ones included (the
    gate compares them too); inf where the candidate is not finite where the reference is."""
    errors = {}
    for name, ref in reference.items():
        if ref.dtype.kind not in "fiub":
            continue
        ref64, cand64 = ref.astype(np.float64), candidate[name].astype(np.float64)
        if not np.all(np.isfinite(cand64[np.isfinite(ref64)])):
            errors[name] = float("inf")
            continue
        errors[name] = float(np.linalg.norm(cand64 - ref64) / max(np.linalg.norm(ref64), 1e-12))
    return errors


def _first_bytes(feeds: Iterable[dict[str, np.ndarray]], limit: int) -> list[dict[str, np.ndarray]]:
    taken, size = [], 0
    for feed in feeds:
        if taken and size >= limit:
            break
        taken.append(feed)
        size += sum(np.asarray(value).nbytes for value in feed.values())
    return taken


def _output_sqnr(node: onnx.NodeProto, sqnr: dict[str, float], consumers: dict) -> float | None:
    """SQNR of the node's output, or of the first compared tensor down a chain of sole readers (a conversion may
    fold the next op into this one, as int8 folds a Relu into its Conv), at most ``FOLLOW_STEPS`` nodes on."""
    for _ in range(FOLLOW_STEPS + 1):
        found = [sqnr[name] for name in node.output if name in sqnr]
        if found:
            return min(found)
        readers = [r for name in node.output if name for r in consumers.get(name, [])]
        if len(readers) != 1:
            return None
        node = readers[0]
    return None


def keep_in_float_until(
    convert: Convert,
    first: onnx.ModelProto,
    rank: Callable[[], list[NodeDamage] | list[OutputDamage]],
    acceptable: Acceptable,
    always_kept: set[str],
    label: str,
    limit: int | None = None,
    first_verdict: tuple[bool, dict] | None = None,
) -> Fallback:
    """The fewest leading nodes of the ranking (at most ``limit``) to keep in float for ``acceptable`` to hold.

    ``first`` is the conversion with only ``always_kept`` in float, already made (and, where ``first_verdict`` is
    given, already checked) by the caller. ``rank`` runs only
    when ``first`` is not acceptable: it runs both models with every tensor exposed, the costliest step here.

    The ranking is a guess, and the shortest prefix it allows can end in the one node that mattered: the prefix
    without it failed. That node then goes first and the shortest prefix is searched again, within the nodes kept so
    far, for as long as it gets shorter by half (``PROMOTION_ROUNDS`` at most). A Thai segmenter's static int8 needed
    all 243 candidates in float by the ranking's order; with the 243rd first, 20 were enough, and after a second round
    3.
    """
    ok, facts = first_verdict or acceptable(first)
    tried = [{"kept_in_float": 0, "ok": ok, **facts}]
    if ok:
        return Fallback(first, [], tried, facts=facts)
    ranking = rank()
    if not ranking:
        return Fallback(first, [], tried, ranking, facts)
    order = [d.node for d in ranking[:limit]]

    def attempt(kept: list[str], promoted: int) -> tuple[bool, tuple[onnx.ModelProto, dict]]:
        model = convert(always_kept | set(kept))
        good, found = acceptable(model)
        tried.append({"kept_in_float": len(kept), "ok": good, **found} | ({"promoted": promoted} if promoted else {}))
        return good, (model, found)

    good, best = _shortest_prefix(order, None, lambda count: attempt(order[:count], 0))
    if good is None:
        raise NotApplicable(
            label,
            f"still not good enough with the {len(order)} most damaged node(s) kept in float "
            f"({', '.join(f'{k}: {v}' for k, v in tried[-1].items() if k not in ('ok', 'kept_in_float'))})",
            hint="the model may not suit this conversion; loosen the target or exclude more op types",
        )
    for promoted in range(1, PROMOTION_ROUNDS + 1):
        if good < 2:
            break
        reordered = [order[good - 1], *order[: good - 1]]
        shorter, model = _shortest_prefix(reordered, good, lambda count, r=reordered, p=promoted: attempt(r[:count], p))
        if shorter >= good:
            break
        worth_another = shorter <= PROMOTION_WORTH * good
        order, good, best = reordered, shorter, model
        if not worth_another:
            break
    model, facts = best
    return Fallback(model, order[:good], tried, ranking, facts)


def _shortest_prefix(
    order: list[str], known_good: int | None, attempt: Callable[[int], tuple[bool, Any]]
) -> tuple[int | None, Any]:
    """The shortest prefix length of ``order`` that ``attempt`` accepts, and what ``attempt`` gave for it: doubling
    from 1, then bisecting. ``known_good`` is a length already accepted (not tried again; its result is the caller's);
    None when none is, and then (None, None) if not even the whole of ``order`` is accepted."""
    bad, good, best = 0, known_good, None
    count = 1
    while good is None or count < good:
        passed, model = attempt(count)
        if passed:
            good, best = count, model
            break
        if count >= len(order):
            return None, None
        bad, count = count, min(2 * count, len(order))
    while good - bad > 1:
        middle = (bad + good) // 2
        passed, model = attempt(middle)
        if passed:
            good, best = middle, model
        else:
            bad = middle
    return good, best


def run_outputs(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], workdir: Path) -> dict[str, np.ndarray]:
    """Every output of ``model`` over ``feeds``, by name, samples stacked on the first axis."""
    return _outputs_of(_probe_session(model, workdir), feeds)


@dataclass(frozen=True)
class ProbeReference:
    feeds: list[dict[str, np.ndarray]]
    outputs: dict[str, np.ndarray]  # the float model's, as ``run_outputs`` gives them
    feed_s: float  # the float model's mean time per feed


def probe_reference(
    model: onnx.ModelProto, probe: list[dict[str, np.ndarray]], workdir: Path, seconds: float | None = None
) -> ProbeReference:
    """The feeds of ``probe`` a search checks its candidates on, and ``model``'s outputs over them: all of them, or
    the first ``PROBE_FEEDS`` where the first ones' time says the whole would take longer than ``seconds``. Every
    step of a search runs the probe again: DNSMOS's 32 clips took 16 s a step."""
    seconds = accuracy.SEARCH_STEP_S if seconds is None else seconds
    session = _probe_session(model, workdir)
    runs = []
    started = time.perf_counter()
    for index, feed in enumerate(probe):
        if index == PROBE_FEEDS and (time.perf_counter() - started) * len(probe) / index > seconds:
            break
        runs.append(run_as_arrays(session, None, feed))
    elapsed = time.perf_counter() - started
    taken = probe[: len(runs)]
    return ProbeReference(taken, _stacked([o.name for o in session.get_outputs()], runs), elapsed / max(len(runs), 1))


def output_ranking_feeds(candidates: int, feed_s: float, seconds: float = OUTPUT_RANKING_S) -> int:
    """How many feeds ``rank_by_output_damage`` takes for ``candidates`` the float model runs in ``feed_s`` each:
    ``OUTPUT_RANKING_SAMPLES`` where that stays within ``seconds``, else one where that does, else none (rank in one
    pass instead). SLANet's dynamic int8 (0.3 s a table image, 77 Convs) ran past the corpus runner's 400 s on this
    ranking alone."""
    for feeds in (OUTPUT_RANKING_SAMPLES, 1):
        if candidates * feeds * feed_s <= seconds:
            return feeds
    return 0


def _probe_session(model: onnx.ModelProto, workdir: Path) -> ort.InferenceSession:
    return ort.InferenceSession(
        session_source(model, workdir, "fallback_probe"),
        sess_options=check_options(),
        providers=["CPUExecutionProvider"],
    )


def _outputs_of(session: ort.InferenceSession, feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return _stacked([o.name for o in session.get_outputs()], [run_as_arrays(session, None, feed) for feed in feeds])


def _stacked(names: list[str], per_feed: list[list[np.ndarray]]) -> dict[str, np.ndarray]:
    return {
        name: np.concatenate([run[i].reshape(len(run[i]) if run[i].ndim else 1, -1) for run in per_feed])
        for i, name in enumerate(names)
    }


def output_agreement(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> dict:
    """How close ``candidate``'s outputs are to ``reference``'s: the worst cosine over every output (pooled for tiny
    outputs, integer ones included, as the report's gate measures them), the output it belongs to, and the worst
    relative L2 error. Integer outputs count: a text recognizer's argmax ids fell to held-out cosine 0.98 while its
    float outputs, all the search looked at, stayed at 0.9997."""
    errors = _relative_errors(reference, candidate)
    broken = next((name for name, error in errors.items() if not np.isfinite(error)), None)
    if broken is not None:
        return {"min_cosine": 0.0, "max_relative_error": float("inf"), "worst_output": broken}
    cosines = {name: output_cosine(ref, candidate[name]) for name, ref in reference.items()}
    worst = min(cosines, key=cosines.get, default=None)
    return {
        "min_cosine": round(cosines[worst], 6) if worst else 1.0,
        "max_relative_error": round(max(errors.values(), default=0.0), 6),
        "worst_output": worst,
    }


def evaluation_probe(model: onnx.ModelProto, dataset: Dataset, batch_size: int) -> list[dict[str, np.ndarray]]:
    """The first samples of the evaluation data, in batches ``model`` takes."""
    return probe_of(dataset.batches(dataset.feed_batch_size(input_specs(model), batch_size)))


def probe_of(feeds, samples: int = PROBE_SAMPLES, least_feeds: int = PROBE_FEEDS) -> list[dict[str, np.ndarray]]:
    """The first feeds of ``feeds`` holding ``samples`` samples, and at least ``least_feeds`` of them."""
    probe, count = [], 0
    for feed in feeds:
        probe.append(feed)
        count += len(next(iter(feed.values()))) if feed else 1
        if count >= samples and len(probe) >= least_feeds:
            break
    return probe
