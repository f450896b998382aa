"""Every path ``optc compress`` writes: resolved and checked before any work, staged, then made visible together.

Pipelines rely on three promises: an output never replaces an input (not by name, symlink or hard link), a run that
fails writes nothing, and a run that succeeds leaves the model and its reports side by side and consistent. So the
outputs are one ``OutputSet`` decided up front; ``check_outputs`` refuses the set (exit 2) before any pass runs; and
``staged_outputs`` writes every file into temporary folders beside their destinations and renames them into place
in one step, with Ctrl-C/SIGTERM held back until the renames are done.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

from optc.errors import ExitCode, OptcError

TEMP_PREFIX = ".optc-tmp-"
PROBE_PREFIX = ".optc-probe-"
MODEL_SUFFIX = ".onnx"
REJECTED = ".rejected"


@dataclass(frozen=True)
class OutputSet:
    model: Path
    external_data: Path  # written only when the model is too large for one protobuf
    report_json: Path
    report_md: Path
    report_html: Path

    def paths(self) -> dict[str, Path]:
        """What each path is (``report json``) → the path."""
        return {f.name.replace("_", " "): getattr(self, f.name) for f in fields(self)}


def resolve_outputs(output: Path, report: Path | None) -> tuple[OutputSet, OutputSet]:
    """The outputs of a run, and where they go instead when a gate fails (``model.int8.rejected.onnx``, beside
    the destination, named so that it cannot pass for it)."""
    rejected_report = _with_tag(Path(report), REJECTED) if report is not None else None
    return output_set(output, report), output_set(_with_tag(Path(output), REJECTED), rejected_report)


def output_set(output: Path, report: Path | None) -> OutputSet:
    """The output model's files and its reports: ``--report r.json`` puts ``r.md``/``r.html`` beside it; by default
    the reports are named after the model (``model.int8.onnx`` → ``model.int8.report.json``), so two models
    written into one folder keep their own reports."""
    output = Path(output)
    if not str(output) or output.name in ("", ".", ".."):
        raise OptcError(f"-o {str(output)!r}: not a file name", hint="give the path of the model to write")
    if report is not None and (not str(report) or Path(report).name in ("", ".", "..")):
        raise OptcError(f"--report {str(report)!r}: not a file name")
    base = Path(report) if report is not None else output.with_name(_stem(output) + ".report.json")
    return OutputSet(
        model=output,
        external_data=_external_data_of(output),
        report_json=base,
        report_md=base.with_suffix(".md"),
        report_html=base.with_suffix(".html"),
    )


def _stem(path: Path) -> str:
    return path.name[: -len(MODEL_SUFFIX)] if path.name.endswith(MODEL_SUFFIX) else path.name


def _with_tag(path: Path, tag: str) -> Path:
    """``model.int8.onnx`` → ``model.int8.rejected.onnx``; ``r.json`` → ``r.rejected.json``."""
    return path.with_name(path.stem + tag + path.suffix) if path.suffix else path.with_name(path.name + tag)


def _external_data_of(model: Path) -> Path:
    return model.with_name(model.name + ".data")


@dataclass(frozen=True)
class InputFile:
    """A file the run reads, with what it is to the user (``the input model``, ``--data``, ``the recipe``)."""

    role: str
    path: Path


def input_files(role: str, path: Path | None) -> list[InputFile]:
    """``path`` as inputs: the file, or every file of a folder (data folders hold one file per array)."""
    if path is None:
        return []
    path = Path(path)
    if path.is_dir():
        return [InputFile(f"{role} ({path})", child) for child in sorted(path.iterdir()) if child.is_file()]
    return [InputFile(role, path)]


def check_outputs(outputs: OutputSet, inputs: list[InputFile], also: OutputSet | None = None) -> None:
    """Refuse, before any work, an output that would replace an input or another output, or cannot be written.

    ``also`` is a second set this run may write instead (the rejected names when a gate fails); it is checked too.
    """
    named = list(outputs.paths().items())
    if also is not None:
        named += [(f"rejected {label}", path) for label, path in also.paths().items()]
    seen: dict[Path, str] = {}
    for label, path in named:
        where = f"{label} {path}"
        _check_writable_path(path, where)
        resolved = _resolved(path)
        if resolved in seen:
            raise OptcError(
                f"{where}: the same file as the {seen[resolved]}; each output needs its own path",
                hint="choose different -o / --report paths",
            )
        seen[resolved] = label
        for source in inputs:
            if _same_file(path, source.path):
                raise OptcError(
                    f"{where}: that is {source.role} {source.path}; optc never overwrites its inputs",
                    hint="choose another -o / --report path",
                )


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _same_file(output: Path, source: Path) -> bool:
    if _resolved(output) == _resolved(source):
        return True
    with contextlib.suppress(OSError):
        return output.exists() and source.exists() and os.path.samefile(output, source)  # hard links
    return False


def _check_writable_path(path: Path, where: str) -> None:
    max_name = _name_max(path)
    for part in path.parts:
        if len(os.fsencode(part)) > max_name:
            raise OptcError(f"{where}: the name {part[:40]!r}… is longer than a file name can be ({max_name} bytes)")
    if path.is_symlink():
        raise OptcError(
            f"{where}: is a symbolic link; optc replaces files, never what a link points to",
            hint="remove the link or choose another path",
        )
    if path.exists():
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise OptcError(f"{where}: is a directory", hint="give a file path, e.g. build/model.int8.onnx")
        if not stat.S_ISREG(mode):
            raise OptcError(f"{where}: is not a regular file (a device, pipe or socket); optc writes regular files")
    folder = _nearest_existing_folder(path.parent, where)
    _probe_writable(folder, where)


def _name_max(path: Path) -> int:
    folder = next((p for p in [path.parent, *path.parents] if p.exists()), Path("."))
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _nearest_existing_folder(folder: Path, where: str) -> Path:
    """The folder itself or, when it is still to be created, its nearest existing ancestor."""
    for candidate in [folder, *folder.parents]:
        if candidate.exists() or candidate.is_symlink():
            if not candidate.is_dir():
                raise OptcError(f"{where}: {candidate} is not a directory, so nothing can be written under it")
            return candidate
    return Path(".")


def _probe_writable(folder: Path, where: str) -> None:
    """Create and remove a file in ``folder``: the only test that catches read-only mounts, ACLs and quotas alike."""
    try:
        handle, probe = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise OptcError(f"{where}: cannot write in {folder} ({exc.strerror or exc})") from None


# ------------------------------------------------------------------------------------------------ staging and commit


class Staging:
    """Temporary folders beside each destination (same file system, so a rename is atomic), one per folder."""

    def __init__(self) -> None:
        self._folders: dict[Path, Path] = {}
        self._staged: list[tuple[Path, Path]] = []  # (staged file, destination), in commit order

    def path_for(self, destination: Path) -> Path:
        """Where to write the file that will become ``destination``."""
        folder = destination.parent
        if folder not in self._folders:
            folder.mkdir(parents=True, exist_ok=True)
            self._folders[folder] = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=folder))
        staged = self._folders[folder] / destination.name
        self._staged.append((staged, destination))
        return staged

    def commit(self) -> None:
        """Rename every staged file into place, in the order staged (data before the model that points at it)."""
        for staged, destination in self._staged:
            if staged.exists():
                os.replace(staged, destination)
        for folder in self._folders:
            _fsync_dir(folder)

    def destinations(self) -> list[Path]:
        return [destination for _, destination in self._staged]

    def discard(self) -> None:
        for staging in self._folders.values():
            for leftover in staging.iterdir():
                leftover.unlink(missing_ok=True)
            staging.rmdir()


@contextlib.contextmanager
def staged_outputs() -> Iterator[Staging]:
    """Write into a ``Staging`` inside the block; on leaving it normally every file becomes visible together.

    On any failure or interrupt inside the block nothing was renamed: the previous files are untouched and the
    temporary folders are removed. Interrupts that arrive during the renames are held back until they are done and
    then reported as such (``InterruptedAfterWrite``), since saying "nothing was written" would then be false.
    """
    staging = Staging()
    try:
        yield staging
        with _interrupts_held() as arrived:
            staging.commit()
    except OSError as exc:  # a full disk, a vanished folder: the files cannot be written, and none were published
        raise OptcError(
            f"could not write {exc.filename or 'the outputs'}: {exc.strerror or exc}; nothing was written"
        ) from exc
    finally:
        staging.discard()
    if arrived:
        raise InterruptedAfterWrite(staging.destinations())


class InterruptedAfterWrite(OptcError):
    exit_code = ExitCode.INTERRUPTED

    def __init__(self, written: list[Path]) -> None:
        listed = ", ".join(str(p) for p in written)
        super().__init__(f"interrupted after the outputs were written; they are complete: {listed}")


@contextlib.contextmanager
def _interrupts_held() -> Iterator[list[int]]:
    """Hold SIGINT/SIGTERM while the block runs; the list it yields names the signals that arrived meanwhile."""
    arrived: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield arrived
        return
    previous = {sig: signal.signal(sig, lambda signum, frame: arrived.append(signum)) for sig in _HELD_SIGNALS}
    try:
        yield arrived
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_file(path: Path, payload: bytes) -> None:
    """Write and flush to disk, so a rename after it publishes complete bytes even across a power cut."""
    with open(path, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())


def write_text(destination: Path, text: str, inputs: list[InputFile]) -> None:
    """Write one text file the same way: checked against ``inputs`` first, then staged and renamed into place."""
    destination = Path(destination)
    _check_writable_path(destination, str(destination))
    for source in inputs:
        if _same_file(destination, source.path):
            raise OptcError(f"{destination}: that is {source.role}; optc never overwrites its inputs")
    with staged_outputs() as staging:
        write_file(staging.path_for(destination), text.encode("utf-8"))
