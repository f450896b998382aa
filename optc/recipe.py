"""The recipe: a YAML file validated by pydantic models, and the built-in recipes shipped with optc.

The ``passes`` list is a union of every registered pass's config, discriminated by ``type``; its JSON Schema is what
``optc recipes schema`` prints.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from optc.errors import OptcError
from optc.limits import MAX_BATCH_SIZE, MAX_MIN_TIME_S, MAX_RUNS, MAX_WARMUP, THREADS_PER_CORE, max_threads
from optc.passes import registered_passes
from optc.target import TARGET_HELP, Target

PROVIDERS = ("cpu", "cuda")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class LatencySettings(Strict):
    batch_size: StrictInt = Field(default=1, ge=1, le=MAX_BATCH_SIZE, description="Batch size of the timed runs.")
    warmup: StrictInt = Field(default=10, ge=0, le=MAX_WARMUP, description="Untimed runs of each model before timing.")
    runs: StrictInt = Field(default=50, ge=1, le=MAX_RUNS, description="Minimum timed runs of each model.")
    min_time_s: float = Field(
        default=1.0, ge=0, le=MAX_MIN_TIME_S, description="Keep timing until this many seconds have passed."
    )
    threads: StrictInt = Field(
        default=1,
        ge=1,
        description="ONNX Runtime intra-op threads (at most 4 per core). One thread gives the steadiest figures.",
    )

    @field_validator("threads")
    @classmethod
    def _threads_within_cores(cls, threads: int) -> int:
        if threads > max_threads():
            raise ValueError(f"at most {max_threads()} ({THREADS_PER_CORE} per core of this machine), got {threads}")
        return threads


class EvaluateSettings(Strict):
    providers: list[Literal[PROVIDERS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["cpu"], min_length=1, description="Execution providers to measure on."
    )
    data: Path | None = Field(
        default=None,
        description=".npz with arrays named after the model inputs (first axis = samples) and optional `labels`; "
        "relative paths are relative to the recipe file. Without data, seeded synthetic inputs are used.",
    )
    samples: int | None = Field(default=None, ge=1, description="Use at most this many samples.")
    metric: Literal["auto", "top1", "fidelity"] = Field(
        default="auto", description="auto: top-1 when the data has labels, else fidelity to the original."
    )
    latency: LatencySettings = Field(default_factory=LatencySettings)


class Gates(Strict):
    max_accuracy_drop: float | None = Field(
        default=None, ge=0, description="Largest allowed drop of the metric, in percentage points."
    )
    min_speedup: float | None = Field(default=None, gt=0, description="Smallest allowed p50 speedup (original/new).")
    max_size_ratio: float | None = Field(default=None, gt=0, description="Largest allowed size ratio (new/original).")
    min_cosine: float | None = Field(
        default=None,
        ge=-1,
        le=1,
        description="Lowest allowed cosine similarity of any float output to the original's on the evaluation data "
        "(mean over samples; outputs of fewer than 16 values per sample are compared over all samples together).",
    )
    require_calibration_data: bool = Field(
        default=False,
        description="Fail when a static quantization pass fitted its ranges on synthetic inputs: its accuracy on "
        "real inputs is then unknown and often far worse than the synthetic figures say.",
    )
    require_evaluation_data: bool = Field(
        default=False,
        description="Fail when accuracy was measured on synthetic inputs: for passes whose damage depends on what "
        "the inputs look like (pruning a trained model), a synthetic figure says little about real outputs.",
    )


def _pass_union() -> Any:
    configs = tuple(p.config_cls for p in registered_passes().values())
    if len(configs) == 1:
        return configs[0]
    return Annotated[Union[configs], Field(discriminator="type")]  # noqa: UP007 (built at run time)


PassSpec = _pass_union()


class Recipe(Strict):
    version: Literal[1] = Field(description="Recipe format version.")

    @field_validator("version", mode="before")
    @classmethod
    def _version_is_a_number(cls, version: object) -> object:
        if isinstance(version, bool):  # YAML's `true` would otherwise pass as 1
            raise ValueError(f"must be the number 1, got {version!r}")
        return version

    name: str | None = None
    description: str | None = None
    target: Target = Field(
        default="auto", description=f"The machine the model is for; passes take their defaults from it. {TARGET_HELP}."
    )
    passes: list[PassSpec] = Field(min_length=1, description="Passes run in order.")  # type: ignore[valid-type]
    evaluate: EvaluateSettings = Field(default_factory=EvaluateSettings)
    gates: Gates = Field(default_factory=Gates)


class LoadedRecipe(BaseModel):
    recipe: Recipe
    source: str  # a path, or "built-in:<name>"
    sha256: str
    base_dir: Path | None  # where relative data paths are resolved; None for built-ins

    def resolve(self, path: Path) -> Path:
        """A path written in the recipe: relative to the recipe's folder (the working directory for built-ins)."""
        return path if path.is_absolute() else (self.base_dir or Path.cwd()) / path


def builtin_recipe_names() -> list[str]:
    return sorted(
        p.name.removesuffix(".yaml") for p in resources.files("optc.recipes").iterdir() if p.name.endswith(".yaml")
    )


def builtin_recipe_text(name: str) -> str:
    return (resources.files("optc.recipes") / f"{name}.yaml").read_text(encoding="utf-8")


