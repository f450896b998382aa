"""optc's commands. Each parses its arguments, calls into optc, and renders the result; errors become exit codes
in one place, ``handles_errors``."""

from __future__ import annotations

import functools
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer

import optc
from optc.cli.output import OUTPUT, TerminalProgress
from optc.errors import ExitCode, OptcError

EXIT_CODES_HELP = (
    "Exit codes: 0 written and every gate held; 1 written but a gate failed (the report says which); "
    "2 bad usage or bad input, nothing written; 3 a pass failed, nothing written; 4 internal error."
)


def handles_errors(command: Callable[..., None]) -> Callable[..., None]:
    """Map every error a command meets to one message on stderr and an exit code; never a traceback."""

    @functools.wraps(command)
    def run(*args, **kwargs) -> None:
        try:
            command(*args, **kwargs)
        except OptcError as exc:
            _fail(exc.exit_code, exc.message, exc.hint)
        except KeyboardInterrupt:
            _fail(ExitCode.INTERRUPTED, "interrupted; nothing was written", None)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except Exception as exc:  # noqa: BLE001 - a bug in optc: say so plainly, without a traceback
            _fail(
                ExitCode.INTERNAL,
                f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}",
                "this is a bug in optc; please report it with the command you ran",
            )

    return run


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

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout and nothing else.")]
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


@app.command(epilog=EXIT_CODES_HELP)
@handles_errors
def compress(
    model: Annotated[Path, typer.Argument(help="The ONNX model to optimize (never modified).")],
    recipe: Annotated[str, typer.Option("--recipe", "-r", help="Recipe file, or a built-in name (optc recipes list).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the optimized model.")],
    data: Annotated[
        Optional[Path],
        typer.Option(help="Evaluation data (.npz named after the inputs, optional 'labels'); wins over the recipe."),
    ] = None,
    calibration_data: Annotated[
        Optional[Path],
        typer.Option(help="Calibration data for static quantization (.npz or a folder); wins over the recipe."),
    ] = None,
    providers: Annotated[
        Optional[str], typer.Option(help="Comma-separated providers to measure on: cpu,cuda (wins over the recipe).")
    ] = None,
    max_accuracy_drop: Annotated[
        Optional[float], typer.Option(help="Gate: largest allowed accuracy drop in points.")
    ] = None,
    min_speedup: Annotated[Optional[float], typer.Option(help="Gate: smallest allowed p50 speedup.")] = None,
    max_size_ratio: Annotated[
        Optional[float], typer.Option(help="Gate: largest allowed size ratio new/original.")
    ] = None,
    input_shape: Annotated[
        Optional[list[str]],
        typer.Option(help="Shape for an input with symbolic dims, e.g. input_ids=1x128 (repeatable)."),
    ] = None,
    report: Annotated[
        Optional[Path], typer.Option(help="Where to write report.json (report.md goes beside it).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for synthetic inputs.")] = 0,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Run a recipe's passes on MODEL, measure the result against the original, write the model and a report.

    Examples:

        optc compress model.onnx --recipe int8-dynamic -o build/model.int8.onnx

        optc compress model.onnx -r my-recipe.yaml -o out.onnx --data eval.npz --max-accuracy-drop 1 --json
    """
    from optc.cli.render import report_view
    from optc.compress import CompressRequest
    from optc.compress import compress as run_compress
    from optc.data import parse_input_shapes
    from optc.recipe import PROVIDERS, load_recipe

    OUTPUT.configure(json_output, quiet)
    provider_list = None
    if providers is not None:
        provider_list = [p.strip() for p in providers.split(",") if p.strip()]
        unknown = [p for p in provider_list if p not in PROVIDERS]
        if unknown or not provider_list:
            raise OptcError(f"--providers {providers!r}: expected a comma-separated list of {', '.join(PROVIDERS)}")
    gates = {
        name: value
        for name, value in (
            ("max_accuracy_drop", max_accuracy_drop),
            ("min_speedup", min_speedup),
            ("max_size_ratio", max_size_ratio),
        )
        if value is not None
    }
    for name, value in gates.items():
        if value < 0 or (name != "max_accuracy_drop" and value == 0):
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
    )
    result = run_compress(request, TerminalProgress(OUTPUT))
    exit_code = ExitCode.OK if result.report.gates_passed else ExitCode.GATE_FAILED
    if json_output:
        OUTPUT.json(
            {
                "exit_code": int(exit_code),
                "output": str(result.output_path),
                "report_json": str(result.report_json),
                "report_md": str(result.report_md),
                "report": json.loads(result.report.model_dump_json()),
            }
        )
    else:
        OUTPUT.result(report_view(result.report))
        if not quiet:
            OUTPUT.stderr.print(f"wrote {result.output_path}, {result.report_json}, {result.report_md}")
    if exit_code != ExitCode.OK:
        failed = [g.detail for g in result.report.gates if not g.passed]
        OUTPUT.error("gate failed: " + "; ".join(failed), "the model and report were written")
        raise SystemExit(int(exit_code))


@app.command()
@handles_errors
def inspect(
    model: Annotated[Path, typer.Argument(help="The ONNX model to describe.")],
    nodes: Annotated[bool, typer.Option("--nodes", help="Also list every node's name and op type.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Describe a model: opset, IR version, inputs/outputs, op types, parameters, size, sparsity, quantization.

    Example:

        optc inspect model.onnx --json
    """
    from optc.cli.render import summary_view
    from optc.model_facts import summarize
    from optc.modelio import load_model

    OUTPUT.configure(json_output, False)
    loaded = load_model(model)
    summary = summarize(loaded.model, str(model), loaded.size_bytes, with_nodes=nodes)
    if json_output:
        OUTPUT.json(json.loads(summary.model_dump_json()))
    else:
        OUTPUT.result(summary_view(summary))


@recipes_app.command("list")
@handles_errors
def recipes_list(json_output: JsonOption = False) -> None:
    """List the built-in recipes.

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


@recipes_app.command("show")
@handles_errors
def recipes_show(name: Annotated[str, typer.Argument(help="A built-in recipe name.")]) -> None:
    """Print a built-in recipe's YAML, to copy and adapt.

    Example:

        optc recipes show int8-dynamic > my-recipe.yaml
    """
    from optc.recipe import builtin_recipe_names, builtin_recipe_text

    OUTPUT.configure(False, False)
    if name not in builtin_recipe_names():
        raise OptcError(f"no built-in recipe named {name!r}", hint=f"built-ins: {', '.join(builtin_recipe_names())}")
    sys.stdout.write(builtin_recipe_text(name))


@recipes_app.command("validate")
@handles_errors
def recipes_validate(
    file: Annotated[Path, typer.Argument(help="A recipe YAML file.")], json_output: JsonOption = False
) -> None:
    """Check a recipe file; exit 0 if valid, 2 with the problems otherwise.

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


@recipes_app.command("schema")
@handles_errors
def recipes_schema() -> None:
    """Print the recipe JSON Schema, for editors that validate YAML.

    Example:

        optc recipes schema > optc-recipe.schema.json
    """
    from optc.recipe import recipe_json_schema

    print(json.dumps(recipe_json_schema(), indent=2))


def _interrupt_on_sigterm(signum, frame) -> None:
    # Deploy pipelines and CI time-outs stop jobs with SIGTERM: unwind like Ctrl-C so temporary files are removed.
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    app(prog_name="optc")


__all__ = ["app", "main"]
