"""Reading ``.npz`` / ``.npy`` data files row by row, without trusting them.

Data files come from elsewhere, so every array's header is read and checked before its values: the bytes it declares
must be there, must fit the memory budget when the array is loaded whole, and a zip member that declares far more
than it could expand to (a zip bomb) is refused. Values are read through plain file streams (not memory maps, whose
pages count as the process's memory), so streaming a large calibration set costs one batch of memory.
"""

from __future__ import annotations

import contextlib
import os
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from optc.errors import OptcError

_NPY_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
    (3, 0): np.lib.format.read_array_header_2_0,
}
# Deflate cannot expand more than about 1032:1; real tensors compress a few times at most. A member claiming a much
# larger ratio is either lying about its size or an all-constant bomb, and neither is calibration data.
MAX_EXPANSION = 200
EXPANSION_CHECK_BYTES = 64 << 20


@dataclass
class ArrayReader:
    """Sequential reads of rows (first-axis slices) of one stored array."""

    where: str  # "file.npz: array 'x'", for messages
    stream: object  # a binary file object positioned at the array's data
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool = False  # column-major: rows are not contiguous, so the array is read whole on first use
    offset: int = 0  # rows read so far
    _whole: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def empty(self) -> np.ndarray:
        """A zero-row array of the right dtype and shape, for checking against the model inputs."""
        return np.empty((0, *self.shape[1:]), self.dtype)

    def read(self, count: int) -> np.ndarray:
        if self.fortran:
            if self._whole is None:
                self._whole = self._read_bytes(self.nbytes).reshape(self.shape, order="F")
            rows = np.ascontiguousarray(self._whole[self.offset : self.offset + count])
            self.offset += count
            return rows
        row_shape = self.shape[1:]
        nbytes = count * int(np.prod(row_shape, dtype=np.int64)) * self.dtype.itemsize
        self.offset += count
        return self._read_bytes(nbytes).reshape(count, *row_shape)

    def _read_bytes(self, nbytes: int) -> np.ndarray:
        payload = self.stream.read(nbytes)
        if len(payload) != nbytes:
            raise OptcError(f"{self.where}: the file ends early (its header declares {list(self.shape)})")
        return np.frombuffer(payload, dtype=self.dtype)


def check_data_path(role: str, path: Path) -> None:
    """Refuse, before any work, a data path that is missing, not a regular file or folder, or whose headers are
    unreadable (``role`` is the option or recipe field that named it)."""
    path = Path(path)
    if not path.exists():
        raise OptcError(f"{role} {path}: no such file or folder")
    for source, readers in data_sources(path, role):
        del source, readers  # reading every header is the check


def data_sources(path: Path, role: str = "data") -> Iterator[tuple[Path, dict[str, ArrayReader]]]:
    """Per data file (one ``.npz``; all ``.npy`` files of a folder together): a reader per array, headers checked."""
    path = Path(path)
    if not path.exists():
        raise OptcError(f"{role} {path}: no such file or folder")
    if path.is_dir():
        npz_files, npy_files = sorted(path.glob("*.npz")), sorted(path.glob("*.npy"))
        if not npz_files and not npy_files:
            raise OptcError(f"{role} {path}: the folder holds no .npz or .npy files")
        for file in npz_files:
            yield from _npz_source(file, role)
        if npy_files:
            with contextlib.ExitStack() as open_files:
                readers = {}
                for file in npy_files:
                    _require_regular(file, role)
                    stream = open_files.enter_context(open(file, "rb"))
                    readers[file.stem] = _array_reader(stream, f"{file}", os.fstat(stream.fileno()).st_size)
                yield path, readers
        return
    yield from _npz_source(path, role)


def _require_regular(path: Path, role: str) -> None:
    if not stat.S_ISREG(path.stat().st_mode):
        raise OptcError(f"{role} {path}: not a regular file (a device, pipe or socket); give an .npz file or folder")


def _npz_source(path: Path, role: str) -> Iterator[tuple[Path, dict[str, ArrayReader]]]:
    _require_regular(path, role)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise OptcError(f"{role} {path}: not a readable .npz file ({exc})") from exc
    with archive:
        readers = {}
        for member in archive.infolist():
            name = member.filename.removesuffix(".npy")
            where = f"{path}: array {name!r}"
            if member.file_size > EXPANSION_CHECK_BYTES and member.file_size > MAX_EXPANSION * member.compress_size:
                raise OptcError(
                    f"{where} declares {member.file_size:,} bytes from {member.compress_size:,} compressed, more "
                    f"than {MAX_EXPANSION}:1; refusing what looks like a zip bomb"
                )
            try:
                stream = archive.open(member)
            except (OSError, zipfile.BadZipFile, NotImplementedError) as exc:
                raise OptcError(f"{where}: cannot be read ({exc})") from exc
            readers[name] = _array_reader(stream, where, member.file_size)
        yield path, readers


def _array_reader(stream, where: str, stored_bytes: int) -> ArrayReader:
    """A reader positioned after the ``.npy`` header of ``stream``, whose declared size is checked against the
    ``stored_bytes`` the file (or zip member) really holds."""
    try:
        version = np.lib.format.read_magic(stream)
        read_header = _NPY_HEADER_READERS.get(version)
        if read_header is None:
            raise ValueError(f"unsupported .npy format version {version}")
        shape, fortran, dtype = read_header(stream)
        header_bytes = stream.tell()
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise OptcError(f"{where}: not a .npy array ({exc})") from exc
    if dtype.hasobject:
        raise OptcError(f"{where}: holds Python objects, which optc does not read (save numeric arrays)")
    reader = ArrayReader(where, stream, tuple(int(d) for d in shape), dtype, fortran=fortran and len(shape) > 1)
    if header_bytes + reader.nbytes != stored_bytes:
        raise OptcError(
            f"{where}: its header declares shape {list(shape)} ({reader.nbytes:,} bytes of {dtype}) but the file "
            f"holds {max(stored_bytes - header_bytes, 0):,}; is it truncated or forged?"
        )
    return reader


def whole_load_budget() -> int:
    """Bytes of data optc will load at once: half the memory available now (``MemAvailable``), else 8 GiB."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 // 2
    return 8 << 30


def first_non_finite(array: np.ndarray) -> tuple[str, tuple[int, ...]] | None:
    """(``nan``/``inf``, index) of the first value that is not finite; None when all are (or it is not float)."""
    if array.dtype.kind not in "fc":
        return None
    bad = ~np.isfinite(array)
    if not bad.any():
        return None
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    return ("nan" if np.isnan(array[index]) else "inf"), index
