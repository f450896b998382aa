"""optc's commands. Each parses its arguments, calls into optc, and renders the result; errors become exit codes
in one place, ``handles_errors``."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from typer.core import TyperCommand

import optc
from optc.cli.output import OUTPUT, TerminalProgress
from optc.errors import ExitCode, OptcError
from optc.limits import MAX_BATCH_SIZE, MAX_MIN_TIME_S, MAX_RUNS, MAX_WARMUP, max_threads
from optc.messages import exception_reason, printable
from optc.target import TARGET_HELP, Target

EXIT_CODES_HELP = (
    "Exit codes: 0 written and every gate held; 1 a gate failed (the model and report are written under rejected "
    "names, see --on-gate-failure); 2 bad usage or bad input, nothing written; 3 a pass failed, nothing written; "
    "4 internal error (a bug in optc), nothing written; 130 interrupted, nothing written."
)
READ_ONLY_EXIT_CODES = (
    "Exit codes: 0 done; 2 bad usage or bad input; 4 internal error (a bug in optc); 130 interrupted."
)


class OptcCommand(TyperCommand):
    """Usage lines the way shell tools write them: ``optc compress [OPTIONS] MODEL``."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name != "argument":
                continue
            name = (param.metavar or param.name or "").upper() + ("..." if param.nargs != 1 else "")
            pieces.append(name if param.required else f"[{name}]")
        return pieces


def handles_errors(command: Callable[..., None]) -> Callable[..., None]:
    """Map every error a command meets to one message on stderr and an exit code; never a traceback."""

    @functools.wraps(command)
    def run(*args, **kwargs) -> None:
        try:
            with quiet_libraries():
                command(*args, **kwargs)
        except OptcError as exc:
            _fail(exc.exit_code, exc.message, exc.hint)
        except KeyboardInterrupt:
            _fail(ExitCode.INTERRUPTED, "interrupted; nothing was written", None)
        except BrokenPipeError:
            # The reader of stdout went away (``optc report schema | head``): not an error of ours. Point stdout at
            # /dev/null so the interpreter's final flush does not raise again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except Exception as exc:  # noqa: BLE001 - a bug in optc: say so plainly, without a traceback
            _fail(
                ExitCode.INTERNAL,
                f"internal error: {type(exc).__name__}: {exception_reason(exc)}",
                "this is a bug in optc; please report it with the command you ran",
            )

    return run


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Keep numpy's, onnx's and ONNX Runtime's own warnings off stderr: it carries optc's messages, one per problem,
    and what matters of a library's complaint reaches the user through them."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(4)  # fatal only: its C++ warnings and errors go straight to stderr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _fail(code: ExitCode, message: str, hint: str | None) -> None:
    OUTPUT.error(message, hint)
    if OUTPUT.json_mode:
        OUTPUT.json({"error": message, "hint": hint, "exit_code": int(code)})
    raise SystemExit(int(code))


