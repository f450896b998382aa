"""report.html: one self-contained page whose charts are inline SVG, checked as markup and in a real browser."""

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from optc.measure.environment import current_environment
from optc.measure.latency import LatencyStats
from optc.measure.profile import OpProfile, OpTime, compare_profiles
from optc.pipeline import PassRecord
from optc.report.html import render_html
from optc.report.schema import GateResult, ModelInfo, ProviderMeasurement, RecipeInfo, Report

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def stats(scale: float) -> LatencyStats:
    return LatencyStats.of([scale * (1 + 0.01 * i) * 1e-3 for i in range(50)])


def profile(shares: dict[str, float]) -> OpProfile:
    return OpProfile(
        runs=10,
        ms_per_run=1.0,
        ops=[OpTime(op_type=k, ms_per_run=v, share=v, calls_per_run=1) for k, v in shares.items()],
    )


def sample_report() -> Report:
    details = {
        "sensitivity": [
            {"node": "conv1", "op_type": "Conv", "error": 0.4},
            {"node": "fc", "op_type": "Gemm", "error": 0.1},
        ],
        "kept_in_float": ["conv1"],
        "curve": [
            {"sparsity": 0.0, "accuracy": 98.0, "size_bytes": 1000, "latency_ms": 1.0, "metric": "top1"},
            {"sparsity": 0.5, "accuracy": 97.5, "size_bytes": 600, "latency_ms": 0.8, "metric": "top1"},
            {"sparsity": 0.8, "accuracy": 90.0, "size_bytes": 300, "latency_ms": 0.7, "metric": "top1"},
        ],
        "ops_quantized": 2,
    }
    record = PassRecord(
        index=0,
        type="quantize",
        label="passes[0] quantize <static>",
        wall_s=1.0,
        size_before=1000,
        size_after=300,
        nodes_before=10,
        nodes_after=14,
        details=details,
        warnings=[],
    )
    cpu = ProviderMeasurement(
        provider="cpu",
        measured=True,
        batch_size=1,
        threads=1,
        warmup=1,
        original=stats(1.0),
        optimized=stats(0.6),
        speedup=1.0 / 0.6,
        profile=compare_profiles(
            profile({"Conv": 0.9, "Gemm": 0.1}), profile({"ConvInteger": 0.5, "DequantizeLinear": 0.5})
        ),
    )
    cuda = ProviderMeasurement(
        provider="cuda", measured=False, reason="no GPU <here>", batch_size=1, threads=1, warmup=1
    )
    return Report(
        optc_version="0",
        recipe=RecipeInfo(source="r.yaml", name=None, sha256="0"),
        original=ModelInfo(path="m.onnx", size_bytes=1000, parameters=10, nodes=10),
        optimized=ModelInfo(path="m.int8.onnx", size_bytes=300, parameters=10, nodes=14),
        size_ratio=0.3,
        passes=[record],
        data="synthetic",
        measurements=[cpu, cuda],
        gates=[GateResult(name="max_size_ratio", bound=0.5, measured=0.3, passed=True, detail="size ok")],
        gates_passed=True,
        warnings=["a <b>warning</b>"],
        environment=current_environment(),
    )


def charts(page: str) -> list[str]:
    return re.findall(r'data-chart="([^"]+)"', page)


def test_html_has_every_chart_as_wellformed_inline_svg():
    page = render_html(sample_report())
    assert charts(page) == ["latency-cpu", "profile-cpu", "sensitivity", "curve"]
    for svg in re.findall(r"<svg.*?</svg>", page, re.S):
        ET.fromstring(svg)  # each chart parses as XML
    assert "not measured" in page and "no GPU &lt;here&gt;" in page  # the reason, escaped
    assert "a &lt;b&gt;warning&lt;/b&gt;" in page and "<b>warning" not in page


def test_html_is_self_contained():
    page = render_html(sample_report())
    assert "<script" not in page and "<link" not in page and "@import" not in page and "url(" not in page
    assert not re.search(r'(src|href)="', page)
    assert set(re.findall(r"https?://[^\s\"']+", page)) <= {"http://www.w3.org/2000/svg"}  # a namespace, not a fetch


def test_kept_in_float_nodes_are_highlighted_in_the_sensitivity_chart():
    page = render_html(sample_report())
    sensitivity = re.search(r'<svg[^>]*data-chart="sensitivity".*?</svg>', page, re.S).group(0)
    assert sensitivity.count("#e45756") == 1  # conv1 only


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install chromium to run this check)")
def test_report_renders_in_headless_chromium(tmp_path: Path):
    page = tmp_path / "report.html"
    page.write_text(render_html(sample_report()))
    common = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert charts(dom.stdout) == ["latency-cpu", "profile-cpu", "sensitivity", "curve"]
    assert dom.stdout.count("<rect") >= 4 and "<polyline" in dom.stdout
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()], capture_output=True, timeout=120
    )
    assert shot.exists() and shot.stat().st_size > 20_000  # a blank page compresses to a few kB
