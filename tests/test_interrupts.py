"""No partial output, ever: optc killed while writing leaves the destination absent or as it was."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from optc.outputs import TEMP_PREFIX
from tests.conftest import DYNAMIC_PASS, ROOT, SAMPLES

# Runs optc with the model writer slowed to a crawl, so a signal reliably lands mid-write.
SLOW_WRITER = """
import sys, time
from optc import modelio

def slow_write(path, payload):
    with open(path, "wb") as f:
        for start in range(0, len(payload), 2048):
            f.write(payload[start:start + 2048])
            f.flush()
            time.sleep(0.02)

modelio.write_file = slow_write
from optc.cli import main
sys.argv = ["optc", *sys.argv[1:]]
main()
"""


def start_slow_compress(tmp_path: Path, fast_recipe, dest: Path) -> subprocess.Popen:
    args = [
        "compress",
        str(SAMPLES / "digits_cnn.onnx"),
        "-r",
        str(fast_recipe(DYNAMIC_PASS)),
        "-o",
        str(dest),
        "--quiet",
    ]
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell runs background jobs (`make test &`) with SIGINT ignored, and Python then installs no handler for it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for_staging(folder: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        staging = [p for p in folder.glob(f"{TEMP_PREFIX}*") if p.is_dir() and any(p.glob("*"))]
        if staging:
            time.sleep(0.1)  # let a few chunks land
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    raise AssertionError("optc never started writing")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["SIGINT", "SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("previous", [False, True], ids=["new", "overwrite"])
def test_kill_mid_write_leaves_no_partial_model(tmp_path: Path, fast_recipe, sig, previous):
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "model.onnx"
    if previous:
        dest.write_bytes(b"the previous complete model")
    process = start_slow_compress(tmp_path, fast_recipe, dest)
    wait_for_staging(out, process)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    if previous:
        assert dest.read_bytes() == b"the previous complete model"
    else:
        assert not dest.exists()
    if sig == signal.SIGKILL:
        assert process.returncode == -signal.SIGKILL
        return  # nothing can clean up after SIGKILL; the staging folder is inert and never picked up
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert not list(out.glob(f"{TEMP_PREFIX}*"))  # temporary files are removed