def load_recipe(reference: str | Path) -> LoadedRecipe:
    """Load a recipe from a file path or a built-in name (``int8-dynamic``)."""
    path = Path(reference)
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise OptcError(f"{path}: cannot read the recipe ({exc})") from exc
        return parse_recipe(text, source=str(path), base_dir=path.parent)
    if str(reference) in builtin_recipe_names():
        return parse_recipe(builtin_recipe_text(str(reference)), source=f"built-in:{reference}", base_dir=None)
    if path.exists():
        raise OptcError(f"{path}: not a file")
    raise OptcError(
        f"{reference}: no such recipe file, and no built-in recipe of that name",
        hint=f"built-in recipes: {', '.join(builtin_recipe_names())}",
    )


def parse_recipe(text: str, source: str, base_dir: Path | None) -> LoadedRecipe:
    try:
        _check_yaml_shape(text, source)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise OptcError(f"{source}: not valid YAML{where}: {problem}") from exc
    if not isinstance(raw, dict):
        kind = "empty" if raw is None else f"a {type(raw).__name__}"
        raise OptcError(f"{source}: a recipe must be a YAML mapping with version and passes, but this is {kind}")
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise OptcError(f"{source}: {describe_validation_error(exc, raw)}") from exc
    return LoadedRecipe(
        recipe=recipe, source=source, sha256=hashlib.sha256(text.encode()).hexdigest(), base_dir=base_dir
    )


MAX_RECIPE_BYTES = 1 << 20
MAX_YAML_DEPTH = 32  # a recipe nests four levels; thousands would exhaust Python's recursion in the YAML composer
MAX_YAML_ALIASES = 64  # aliases of aliases expand exponentially ("billion laughs")


def _check_yaml_shape(text: str, source: str) -> None:
    """Refuse, from the parser's events alone (no recursion), recipes too big, too deep or too alias-heavy."""
    if len(text) > MAX_RECIPE_BYTES:
        raise OptcError(f"{source}: {len(text):,} bytes is not a recipe (at most {MAX_RECIPE_BYTES:,})")
    depth = aliases = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                line = event.start_mark.line + 1 if event.start_mark else "?"
                raise OptcError(f"{source}: nested more than {MAX_YAML_DEPTH} levels deep (line {line})")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_YAML_ALIASES:
                raise OptcError(f"{source}: more than {MAX_YAML_ALIASES} YAML aliases; write the recipe out")


def describe_validation_error(exc: ValidationError, raw: dict) -> str:
    """One line per problem: ``passes[1].per_channel: input should be a valid boolean, got 'maybe'``."""
    pass_types = set(registered_passes())
    lines = []
    for error in exc.errors():
        raw_loc = error["loc"]
        # Pydantic puts the discriminator value into the location (passes, 1, 'quantize', field); users never
        # wrote it, so it is dropped from the path.
        tagged = len(raw_loc) > 2 and raw_loc[0] == "passes" and raw_loc[2] in pass_types
        loc = raw_loc[:2] + raw_loc[3:] if tagged else raw_loc
        pass_type = _pass_type_at(raw, loc)
        path = _format_loc(loc)
        explanation = _explain(error, loc, pass_type)
        lines.append(f"{path}: {explanation}" if path else explanation)
    return "invalid recipe\n  " + "\n  ".join(lines)


def _pass_type_at(raw: dict, loc: tuple) -> str | None:
    if len(loc) < 2 or loc[0] != "passes" or not isinstance(loc[1], int):
        return None
    passes = raw.get("passes")
    block = passes[loc[1]] if isinstance(passes, list) and loc[1] < len(passes) else None
    return block.get("type") if isinstance(block, dict) else None


def _format_loc(loc: tuple) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _explain(error: dict, loc: tuple, pass_type: str | None) -> str:
    kind = error["type"]
    known_types = ", ".join(sorted(registered_passes()))
    if kind == "extra_forbidden":
        allowed = _fields_at(loc[:-1], pass_type)
        return "unknown field" + (f" (expected one of: {', '.join(allowed)})" if allowed else "")
    if kind == "missing":
        return "required field is missing"
    if kind == "union_tag_invalid":
        return f"unknown pass type {error['ctx']['tag']!r} (known: {known_types})"
    if kind == "union_tag_not_found":
        return f"each pass needs a `type` (one of: {known_types})"
    message = error["msg"].removeprefix("Value error, ")  # our validators' messages stand on their own
    got = error.get("input")
    shown = "" if "got" in message or got is None or isinstance(got, (dict, list)) else f", got {got!r}"
    return f"{message[0].lower()}{message[1:]}{shown}"


def _fields_at(loc: tuple, pass_type: str | None) -> list[str]:
    """Field names of the model found at ``loc`` (so an unknown key can be answered with the known ones)."""
    model: type[BaseModel] | None = Recipe
    parts = list(loc)
    if parts[:1] == ["passes"]:
        config = registered_passes().get(pass_type) if pass_type else None
        model = config.config_cls if config else None
        parts = parts[2:]
    for part in parts:
        field = model.model_fields.get(part) if model is not None and isinstance(part, str) else None
        annotation = field.annotation if field else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return [name for name in model.model_fields if name != "type"] if model is not None else []


def recipe_json_schema() -> dict:
    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "optc recipe"
    return schema
