"""Real-model corpus scoreboard: every built-in recipe over every corpus model, with realistic data and without any,
each run classified independently of optc's own report, beside ONNX Runtime's own tools at their default settings.

Heavy (hours on the full corpus), so not part of a plain ``make bench``:

    python bench/run.py corpus                 # runs it and puts this section into bench/RESULTS.md
    python bench/bench_corpus.py               # runs it and prints the section
    python bench/bench_corpus.py render        # re-renders the section from bench/.cache/corpus_results.json
    python bench/bench_corpus.py merge A.json B.json   # one results file from runners that split the recipes
    python bench/bench_corpus.py reread SECTION.md     # the results file back from a rendered section (the
                                                       # file lives in bench/.cache, which a new machine lacks)

Environment: ``OPTC_CORPUS_MODELS`` and ``OPTC_CORPUS_RECIPES`` (comma-separated names) pick a subset;
``OPTC_CORPUS_DATA`` (``realistic``, ``none``) runs only those data modes;
``OPTC_CORPUS_TIMEOUT`` is the limit per run in seconds (default 600); ``OPTC_CORPUS_SCRIPT`` is the corpus fetch
script (default ``<repo>/../shared/corpus/fetch.sh``); ``OPTC_CORPUS_RESUME=1`` keeps results already in the JSON
file and runs only what is missing; ``OPTC_CORPUS_KEEP=1`` keeps the optimized models (by default they are deleted
once evaluated); ``OPTC_CORPUS_OPTC_ROOT`` is the source tree optc runs from (default: this repository), so a run
of several hours can score one fixed version, e.g. ``git archive HEAD optc | tar -x -C /tmp/optc-head``.

How a run is classified (optc's report and exit code are not trusted for fidelity):

- **usable**: exit 0, the model loads in ONNX Runtime (CPU), every output is finite, every float output's cosine to
  the fp32 original on the held-out evaluation inputs is >= 0.98 (mean over samples; outputs with fewer than 16
  values per sample are compared as one vector over all samples, where a per-sample cosine would only be a sign
  test) and every integer/bool output agrees element for element on >= 98 % of its values (these are argmax ids,
  decoded tokens or pass-through ids; one flipped id should not make a run unusable, a broken one shows well below).
- **flagged**: exit 1, a gate failed; the failed gates are recorded (the model is evaluated all the same).
- **refused**: exit 2 or 3 with optc's own message (its first line is recorded).
- **bad**: anything else: exit 0 but not usable by the rule above, exit 4, a signal (killed, crashed), the time
  limit, and an exit 2 or 3 whose message passes on a raw Python exception (``RAW_EXCEPTION``: an exception class
  name followed by a colon, such as ``failed: IndexError: ...``, ``TypeError:``, ``ValueError:``, ONNX Runtime's
  ``failed: InvalidGraph: ...``, or the words AssertionError/StopIteration/Traceback) instead of saying what went
  wrong.

ONNX Runtime's tools, run on the same models and inputs with default arguments (``quantize_dynamic(in, out)``,
``quantize_static(in, out, reader)`` over the realistic calibration set one sample per ``get_next``, and
``convert_float_to_float16(model)``), are **usable** by the same fidelity rule, **failed** when they raise (or crash,
or time out) and **bad** when they write a model that does not load or is degraded. Every tool call and every
evaluation runs in its own process, so a native crash cannot take the runner down.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import corpus_inputs
import numpy as np
import onnx
import onnxruntime as ort
import yaml
from onnxruntime.quantization import CalibrationDataReader, quantize_dynamic, quantize_static
from onnxruntime.transformers.float16 import convert_float_to_float16

from harness import ROOT, THREADS, latency_table, run_measured

TITLE = "Real-model corpus scoreboard"
IN_DEFAULT_RUN = False

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
CORPUS = CACHE / "corpus"
WORK = CACHE / "corpus_runs"
RESULTS_JSON = CACHE / "corpus_results.json"

CALIBRATION = {"samples": 64, "seed": 1, "max_bytes": 256e6}
EVALUATION = {"samples": 32, "seed": 2, "max_bytes": 128e6}
MIN_SAMPLES = 8
FAST_LATENCY = {"warmup": 1, "runs": 3, "min_time_s": 0}
DATA_MODES = ("realistic", "none")

USABLE_COSINE = 0.98
USABLE_AGREEMENT = 98.0
SMALL_OUTPUT = 16
RAW_EXCEPTION = re.compile(
    r"\b[A-Za-z_]\w*(?:Error|Exception)\s*:|\bfailed: [A-Z]\w*:|\bAssertionError\b|\bStopIteration\b|\bTraceback\b"
)

# ONNX Runtime's tool beside the built-in recipe it matches.
ORT_TOOLS = {"ort-dynamic": "int8-dynamic", "ort-static": "int8", "ort-fp16": "fp16"}


# ------------------------------------------------------------------------------------------------ settings


def env_list(name: str) -> list[str] | None:
    value = os.environ.get(name, "").strip()
    return [v.strip() for v in value.split(",") if v.strip()] or None


def data_modes() -> tuple[str, ...]:
    chosen = env_list("OPTC_CORPUS_DATA") or DATA_MODES
    unknown = set(chosen) - set(DATA_MODES)
    if unknown:
        raise SystemExit(f"OPTC_CORPUS_DATA: unknown data mode(s) {sorted(unknown)}; known: {list(DATA_MODES)}")
    return tuple(chosen)


def timeout_s() -> int:
    return int(os.environ.get("OPTC_CORPUS_TIMEOUT", "600"))


def corpus_script() -> Path:
    return Path(os.environ.get("OPTC_CORPUS_SCRIPT", ROOT.parent / "shared" / "corpus" / "fetch.sh"))


def ensure_corpus() -> None:
    """The corpus from the shared fetch script (only when missing; it is idempotent anyway) plus EXTRA_MODELS."""
    if not (CORPUS / "MANIFEST.tsv").exists():
        script = corpus_script()
        if not script.exists():
            raise SystemExit(f"no corpus in {CORPUS} and no fetch script at {script} (set OPTC_CORPUS_SCRIPT)")
        subprocess.run(
            ["bash", str(script), str(CORPUS)], check=True, cwd=ROOT, env={**os.environ, "PYTHON": sys.executable}
        )
    corpus_inputs.fetch_extra(CORPUS)


def model_names() -> list[str]:
    names = corpus_inputs.corpus_models(CORPUS)
    wanted = env_list("OPTC_CORPUS_MODELS")
    if wanted:
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise SystemExit(f"OPTC_CORPUS_MODELS names unknown model(s) {unknown}; known: {names}")
        names = [n for n in names if n in wanted]
    return names


def optc_root() -> Path:
    return Path(os.environ.get("OPTC_CORPUS_OPTC_ROOT", ROOT)).resolve()


def optc_command(*args: str, from_elsewhere: bool = False) -> list[str]:
    """``python -m optc``: run with cwd=optc_root(), which puts that optc first on sys.path, or, ``from_elsewhere``,
    from any folder with that path put first explicitly."""
    if not from_elsewhere:
        return [sys.executable, "-m", "optc", *args]
    start = f"import runpy, sys; sys.path.insert(0, {str(optc_root())!r}); "
    start += "runpy.run_module('optc', run_name='__main__')"
    return [sys.executable, "-c", start, *args]


def optc_version() -> str:
    shown = subprocess.run(optc_command("--version"), capture_output=True, text=True, cwd=optc_root())
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=optc_root())
    return f"{first_line(shown.stdout)} from {optc_root()}" + (f" ({commit.stdout.strip()})" if commit.stdout else "")


def built_in_recipes() -> list[str]:
    listed = subprocess.run(
        optc_command("recipes", "list", "--json"), capture_output=True, text=True, check=True, cwd=optc_root()
    )
    return [r["name"] for r in json.loads(listed.stdout)]


def recipe_names() -> list[str]:
    names = built_in_recipes()
    wanted = env_list("OPTC_CORPUS_RECIPES")
    if wanted:
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise SystemExit(f"OPTC_CORPUS_RECIPES names unknown recipe(s) {unknown}; built-in: {names}")
        names = [n for n in names if n in wanted]
    return names


def fast_recipe(name: str, folder: Path) -> Path:
    """The built-in recipe with only its latency settings cut down, so a run measures 3 timed runs, not seconds."""
    shown = subprocess.run(
        optc_command("recipes", "show", name), capture_output=True, text=True, check=True, cwd=optc_root()
    )
    recipe = yaml.safe_load(shown.stdout)
    evaluate = recipe.setdefault("evaluate", {})
    evaluate["latency"] = {**(evaluate.get("latency") or {}), **FAST_LATENCY}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


# ----------------------------------------------------------------------------------------- running commands


@dataclass
class Outcome:
    returncode: int | None  # None: the runner itself could not start or measure it
    wall_s: float
    peak_rss_mb: float
    stdout: str
    stderr: str

    @property
    def timed_out(self) -> bool:
        # coreutils timeout answers 124 after TERM at the limit; a KILL 10 s later, or the OOM killer, gives 137.
        return self.returncode == 124 or (self.returncode in (137, -9) and self.wall_s >= timeout_s())

    @property
    def signalled(self) -> bool:
        return self.returncode is not None and (self.returncode < 0 or self.returncode >= 128)


def run_limited(args: list[str], cwd: Path = ROOT) -> Outcome:
    """``harness.run_measured`` (wall time, the command's own peak RSS) under coreutils ``timeout``."""
    limited = ["timeout", "--kill-after=10", str(timeout_s()), *args]
    try:
        run = run_measured(limited, cwd=cwd)
    except RuntimeError as exc:
        return Outcome(None, 0.0, 0.0, "", str(exc))
    return Outcome(run.returncode, run.wall_s, run.peak_rss_mb, run.stdout, run.stderr)


def run_worker(job: dict) -> tuple[Outcome, dict]:
    """One job (a tool call or an evaluation) in its own process; its JSON answer or {} when it died."""
    with tempfile.TemporaryDirectory(prefix="corpus-job-") as folder:
        job_file, answer_file = Path(folder) / "job.json", Path(folder) / "answer.json"
        job_file.write_text(json.dumps(job))
        outcome = run_limited(
            [sys.executable, str(Path(__file__).resolve()), "worker", str(job_file), str(answer_file)]
        )
        answer = json.loads(answer_file.read_text()) if answer_file.exists() else {}
    return outcome, answer


def first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else ""


def death(outcome: Outcome) -> str:
    if outcome.returncode is None:
        return f"runner error: {first_line(outcome.stderr)}"
    if outcome.timed_out:
        return f"timeout after {timeout_s()} s"
    code = outcome.returncode
    signal = -code if code < 0 else code - 128
    return f"killed by signal {signal}" + (f": {first_line(outcome.stderr)}" if outcome.stderr.strip() else "")


# ---------------------------------------------------------------------------------------------- the worker


def _sample_feeds(arrays: dict[str, np.ndarray], per_sample: bool, input_types: dict[str, str] | None = None) -> list:
    """One feed per sample, as optc feeds them: a row as-is, or a batch of one."""
    count = len(next(iter(arrays.values())))
    if per_sample:
        feeds = [{k: np.asarray(v[i]) for k, v in arrays.items()} for i in range(count)]  # a scalar stays an array
    else:
        feeds = [{k: v[i : i + 1] for k, v in arrays.items()} for i in range(count)]
    # fp16 models converted without keep_io_types take float16 inputs.
    wants_half = {k for k, t in (input_types or {}).items() if t == "tensor(float16)"}
    return [{k: (v.astype(np.float16) if k in wants_half else v) for k, v in feed.items()} for feed in feeds]


def _session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def _outputs(model_path: str, data_path: str, per_sample: bool) -> tuple[list[str], list[list[np.ndarray]]]:
    session = _session(model_path)
    with np.load(data_path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    types = {i.name: i.type for i in session.get_inputs()}
    missing = sorted(set(types) - set(arrays))
    if missing:
        raise ValueError(f"the model's inputs {missing} are not in the evaluation data")
    feeds = _sample_feeds({k: arrays[k] for k in types}, per_sample, types)
    names = [o.name for o in session.get_outputs()]
    return names, [session.run(None, feed) for feed in feeds]


def job_reference(job: dict) -> dict:
    names, results = _outputs(job["model"], job["data"], job["per_sample"])
    arrays = {f"o{j}": np.stack([np.asarray(r[j]) for r in results]) for j in range(len(names))}
    np.savez(job["out"], **arrays)
    return {"outputs": names, "finite": all(np.all(np.isfinite(a)) for a in arrays.values() if a.dtype.kind == "f")}


def _cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    a, b = reference.astype(np.float64).ravel(), candidate.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na < 1e-12 or nb < 1e-12:
        return 1.0 if np.max(np.abs(a - b), initial=0.0) <= 1e-6 else 0.0
    return float(np.dot(a, b) / (na * nb))


def compare_output(reference: np.ndarray, candidate: list[np.ndarray]) -> dict:
    """Fidelity of one output: cosine for floats, element agreement (%) for integer/bool outputs."""
    shapes_match = all(np.shape(c) == reference.shape[1:] for c in candidate)
    if reference.dtype.kind != "f":
        if not shapes_match:
            return {"agreement": 0.0, "note": "shape differs"}
        got = np.stack(candidate)
        return {"agreement": 100.0 * float(np.mean(got == reference))}
    if not shapes_match:
        return {"cosine": 0.0, "finite": True, "note": "shape differs"}
    got = np.stack(candidate).astype(np.float64)
    finite = bool(np.all(np.isfinite(got) | ~np.isfinite(reference)))
    if not finite:
        return {"cosine": 0.0, "finite": False}
    usable = np.isfinite(reference)
    reference, got = np.where(usable, reference, 0), np.where(usable, got, 0)
    if reference[0].size < SMALL_OUTPUT:
        return {"cosine": _cosine(reference, got), "finite": True, "pooled": True}
    return {"cosine": float(np.mean([_cosine(r, g) for r, g in zip(reference, got, strict=True)])), "finite": True}


def job_evaluate(job: dict) -> dict:
    """Load a candidate in ONNX Runtime and compare its outputs with the fp32 reference, output by output."""
    try:
        names, results = _outputs(job["model"], job["data"], job["per_sample"])
    except Exception as exc:  # the verdict is the point: a model that will not load or run is 'bad'
        return {"loads": False, "error": f"{type(exc).__name__}: {first_line(str(exc))[:300]}"}
    with np.load(job["reference"]) as npz:
        reference = [npz[f"o{j}"] for j in range(len(job["outputs"]))]
    compared = {}
    for j, name in enumerate(job["outputs"]):
        if name not in names:
            compared[name] = {"missing": True}
            continue
        k = names.index(name)
        compared[name] = compare_output(reference[j], [np.asarray(r[k]) for r in results])
    return {"loads": True, "outputs": compared}


class NpzReader(CalibrationDataReader):
    """ONNX Runtime's calibration reader over an .npz, one sample per get_next, as its examples do."""

    def __init__(self, path: str, per_sample: bool) -> None:
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
        self.feeds = iter(_sample_feeds(arrays, per_sample))

    def get_next(self) -> dict | None:
        return next(self.feeds, None)


def job_ort_tool(job: dict) -> dict:
    """ONNX Runtime's own tool with its default arguments."""
    tool, source, out = job["tool"], job["model"], job["out"]
    if tool == "ort-dynamic":
        quantize_dynamic(source, out)
    elif tool == "ort-static":
        quantize_static(source, out, NpzReader(job["data"], job["per_sample"]))
    else:
        onnx.save(convert_float_to_float16(onnx.load(source)), out)
    return {"written": Path(out).exists()}


def job_latency(job: dict) -> dict:
    """fp32 and the candidate timed interleaved on the first evaluation sample, as optc's report times its pair."""
    types = [{i.name: i.type for i in _session(path).get_inputs()} for path in (job["original"], job["model"])]
    if types[0] != types[1]:
        return {"speedup": None}  # fp16 inputs: the two models cannot share one feed
    with np.load(job["data"]) as npz:
        feed = _sample_feeds({k: npz[k][:1] for k in types[0]}, job["per_sample"])[0]
    stats = latency_table({"fp32": Path(job["original"]), "candidate": Path(job["model"])}, feed, **FAST_LATENCY)
    return {"speedup": stats["fp32"].p50_ms / stats["candidate"].p50_ms}


def job_onnxslim(job: dict) -> dict:
    import onnxslim  # only in the bench extra; without it this job reports the ImportError for its model

    return {"nodes": count_nodes(onnxslim.slim(job["model"]))}


JOBS = {
    "reference": job_reference,
    "evaluate": job_evaluate,
    "ort-tool": job_ort_tool,
    "latency": job_latency,
    "onnxslim": job_onnxslim,
}


def worker_main(job_file: str, answer_file: str) -> int:
    job = json.loads(Path(job_file).read_text())
    try:
        answer = JOBS[job["kind"]](job)
    except Exception as exc:  # reported to the runner as the job's outcome, never a crash of the runner
        answer = {"raised": f"{type(exc).__name__}: {first_line(str(exc))[:300]}"}
    Path(answer_file).write_text(json.dumps(answer))
    return 0


# ------------------------------------------------------------------------------------------- per model data


def count_nodes(model: onnx.ModelProto | onnx.GraphProto) -> int:
    graph = model.graph if isinstance(model, onnx.ModelProto) else model
    total = 0
    for node in graph.node:
        total += 1
        for attribute in node.attribute:
            for sub in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                total += count_nodes(sub)
    return total


def model_bytes(path: Path) -> int:
    """The model file plus the external-data files it names."""
    model = onnx.load(str(path), load_external_data=False)
    locations = {
        entry.value
        for tensor in model.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return path.stat().st_size + sum((path.parent / name).stat().st_size for name in locations)


def sample_count(name: str, path: Path, settings: dict) -> int:
    """The wanted sample count, fewer where one sample is large (a 1024x1024 page is 12 MB)."""
    one = corpus_inputs.make_inputs(name, path, 1, settings["seed"])
    per_sample = sum(a.nbytes for a in one.values())
    return int(max(MIN_SAMPLES, min(settings["samples"], settings["max_bytes"] // max(per_sample, 1))))


@dataclass
class ModelData:
    name: str
    path: Path
    folder: Path
    calibration: Path
    evaluation: Path
    reference: Path
    per_sample: bool
    outputs: list[str]
    facts: dict


def prepare_model(name: str) -> ModelData:
    path = CORPUS / f"{name}.onnx"
    folder = WORK / name
    folder.mkdir(parents=True, exist_ok=True)
    counts = {k: sample_count(name, path, s) for k, s in (("calibration", CALIBRATION), ("evaluation", EVALUATION))}
    calibration = corpus_inputs.write_npz(name, path, folder / "calib.npz", counts["calibration"], CALIBRATION["seed"])
    evaluation = corpus_inputs.write_npz(name, path, folder / "eval.npz", counts["evaluation"], EVALUATION["seed"])
    with np.load(evaluation) as npz:
        per_sample = corpus_inputs.is_per_sample({k: npz[k] for k in npz.files}, corpus_inputs.model_specs(path))
    reference = folder / "reference.npz"
    job = {"kind": "reference", "model": str(path), "data": str(evaluation), "per_sample": per_sample}
    outcome, answer = run_worker({**job, "out": str(reference)})
    if "outputs" not in answer:
        raise RuntimeError(f"{name}: the fp32 reference did not run: {answer.get('raised') or death(outcome)}")
    model = onnx.load(str(path), load_external_data=False)
    facts = {
        "family": corpus_inputs.MODEL_FAMILIES.get(name, "?"),
        "nodes": count_nodes(model),
        "bytes": model_bytes(path),
        "calibration_samples": counts["calibration"],
        "evaluation_samples": counts["evaluation"],
        "reference_finite": answer["finite"],
    }
    return ModelData(name, path, folder, calibration, evaluation, reference, per_sample, answer["outputs"], facts)


# ------------------------------------------------------------------------------------------ classification


def fidelity(data: ModelData, candidate: Path) -> dict:
    """The evaluation job's verdict, summarised: usable or why not, min cosine, min agreement."""
    job = {"kind": "evaluate", "model": str(candidate), "data": str(data.evaluation), "reference": str(data.reference)}
    outcome, answer = run_worker({**job, "per_sample": data.per_sample, "outputs": data.outputs})
    if not answer:
        return {"usable": False, "why": f"evaluation died: {death(outcome)}"}
    if answer.get("raised"):
        return {"usable": False, "why": f"evaluation raised {answer['raised']}"}
    if not answer["loads"]:
        return {"usable": False, "why": f"does not load/run in ONNX Runtime: {answer['error']}"}
    outputs = answer["outputs"]
    cosines = {n: o["cosine"] for n, o in outputs.items() if "cosine" in o}
    agreements = {n: o["agreement"] for n, o in outputs.items() if "agreement" in o}
    summary = {
        "min_cosine": min(cosines.values()) if cosines else None,
        "min_agreement": min(agreements.values()) if agreements else None,
        "outputs": outputs,
    }
    problems = [f"output {n!r} missing" for n, o in outputs.items() if o.get("missing")]
    problems += [f"output {n!r} not finite" for n, o in outputs.items() if o.get("finite") is False]
    problems += [f"output {n!r} cosine {c:.4f}" for n, c in cosines.items() if c < USABLE_COSINE]
    problems += [f"output {n!r} agreement {a:.1f} %" for n, a in agreements.items() if a < USABLE_AGREEMENT]
    return {**summary, "usable": not problems, "why": "; ".join(problems)}


def optc_message(outcome: Outcome, payload: dict) -> str:
    """optc's own message: the --json error when there is one, else the first line of stderr."""
    return first_line(payload.get("error") or "") or first_line(outcome.stderr)


def failed_gates(payload: dict) -> str:
    gates = (payload.get("report") or {}).get("gates") or []
    return "; ".join(f"{g['name']}: {g['detail']}" for g in gates if not g.get("passed"))


def cpu_measurement(payload: dict) -> dict:
    for measurement in (payload.get("report") or {}).get("measurements") or []:
        if measurement.get("provider") == "cpu" and measurement.get("measured"):
            return measurement
    return {}


def optc_claim(payload: dict) -> str | None:
    """What optc's own report says about accuracy, to set beside the runner's measurement."""
    accuracy = cpu_measurement(payload).get("accuracy") or {}
    if not accuracy:
        return None
    optimized = accuracy.get("optimized")
    return f"{accuracy.get('metric')} {'n/a' if optimized is None else format(optimized, '.2f')}"


def classify_optc(outcome: Outcome, payload: dict, verdict: dict | None) -> tuple[str, str]:
    code = outcome.returncode
    if code is None or outcome.timed_out or outcome.signalled:
        return "bad", death(outcome)
    message = optc_message(outcome, payload)
    if code in (2, 3):
        if RAW_EXCEPTION.search(message):
            return "bad", f"exit {code}, raw exception: {message}"
        return "refused", f"exit {code}: {message}"
    if code == 1:
        return "flagged", failed_gates(payload) or message
    if code == 0:
        if verdict is None:
            return "bad", "exit 0 but no model was written"
        return ("usable", "") if verdict["usable"] else ("bad", f"exit 0 but {verdict['why']}")
    return "bad", f"exit {code}: {message}"


def run_optc(data: ModelData, recipe: str, recipe_file: Path, mode: str) -> dict:
    folder = data.folder / f"{recipe}-{mode}"
    folder.mkdir(parents=True, exist_ok=True)
    output = folder / "model.onnx"
    extra = ["--data", str(data.evaluation), "--calibration-data", str(data.calibration)] if mode == "realistic" else []
    args = ["compress", str(data.path), "--recipe", str(recipe_file), "-o", str(output), "--json", "--quiet", *extra]
    # An empty working directory of its own: anything optc leaves in it is litter (issue class 8).
    with tempfile.TemporaryDirectory(prefix="corpus-cwd-") as cwd:
        outcome = run_limited(optc_command(*args, from_elsewhere=True), cwd=Path(cwd))
        litter = sorted(os.listdir(cwd))
    try:
        payload = json.loads(outcome.stdout) if outcome.stdout.strip() else {}
    except json.JSONDecodeError:
        payload = {}
    written = outcome.returncode in (0, 1) and output.exists()
    verdict = fidelity(data, output) if written else None
    status, reason = classify_optc(outcome, payload, verdict)
    if litter:
        status, reason = "bad", f"left {len(litter)} file(s) in its working directory: {', '.join(litter[:3])}"
    report = payload.get("report") or {}
    result = {
        "model": data.name,
        "recipe": recipe,
        "data": mode,
        "status": status,
        "reason": reason,
        "exit": outcome.returncode,
        "wall_s": round(outcome.wall_s, 1),
        "peak_rss_mb": round(outcome.peak_rss_mb),
        "min_cosine": (verdict or {}).get("min_cosine"),
        "min_agreement": (verdict or {}).get("min_agreement"),
        "fidelity_outputs": (verdict or {}).get("outputs"),
        "speedup": cpu_measurement(payload).get("speedup"),
        "optc_accuracy": optc_claim(payload),
        "size_ratio": report.get("size_ratio") if written else None,
        "nodes_after": report.get("optimized", {}).get("nodes") if written else None,
        "optc_stderr_first_line": first_line(outcome.stderr),
    }
    if recipe == "fuse" and written:
        result["nodes_after"] = count_nodes(onnx.load(str(output), load_external_data=False))
    discard(folder)
    return result


def discard(folder: Path) -> None:
    """Optimized models are deleted once evaluated (tens of GB over the corpus); reports stay."""
    if os.environ.get("OPTC_CORPUS_KEEP") == "1":
        return
    for path in folder.iterdir():
        if path.suffix in (".onnx", ".data") or path.name.endswith(".onnx.data"):
            path.unlink()


def run_ort_tool(data: ModelData, tool: str) -> dict:
    folder = data.folder / tool
    folder.mkdir(parents=True, exist_ok=True)
    output = folder / "model.onnx"
    job = {"kind": "ort-tool", "tool": tool, "model": str(data.path), "out": str(output)}
    outcome, answer = run_worker({**job, "data": str(data.calibration), "per_sample": data.per_sample})
    result = {"model": data.name, "tool": tool, "matches": ORT_TOOLS[tool], "wall_s": round(outcome.wall_s, 1)}
    if answer.get("raised"):
        status, reason, verdict = "failed", f"raised {answer['raised']}", {}
    elif not answer or not output.exists():
        status, reason, verdict = "failed", death(outcome) if not answer else "wrote nothing", {}
    else:
        verdict = fidelity(data, output)
        status, reason = ("usable", "") if verdict["usable"] else ("bad", verdict["why"])
        result["size_ratio"] = sum(p.stat().st_size for p in folder.iterdir()) / data.facts["bytes"]
        timing = {"kind": "latency", "original": str(data.path), "model": str(output), "data": str(data.evaluation)}
        result["speedup"] = run_worker({**timing, "per_sample": data.per_sample})[1].get("speedup")
    result.update(status=status, reason=reason, min_cosine=verdict.get("min_cosine"))
    result["min_agreement"] = verdict.get("min_agreement")
    discard(folder)
    return result


def run_onnxslim(data: ModelData) -> dict:
    outcome, answer = run_worker({"kind": "onnxslim", "model": str(data.path)})
    if "nodes" in answer:
        return {"model": data.name, "nodes": answer["nodes"], "error": None}
    return {"model": data.name, "nodes": None, "error": answer.get("raised") or death(outcome)}


# --------------------------------------------------------------------------------------------------- the run


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def machine() -> dict:
    flags = subprocess.run(
        "grep -o -w -E 'avx2|avx512f|avx512_vnni|avx_vnni|amx_int8' /proc/cpuinfo | sort -u",
        shell=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return {
        "cpu": cpu_model(),
        "isa": flags,
        "cpu_count": os.cpu_count(),
        "threads": THREADS,
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
    }


def load_results() -> dict:
    if RESULTS_JSON.exists():
        return json.loads(RESULTS_JSON.read_text())
    return {"runs": [], "ort": [], "slim": [], "models": {}}


def save_results(results: dict) -> None:
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    part = RESULTS_JSON.with_suffix(".json.part")
    part.write_text(json.dumps(results, indent=1))
    part.replace(RESULTS_JSON)


def merge_results(parts: list[dict], order: list[str]) -> dict:
    """One results file from runners that split the recipes (one runner per core, each with its own checkout):
    runs, tool runs and onnxslim rows put together, the first part's machine, and every recipe that has runs, in
    ``order`` (a resumed runner's config lists only the recipes it re-ran)."""
    merged = {"runs": [], "ort": [], "slim": [], "models": {}, "machine": parts[0].get("machine", {})}
    for part in parts:
        for key in ("runs", "ort", "slim"):
            merged[key] += part.get(key, [])
        merged["models"].update(part.get("models", {}))
    recipes = sorted({r["recipe"] for r in merged["runs"]}, key=lambda r: order.index(r) if r in order else len(order))
    merged["config"] = {**parts[0].get("config", {}), "recipes": recipes}
    return merged


def fresh_results(keep: dict) -> dict:
    """Results to fill: the old ones when resuming (only missing runs are run), else empty."""
    base = keep if os.environ.get("OPTC_CORPUS_RESUME") == "1" else {"runs": [], "ort": [], "slim": [], "models": {}}
    config = {"timeout_s": timeout_s(), "fast_latency": FAST_LATENCY, "optc": optc_version()}
    return {**base, "machine": machine(), "config": config}


def progress(message: str) -> None:
    print(f"   {message}", file=sys.stderr, flush=True)


def bench_model(name: str, recipes: dict[str, Path], results: dict) -> None:
    done = {(r["model"], r["recipe"], r["data"]) for r in results["runs"]}
    tools_done = {(r["model"], r["tool"]) for r in results["ort"]}
    wanted_runs = {(name, recipe, mode) for recipe in recipes for mode in data_modes()}
    wanted_tools = {(name, tool) for tool, recipe in ORT_TOOLS.items() if recipe in recipes}
    slim_missing = "fuse" in recipes and not any(s["model"] == name for s in results["slim"])
    if wanted_runs <= done and wanted_tools <= tools_done and not slim_missing:
        return  # resuming, and nothing is missing for this model
    progress(f"{name}: preparing data")
    try:
        data = prepare_model(name)
    except Exception as exc:  # one model's broken inputs must not stop the scoreboard
        results["models"][name] = {"error": f"{type(exc).__name__}: {first_line(str(exc))}"}
        return
    results["models"][name] = data.facts
    for recipe, recipe_file in recipes.items():
        for mode in data_modes():
            if (name, recipe, mode) in done:
                continue
            result = run_optc(data, recipe, recipe_file, mode)
            progress(f"{name} {recipe} {mode}: {result['status']} {result['reason'][:100]}")
            results["runs"].append(result)
            save_results(results)
    for tool, recipe in ORT_TOOLS.items():
        if recipe in recipes and (name, tool) not in tools_done:
            result = run_ort_tool(data, tool)
            progress(f"{name} {tool}: {result['status']} {result['reason'][:100]}")
            results["ort"].append(result)
            save_results(results)
    if slim_missing:
        results["slim"].append(run_onnxslim(data))
        save_results(results)


def run() -> str:
    ensure_corpus()
    WORK.mkdir(parents=True, exist_ok=True)
    results = fresh_results(load_results())
    recipes = {name: fast_recipe(name, WORK) for name in recipe_names()}
    results["config"]["recipes"] = list(recipes)
    for name in model_names():
        bench_model(name, recipes, results)
    save_results(results)
    return render(results)


# ------------------------------------------------------------------------------------------------- rendering


def cell(text: object, limit: int = 110) -> str:
    text = "" if text is None else str(text)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def number(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def summary_table(results: dict) -> list[str]:
    recipes = results.get("config", {}).get("recipes") or sorted({r["recipe"] for r in results["runs"]})
    ort_by_recipe = {
        recipe: Counter(r["status"] for r in results["ort"] if r["matches"] == recipe) for recipe in recipes
    }
    # Models shipped already quantized: every quantizing recipe refuses them by design (quantizing twice breaks a
    # model), so a second percentage leaves them out.
    quantized = {r["model"] for r in results["runs"] if "already quantized" in r["reason"]}
    lines = [
        "| recipe | data | usable | usable at ≥ 1.0× fp32 | refused | flagged | bad | usable % "
        "| usable %, not already quantized "
        "| ONNX Runtime tool, same models | usable | failed | bad |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for recipe in recipes:
        for mode in DATA_MODES:
            runs = [r for r in results["runs"] if r["recipe"] == recipe and r["data"] == mode]
            counts = Counter(r["status"] for r in runs)
            total = sum(counts.values())
            applicable = [r for r in runs if r["model"] not in quantized]
            usable_applicable = sum(r["status"] == "usable" for r in applicable)
            not_slower = sum(r["status"] == "usable" and round(r.get("speedup") or 0, 2) >= 1.0 for r in runs)
            if not total:
                continue
            tool = next((t for t, m in ORT_TOOLS.items() if m == recipe), None)
            ort = ort_by_recipe.get(recipe, Counter())
            timed = [
                r["speedup"]
                for r in results["ort"]
                if r["matches"] == recipe and r["status"] == "usable" and r.get("speedup") is not None
            ]
            slower = f" ({sum(round(s, 2) >= 1.0 for s in timed)} at ≥ 1.0× fp32)" if timed else ""
            ort_cells = (
                f"{tool} | {ort['usable']}{slower} | {ort['failed']} | {ort['bad']}"
                if tool and mode == "realistic" and ort
                else " | | |"
            )
            lines.append(
                f"| {recipe} | {mode} | {counts['usable']} | {not_slower} | {counts['refused']} "
                f"| {counts['flagged']} | {counts['bad']} | {100 * counts['usable'] / total:.0f} % "
                f"| {100 * usable_applicable / max(len(applicable), 1):.0f} % ({usable_applicable}/{len(applicable)}) "
                f"| {ort_cells} |"
            )
    return lines


def wall_time_lines(results: dict, slow: str = "int8-accurate", fast: str = "int8") -> list[str]:
    """``slow``'s wall time over ``fast``'s on the models where both were usable with realistic data."""
    walls = {
        (r["model"], r["recipe"]): r["wall_s"]
        for r in results["runs"]
        if r["data"] == "realistic" and r.get("wall_s")  # a re-read section's older rows have none
    }
    usable = {
        (r["model"], r["recipe"]) for r in results["runs"] if r["status"] == "usable" and r["data"] == "realistic"
    }
    ratios = sorted(
        (walls[(m, slow)] / walls[(m, fast)], m)
        for m, recipe in usable
        if recipe == slow and (m, fast) in usable and (m, slow) in walls and (m, fast) in walls
    )
    if not ratios:
        return []
    values = [r for r, _ in ratios]
    over = ", ".join(f"{m} {r:.1f}×" for r, m in ratios if r > 3)
    return [
        f"`{slow}` wall time over `{fast}`'s, same model and data, {len(ratios)} models where both were usable: "
        f"median {np.median(values):.2f}×, max {values[-1]:.2f}×; {sum(v <= 3 for v in values)} of {len(values)} "
        f"within 3×{f' (over: {over})' if over else ''}.",
    ]


def runs_table(results: dict) -> list[str]:
    lines = [
        "| model | recipe | data | status | reason | min cosine | int agreement | optc's own accuracy | speed-up "
        "| size ratio | wall s |",
        "|---|---|---|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for r in sorted(results["runs"], key=lambda r: (r["model"], r["recipe"], r["data"])):
        lines.append(
            f"| {r['model']} | {r['recipe']} | {r['data']} | {r['status']} | {cell(r['reason'])} | "
            f"{number(r['min_cosine'], '.4f')} | {number(r['min_agreement'], '.1f')} | {r.get('optc_accuracy') or ''} "
            f"| {number(r['speedup'], '.2f')} | {number(r['size_ratio'], '.3f')} | {number(r.get('wall_s'), '.0f')} |"
        )
    return lines


def ort_table(results: dict) -> list[str]:
    lines = [
        "| model | tool | status | reason | min cosine | int agreement | speed-up | size ratio |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in sorted(results["ort"], key=lambda r: (r["model"], r["tool"])):
        lines.append(
            f"| {r['model']} | {r['tool']} | {r['status']} | {cell(r['reason'])} "
            f"| {number(r.get('min_cosine'), '.4f')} | {number(r.get('min_agreement'), '.1f')} "
            f"| {number(r.get('speedup'), '.2f')} | {number(r.get('size_ratio'), '.3f')} |"
        )
    return lines


def slim_table(results: dict) -> list[str]:
    fuse = {r["model"]: r for r in results["runs"] if r["recipe"] == "fuse" and r["data"] == "realistic"}
    lines = ["| model | original nodes | optc fuse nodes (status) | onnxslim nodes |", "|---|---:|---:|---:|"]
    for s in sorted(results["slim"], key=lambda s: s["model"]):
        original = results["models"].get(s["model"], {}).get("nodes")
        run = fuse.get(s["model"], {})
        fused = f"{run.get('nodes_after') or ''} ({run.get('status', 'not run')})"
        slim = s["nodes"] if s["nodes"] is not None else f"failed: {cell(s['error'], 60)}"
        lines.append(f"| {s['model']} | {original} | {fused} | {slim} |")
    return lines


def models_table(results: dict) -> list[str]:
    lines = ["| model | family | nodes | calibration / evaluation samples |", "|---|---|---:|---|"]
    for name, facts in sorted(results["models"].items()):
        if "error" in facts:
            lines.append(f"| {name} | | | inputs failed: {cell(facts['error'])} |")
        else:
            lines.append(
                f"| {name} | {facts['family']} | {facts['nodes']} | "
                f"{facts['calibration_samples']} / {facts['evaluation_samples']} |"
            )
    return lines


def _recipes_phrase(results: dict) -> str:
    """'Every built-in recipe', or the ones this run covered where OPTC_CORPUS_RECIPES picked a subset."""
    covered = results.get("config", {}).get("recipes") or []
    built_in = built_in_recipes()
    if not covered or set(built_in) <= set(covered):
        return "Every built-in recipe"
    return f"The built-in recipes {', '.join(f'`{r}`' for r in covered)} ({len(covered)} of {len(built_in)})"


def render(results: dict) -> str:
    m = results.get("machine", {})
    lines = [
        f"{_recipes_phrase(results)} over {len(results['models'])} third-party models "
        "(bench/.cache/corpus, inputs from `bench/corpus_inputs.py`), with realistic data (`--data` held-out set, seed "
        "2; `--calibration-data`, seed 1) and without any. Latency settings cut to 1 warm-up and 3 runs, so speed-ups "
        "are rough. Classified by the runner, not by optc's report: **usable** = exit 0, loads in ONNX Runtime, "
        "finite, every float output's "
        f"cosine to fp32 on the held-out set ≥ {USABLE_COSINE} (outputs under {SMALL_OUTPUT} values per sample "
        f"compared over the whole set) and integer outputs ≥ {USABLE_AGREEMENT:.0f} % equal; **flagged** = exit 1 "
        "(gate failed); **refused** = exit 2/3 with optc's message; **bad** = anything else (degraded or broken "
        "output at exit 0, exit 4, signal, timeout, or a raw Python exception passed through). ONNX Runtime's tools "
        "use default arguments on the same models and inputs; their speed-up is timed by the runner (fp32 and the "
        "tool's model interleaved on the first evaluation sample, same settings).",
        "",
        f"Machine: {m.get('cpu', '?')}, {m.get('cpu_count', '?')} CPUs, ISA {' '.join(m.get('isa', [])) or 'none of'} "
        f"(of avx2/avx512f/avx512_vnni/avx_vnni/amx_int8); {m.get('threads', '?')} intra-op thread per session; "
        f"onnxruntime {m.get('onnxruntime', '?')}, onnx {m.get('onnx', '?')}; limit "
        f"{results.get('config', {}).get('timeout_s', '?')} s per run; {results.get('config', {}).get('optc', '')}.",
        "",
        "### Summary per recipe and data mode",
        "",
        *summary_table(results),
        "",
        *wall_time_lines(results),
        "",
        "### Every run",
        "",
        *runs_table(results),
        "",
        "### ONNX Runtime's own tools (default arguments)",
        "",
        *ort_table(results),
        "",
    ]
    if results["slim"]:
        lines += ["### Node count: optc `fuse` vs onnxslim", "", *slim_table(results), ""]
    lines += ["### Models", "", *models_table(results), ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- re-reading


def reread(section: str) -> dict:
    """The results a rendered section shows, as ``render`` takes them: its tables' rows read back (reasons as cut
    to fit a cell; wall times where the section has that column). Several sections' results merge as runners' do."""
    rows: dict[str, list[list[str]]] = {}  # by the heading above the table, header and rule lines left out
    heading, header = None, None
    for line in section.splitlines():
        if line.startswith("#"):
            heading, header = line.lstrip("#").strip(), None
        elif line.startswith("|") and heading is not None:
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if header is None:
                header = cells
            elif not cells[0].startswith("---"):
                rows.setdefault(heading, []).append(cells)

    def value(text: str) -> float | None:
        return float(text) if text else None

    runs = [
        {
            "model": r[0],
            "recipe": r[1],
            "data": r[2],
            "status": r[3],
            "reason": r[4],
            "min_cosine": value(r[5]),
            "min_agreement": value(r[6]),
            "optc_accuracy": r[7] or None,
            "speedup": value(r[8]),
            "size_ratio": value(r[9]),
            "wall_s": value(r[10]) if len(r) > 10 else None,
        }
        for r in rows.get("Every run", [])
    ]
    fused = {r[0]: r[2].split(" (")[0] for r in rows.get("Node count: optc `fuse` vs onnxslim", [])}
    for run in runs:
        if run["recipe"] == "fuse" and run["data"] == "realistic" and fused.get(run["model"]):
            run["nodes_after"] = int(fused[run["model"]])
    ort_runs = [
        {
            "model": r[0],
            "tool": r[1],
            "matches": ORT_TOOLS[r[1]],
            "status": r[2],
            "reason": r[3],
            "min_cosine": value(r[4]),
            "min_agreement": value(r[5]),
            "speedup": value(r[6]),
            "size_ratio": value(r[7]),
        }
        for r in rows.get("ONNX Runtime's own tools (default arguments)", [])
    ]
    slim = [
        {"model": r[0], "nodes": int(r[3]), "error": None}
        if r[3].isdigit()
        else {"model": r[0], "nodes": None, "error": r[3].removeprefix("failed: ")}
        for r in rows.get("Node count: optc `fuse` vs onnxslim", [])
    ]
    models = {
        r[0]: {"error": r[3].removeprefix("inputs failed: ")}
        if r[3].startswith("inputs failed")
        else {
            "family": r[1],
            "nodes": int(r[2]),
            **dict(zip(("calibration_samples", "evaluation_samples"), map(int, r[3].split(" / ")), strict=True)),
        }
        for r in rows.get("Models", [])
    }
    return {"runs": runs, "ort": ort_runs, "slim": slim, "models": models}


def main(argv: list[str]) -> int:
    if argv[:1] == ["worker"]:
        return worker_main(argv[1], argv[2])
    if argv[:1] == ["render"]:
        print(render(load_results()))
        return 0
    if argv[:1] == ["reread"]:
        results = reread(Path(argv[1]).read_text())
        save_results({**results, "config": {"recipes": sorted({r["recipe"] for r in results["runs"]})}})
        print(render(load_results()))
        return 0
    if argv[:1] == ["merge"]:
        save_results(merge_results([json.loads(Path(path).read_text()) for path in argv[1:]], built_in_recipes()))
        print(render(load_results()))
        return 0
    print(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