app = typer.Typer(
    name="optc",
    help="Make ONNX models smaller and faster without losing track of their accuracy.\n\n" + EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
recipes_app = typer.Typer(help="List, show, validate built-in and custom recipes.", no_args_is_help=True)
app.add_typer(recipes_app, name="recipes")
report_app = typer.Typer(help="The report.json schema, and saved reports re-rendered.", no_args_is_help=True)
app.add_typer(report_app, name="report")

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout and nothing else.")]
DataOption = Annotated[
    Optional[Path],
    typer.Option(metavar="DATA", help="Inputs: .npz named after the model inputs (optional 'labels'), or a folder."),
]
InputShapeOption = Annotated[
    Optional[list[str]],
    typer.Option(metavar="NAME=DIMS", help="Shape for an input with symbolic dims, e.g. input_ids=1x128 (repeatable)."),
]
SeedOption = Annotated[int, typer.Option(metavar="N", help="Seed for synthetic inputs.")]
TargetOption = Annotated[
    Optional[Target],
    typer.Option("--target", help=f"The machine the model is for (wins over the recipe's target). {TARGET_HELP}."),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or tables; errors still go to stderr.")]


def _version(value: bool) -> None:
    if value:
        print(f"optc {optc.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    OUTPUT.configure(json_mode=False, quiet=False)


@app.command(cls=OptcCommand, epilog=EXIT_CODES_HELP)
@handles_errors
def compress(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="The ONNX model to optimize (never modified).")],
    recipe: Annotated[
        str,
        typer.Option("--recipe", "-r", metavar="RECIPE", help="Recipe file, or a built-in name (optc recipes list)."),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", metavar="FILE", help="Where to write the optimized model.")],
    data: Annotated[
        Optional[Path],
        typer.Option(
            metavar="DATA",
            help="Evaluation data (.npz named after the inputs, optional 'labels'); wins over the recipe.",
        ),
    ] = None,
    calibration_data: Annotated[
        Optional[Path],
        typer.Option(
            metavar="DATA", help="Calibration data for static quantization (.npz or a folder); wins over the recipe."
        ),
    ] = None,
    providers: Annotated[
        Optional[str],
        typer.Option(metavar="cpu,cuda", help="Providers to measure on, comma-separated (wins over the recipe)."),
    ] = None,
    max_accuracy_drop: Annotated[
        Optional[float], typer.Option(metavar="POINTS", help="Gate: largest allowed accuracy drop in points.")
    ] = None,
    min_speedup: Annotated[
        Optional[float], typer.Option(metavar="RATIO", help="Gate: smallest allowed p50 speedup.")
    ] = None,
    max_size_ratio: Annotated[
        Optional[float], typer.Option(metavar="RATIO", help="Gate: largest allowed size ratio new/original.")
    ] = None,
    min_cosine: Annotated[
        Optional[float],
        typer.Option(
            metavar="COSINE",
            min=-1,
            max=1,
            help="Gate: lowest allowed output cosine to the original (built-in recipes: 0.98; -1 turns it off).",
        ),
    ] = None,
    input_shape: InputShapeOption = None,
    report: Annotated[
        Optional[Path],
        typer.Option(
            metavar="FILE",
            help="Where to write the JSON report (.md and .html go beside it); default: named after the output, "
            "model.int8.report.json.",
        ),
    ] = None,
    seed: SeedOption = 0,
    profile: Annotated[
        bool, typer.Option("--profile", help="Also profile both models per op type (ONNX Runtime's profiler).")
    ] = False,
    target: TargetOption = None,
    on_gate_failure: Annotated[
        Literal["rejected", "write", "discard"],
        typer.Option(
            help="When a gate fails: write the model and reports beside OUTPUT under rejected names "
            "(model.int8.rejected.onnx), so the target does not look built (default); write them to OUTPUT anyway; "
            "or write nothing. The exit code is 1 in every case."
        ),
    ] = "rejected",
    allow_unmeasured: Annotated[
        bool,
        typer.Option(
            "--allow-unmeasured", help="Write the model even when none of the providers asked for can measure it."
        ),
    ] = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Run a recipe's passes on MODEL, measure the result against the original, write the model and a report.

    \b
    Examples:
      optc compress model.onnx --recipe int8-dynamic -o build/model.int8.onnx
      optc compress model.onnx -r my-recipe.yaml -o out.onnx --data eval.npz \\
          --max-accuracy-drop 1 --json
    """
    from optc.cli.render import report_view
    from optc.compress import CompressRequest
    from optc.compress import compress as run_compress
    from optc.data import parse_input_shapes
    from optc.recipe import load_recipe

    OUTPUT.configure(json_output, quiet)
    provider_list = _providers(providers) if providers is not None else None
    gates = {
        name: value
        for name, value in (
            ("max_accuracy_drop", max_accuracy_drop),
            ("min_speedup", min_speedup),
            ("max_size_ratio", max_size_ratio),
            ("min_cosine", min_cosine),
        )
        if value is not None
    }
    for name, value in gates.items():
        if name != "min_cosine" and (value < 0 or (name != "max_accuracy_drop" and value == 0)):
            raise OptcError(f"--{name.replace('_', '-')} {value}: must be positive")
    request = CompressRequest(
        model_path=model,
        output_path=output,
        recipe=load_recipe(recipe),
        data_path=data,
        calibration_data=calibration_data,
        providers=provider_list,
        gate_overrides=gates,
        input_shapes=parse_input_shapes(input_shape or []),
        report_path=report,
        seed=seed,
        profile=profile,
        target=target,
        on_gate_failure=on_gate_failure,
        allow_unmeasured=allow_unmeasured,
    )
    result = run_compress(request, TerminalProgress(OUTPUT))
    exit_code = ExitCode.GATE_FAILED if result.rejected else ExitCode.OK
    written = {k: str(v) for k, v in result.written.paths().items() if v.exists()} if result.written else {}
    if json_output:
        OUTPUT.json(
            {
                "exit_code": int(exit_code),
                "written": written,
                "rejected": result.rejected,
                "report": json.loads(result.report.model_dump_json()),
            }
        )
    else:
        OUTPUT.result(report_view(result.report))
        if written and not quiet and not result.rejected:
            OUTPUT.stderr.print(printable("wrote " + ", ".join(written.values())))
    if result.rejected:
        failed = "; ".join(g.detail for g in result.report.gates if not g.passed)
        kept = {
            "rejected": f"the model and its reports were written as {', '.join(written.values())}; {output} was "
            "not touched",
            "write": f"the model and its reports were written anyway: {', '.join(written.values())}",
            "discard": "nothing was written",
        }[on_gate_failure]
        OUTPUT.error(f"gate failed: {failed}", kept)
        raise SystemExit(int(exit_code))


@app.command(cls=OptcCommand, epilog=READ_ONLY_EXIT_CODES)
@handles_errors
def inspect(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="The ONNX model to describe.")],
    nodes: Annotated[bool, typer.Option("--nodes", help="Also list every node's name and op type.")] = False,
    sensitivity: Annotated[
        bool,
        typer.Option(
            "--sensitivity",
            help="Rank nodes by the output error that static int8 quantization of each alone causes "
            "(calibrated on --calibration-data, else synthetic inputs).",
        ),
    ] = False,
    calibration_data: Annotated[
        Optional[Path],
        typer.Option(
            metavar="DATA", help="With --sensitivity: calibration data (.npz named after the inputs, or a folder)."
        ),
    ] = None,
    target: TargetOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Describe a model: opset, IR version, inputs/outputs, op types, parameters, size, sparsity, quantization.

    \b
    Examples:
      optc inspect model.onnx --json
      optc inspect model.onnx --sensitivity --calibration-data calib.npz
    """
    from optc.cli.render import sensitivity_view, summary_view
    from optc.model_facts import summarize
    from optc.modelio import load_model

    OUTPUT.configure(json_output, quiet)
    loaded = load_model(model)
    summary = summarize(loaded.model, str(model), loaded.size_bytes, with_nodes=nodes)
    table = None
    if sensitivity:
        from optc.passes.quantize_static import sensitivity_of_nodes
        from optc.target import detect_cpu, resolve_target

        if calibration_data is None:
            TerminalProgress(OUTPUT).warn("no --calibration-data: sensitivity is measured on seeded synthetic inputs")
        table = sensitivity_of_nodes(loaded.model, calibration_data, resolve_target(target or "auto", detect_cpu()))
    if json_output:
        OUTPUT.json(json.loads(summary.model_dump_json()) | ({"sensitivity": table} if sensitivity else {}))
        return
    OUTPUT.result(summary_view(summary))
    if table is not None:
        OUTPUT.result(sensitivity_view(table))


@recipes_app.command("list", cls=OptcCommand, epilog=READ_ONLY_EXIT_CODES)
@handles_errors
def recipes_list(json_output: JsonOption = False) -> None:
    """List the built-in recipes.

    \b
    Example:
      optc recipes list
    """
    from rich.table import Table

    from optc.recipe import builtin_recipe_names, load_recipe

    OUTPUT.configure(json_output, False)
    entries = [(name, load_recipe(name).recipe.description or "") for name in builtin_recipe_names()]
    if json_output:
        OUTPUT.json([{"name": n, "description": d} for n, d in entries])
        return
    table = Table(title="built-in recipes (use with --recipe NAME)", title_justify="left")
    table.add_column("name")
    table.add_column("what it does")
    for name, description in entries:
        table.add_row(name, description)
    OUTPUT.result(table)


@recipes_app.command("show", cls=OptcCommand, epilog=READ_ONLY_EXIT_CODES)
@handles_errors
def recipes_show(name: Annotated[str, typer.Argument(metavar="NAME", help="A built-in recipe name.")]) -> None:
    """Print a built-in recipe's YAML, to copy and adapt.

    \b
    Example:
      optc recipes show int8-dynamic > my-recipe.yaml
    """
    from optc.recipe import builtin_recipe_names, builtin_recipe_text

    OUTPUT.configure(False, False)
    if name not in builtin_recipe_names():
        raise OptcError(f"no built-in recipe named {name!r}", hint=f"built-ins: {', '.join(builtin_recipe_names())}")
    sys.stdout.write(builtin_recipe_text(name))


@recipes_app.command("validate", cls=OptcCommand, epilog="Exit codes: 0 valid; 2 invalid or unreadable.")
@handles_errors
def recipes_validate(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A recipe YAML file.")], json_output: JsonOption = False
) -> None:
    """Check a recipe file; exit 0 if valid, 2 with the problems otherwise.

    \b
    Example:
      optc recipes validate my-recipe.yaml
    """
    from optc.recipe import load_recipe

    OUTPUT.configure(json_output, False)
    if not file.is_file():
        raise OptcError(f"{file}: no such recipe file")
    loaded = load_recipe(file)
    if json_output:
        OUTPUT.json({"valid": True, "recipe": json.loads(loaded.recipe.model_dump_json())})
    else:
        OUTPUT.result(f"{file}: valid ({len(loaded.recipe.passes)} pass(es))")


@recipes_app.command("schema", cls=OptcCommand, epilog=READ_ONLY_EXIT_CODES)
@handles_errors
def recipes_schema() -> None:
    """Print the recipe JSON Schema, for editors that validate YAML.

    \b
    Example:
      optc recipes schema > optc-recipe.schema.json
    """
    from optc.recipe import recipe_json_schema

    print(json.dumps(recipe_json_schema(), indent=2))


def _interrupt_on_sigterm(signum, frame) -> None:
    # Deploy pipelines and CI time-outs stop jobs with SIGTERM: unwind like Ctrl-C so temporary files are removed.
    raise KeyboardInterrupt


@app.command(cls=OptcCommand, epilog="Exit codes: 0 measured; 2 bad usage or input; 4 internal error; 130 interrupted.")
@handles_errors
def bench(
    models: Annotated[
        list[Path], typer.Argument(metavar="MODELS", help="One or more ONNX models; each is compared to the first.")
    ],
    providers: Annotated[str, typer.Option(metavar="cpu,cuda", help="Providers, comma-separated.")] = "cpu",
    batch_sizes: Annotated[str, typer.Option(metavar="N,N,...", help="Batch sizes, comma-separated.")] = "1",
    threads: Annotated[str, typer.Option(metavar="N,N,...", help="Intra-op thread counts, comma-separated.")] = "1",
    warmup: Annotated[
        int, typer.Option(metavar="N", min=0, max=MAX_WARMUP, help="Untimed runs of each model first.")
    ] = 10,
    runs: Annotated[
        int, typer.Option(metavar="N", min=1, max=MAX_RUNS, help="At least this many interleaved rounds.")
    ] = 50,
    min_time: Annotated[
        float,
        typer.Option(metavar="SECONDS", min=0, max=MAX_MIN_TIME_S, help="And at least this many seconds of timing."),
    ] = 1.0,
    data: DataOption = None,
    input_shape: InputShapeOption = None,
    include_copies: Annotated[
        bool, typer.Option("--include-copies", help="CUDA: time host-device copies too (default: device only).")
    ] = False,
    profile: Annotated[bool, typer.Option("--profile", help="Also profile each model per op type.")] = False,
    max_cv: Annotated[
        float, typer.Option(metavar="CV", min=0, help="Warn when runs scatter more than this (stdev/mean).")
    ] = 0.10,
    seed: SeedOption = 0,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Latency, throughput and peak memory of MODELS on each provider, batch size and thread count.

    With several models their runs are interleaved and each gets its p50 ratio to the first, with the noise bound
    within which a ratio cannot be told from 1.0.

    \b
    Examples:
      optc bench model.onnx --batch-sizes 1,32
      optc bench model.onnx model.int8.onnx --providers cpu,cuda --profile --json
    """
    from optc.cli.render import bench_view
    from optc.data import parse_input_shapes
    from optc.measure.bench import BenchRequest
    from optc.measure.bench import bench as run_bench

    OUTPUT.configure(json_output, quiet)
    request = BenchRequest(
        models=models,
        providers=_providers(providers),
        batch_sizes=_positive_ints("--batch-sizes", batch_sizes, MAX_BATCH_SIZE),
        threads=_positive_ints("--threads", threads, max_threads()),
        warmup=warmup,
        runs=runs,
        min_time_s=min_time,
        data=data,
        input_shapes=parse_input_shapes(input_shape or []),
        seed=seed,
        include_copies=include_copies,
        profile=profile,
        max_cv=max_cv,
    )
    result = run_bench(request, TerminalProgress(OUTPUT))
    if json_output:
        OUTPUT.json(json.loads(result.model_dump_json()))
    else:
        OUTPUT.result(bench_view(result))


@app.command(cls=OptcCommand, epilog="Exit codes: 0 compared; 2 bad usage or input; 4 internal error; 130 interrupted.")
@handles_errors
def compare(
    original: Annotated[Path, typer.Argument(metavar="ORIGINAL", help="The reference model.")],
    optimized: Annotated[Path, typer.Argument(metavar="OPTIMIZED", help="The model to check against it.")],
    data: DataOption = None,
    samples: Annotated[Optional[int], typer.Option(metavar="N", min=1, help="Use at most this many samples.")] = None,
    per_tensor: Annotated[
        bool, typer.Option("--per-tensor", help="Also the error of every intermediate tensor both graphs share.")
    ] = False,
    top: Annotated[
        int, typer.Option(metavar="N", min=1, help="Per-tensor rows shown in the table (JSON has all).")
    ] = 20,
    providers: Annotated[
        str, typer.Option(metavar="cpu|cuda", help="The provider to run both models on (one).")
    ] = "cpu",
    input_shape: InputShapeOption = None,
    seed: SeedOption = 0,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """How far OPTIMIZED departs from ORIGINAL: per-output cosine, max/mean abs error, SQNR, top-1/top-5 agreement;
    accuracy of both with labels; with --per-tensor, every shared intermediate tensor, worst first.

    \b
    Examples:
      optc compare model.onnx model.int8.onnx --data eval.npz
      optc compare model.onnx model.int8.onnx --data eval.npz --per-tensor --json
    """
    from optc.cli.render import compare_view
    from optc.data import parse_input_shapes
    from optc.measure.compare import CompareRequest
    from optc.measure.compare import compare as run_compare

    OUTPUT.configure(json_output, quiet)
    chosen = _providers(providers)
    if len(chosen) != 1:
        raise OptcError(f"--providers {providers!r}: compare runs on one provider, cpu or cuda")
    request = CompareRequest(
        original=original,
        optimized=optimized,
        data=data,
        samples=samples,
        per_tensor=per_tensor,
        provider=chosen[0],
        input_shapes=parse_input_shapes(input_shape or []),
        seed=seed,
    )
    result = run_compare(request, TerminalProgress(OUTPUT))
    if json_output:
        OUTPUT.json(json.loads(result.model_dump_json()))
    else:
        OUTPUT.result(compare_view(result, top))


@report_app.command("schema", cls=OptcCommand, epilog=READ_ONLY_EXIT_CODES)
@handles_errors
def report_schema() -> None:
    """Print the JSON Schema of report.json.

    \b
    Example:
      optc report schema > optc-report.schema.json
    """
    from optc.report.schema import report_json_schema

    print(json.dumps(report_json_schema(), indent=2))


@report_app.command("show", cls=OptcCommand, epilog=READ_ONLY_EXIT_CODES)
@handles_errors
def report_show(
    file: Annotated[Path, typer.Argument(metavar="REPORT", help="A JSON report written by optc compress.")],
    fmt: Annotated[
        Literal["terminal", "markdown", "html", "json"],
        typer.Option("--format", "-f", help="terminal (tables), markdown, html or json."),
    ] = "terminal",
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", metavar="FILE", help="Write to this file, not stdout.")
    ] = None,
) -> None:
    """Re-render a saved report.json: as terminal tables, Markdown, HTML or (validated) JSON.

    \b
    Examples:
      optc report show build/report.json
      optc report show build/report.json --format html -o report.html
    """
    from optc.cli.render import report_view
    from optc.outputs import InputFile, write_text
    from optc.report.html import render_html
    from optc.report.markdown import render_markdown
    from optc.report.schema import load_report

    renderers = {
        "markdown": render_markdown,
        "html": render_html,
        "json": lambda r: r.model_dump_json(indent=2) + "\n",
    }
    if fmt == "terminal" and output is not None:
        raise OptcError("--output needs --format markdown, html or json")
    OUTPUT.configure(False, False)
    report = load_report(file)
    if fmt == "terminal":
        OUTPUT.result(report_view(report))
        return
    text = renderers[fmt](report)
    if output is None:
        sys.stdout.write(text)
    else:
        write_text(output, text, [InputFile("the report being shown", file)])


def _providers(value: str) -> list[str]:
    from optc.recipe import PROVIDERS

    names = [p.strip() for p in value.split(",") if p.strip()]
    if not names or any(p not in PROVIDERS for p in names):
        raise OptcError(f"--providers {value!r}: expected a comma-separated list of {', '.join(PROVIDERS)}")
    return names


def _positive_ints(option: str, value: str, largest: int) -> list[int]:
    try:
        numbers = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        numbers = []
    if not numbers or any(n < 1 or n > largest for n in numbers):
        raise OptcError(f"{option} {value!r}: expected comma-separated integers from 1 to {largest}, e.g. 1,8,32")
    return numbers


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    app(prog_name="optc")


__all__ = ["app", "main"]
