"""Blockwise weight quantization to 4 or 8 bits: the arithmetic, and the tensors ONNX Runtime's ``MatMulNBits`` and
ONNX's blockwise ``DequantizeLinear`` (opset 21) take.

A MatMul weight ``W[K, N]`` is split along K into blocks of ``block_size`` values per output column; each block gets
a scale (and, asymmetric, a zero point) and its values become integer codes ``q`` with ``W ≈ (q - zero) * scale``.

Round-to-nearest (``rtn``) reproduces ONNX Runtime's own quantizer bit for bit (its C++ ``MlasQuantizeBlockwise``:
C rounding, half away from zero; a range that always contains 0; symmetric blocks whose scale maps the signed extreme
to code 0, so the extreme's side gets the extra level). ``hqq`` (half-quadratic quantization, Badri & Shaji 2023)
moves each block's zero point to minimise an l_p (p < 1) error by a few closed-form iterations, needing no data; its
zero points are kept integer so ONNX Runtime's packed kernels still apply (float zero points put MatMulNBits on a
path that dequantizes the whole weight on every call, 40x slower).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

HQQ_ITERATIONS = 20
# Weights are quantized this many float32 bytes of columns at a time: the arithmetic makes several temporaries of
# its input's size, and a 8192 x 8192 weight whole would add a gigabyte of them.
CHUNK_BYTES = 32 * 2**20
HQQ_BETA, HQQ_KAPPA, HQQ_P = 10.0, 1.01, 0.7


@dataclass
class Blockwise:
    """Codes, scales and zero points of one weight ``[K, N]``, laid out per output column: ``[N, blocks, ...]``."""

    codes: np.ndarray  # uint8 [N, blocks, block_size], values 0 .. 2^bits - 1 (K padded with zeros)
    scales: np.ndarray  # float32 [N, blocks]
    zero_points: np.ndarray | None  # uint8 [N, blocks]; None: symmetric, the middle code (8 or 128) is zero
    bits: int
    block_size: int
    k: int  # rows of the original weight

    @property
    def middle(self) -> int:
        return 1 << (self.bits - 1)

    def dequantized(self) -> np.ndarray:
        """``W`` as the kernels will see it, ``[K, N]`` float32."""
        zero = self.zero_points if self.zero_points is not None else np.full(self.scales.shape, self.middle)
        values = (self.codes.astype(np.float32) - zero[..., None]) * self.scales[..., None]
        return values.reshape(values.shape[0], -1)[:, : self.k].T


def roundf(x: np.ndarray) -> np.ndarray:
    """C's ``roundf``: halves away from zero (numpy rounds them to even)."""
    truncated = np.trunc(x)
    return np.where(np.abs(x - truncated) >= 0.5, truncated + np.sign(x), truncated)


def _blocks(weight: np.ndarray, block_size: int) -> np.ndarray:
    """``W[K, N]`` as ``[N, blocks, block_size]`` float32, K zero-padded to whole blocks."""
    k, n = weight.shape
    blocks = -(-k // block_size)
    padded = np.zeros((blocks * block_size, n), np.float32)
    padded[:k] = weight
    return np.ascontiguousarray(padded.T.reshape(n, blocks, block_size))


def rtn(weight: np.ndarray, bits: int, block_size: int, symmetric: bool) -> Blockwise:
    """Round-to-nearest, as ONNX Runtime's quantizer does it."""
    blocks = _blocks(weight, block_size)
    top, middle = (1 << bits) - 1, 1 << (bits - 1)
    if symmetric:
        high, low = blocks.max(-1), blocks.min(-1)
        scales = (np.where(np.abs(high) > np.abs(low), high, low) / np.float32(-middle)).astype(np.float32)
        zero = np.full(scales.shape, middle, np.float32)
    else:
        low, high = np.minimum(blocks.min(-1), 0), np.maximum(blocks.max(-1), 0)
        scales = ((high - low) / np.float32(top)).astype(np.float32)
        safe = np.where(scales != 0, scales, 1)
        zero = np.clip(roundf(np.where(scales != 0, -low / safe, low)), 0, top).astype(np.float32)
    inverse = np.where(scales != 0, np.float32(1) / np.where(scales != 0, scales, 1), 0).astype(np.float32)
    codes = _without_padding(np.clip(roundf(blocks * inverse[..., None] + zero[..., None]), 0, top), weight.shape[0])
    return Blockwise(codes, scales, None if symmetric else zero.astype(np.uint8), bits, block_size, weight.shape[0])


def _without_padding(codes: np.ndarray, k: int) -> np.ndarray:
    """Codes as uint8 with the padding past row ``k`` set to 0, as ONNX Runtime writes it (the kernels skip it)."""
    codes = codes.astype(np.uint8)
    codes.reshape(codes.shape[0], -1)[:, k:] = 0
    return codes


def hqq(weight: np.ndarray, bits: int, block_size: int) -> Blockwise:
    """HQQ's zero-point optimisation from the RTN starting point, zero points rounded to integers, keeping each
    block's best iterate (asymmetric only: it moves the zero point)."""
    start = rtn(weight, bits, block_size, symmetric=False)
    blocks = _blocks(weight, block_size)
    top = (1 << bits) - 1
    scales = np.where(start.scales != 0, start.scales, 1)[..., None]
    zero = start.zero_points.astype(np.float32)[..., None]
    best_zero = zero.copy()
    best_error = np.abs(blocks - (start.codes - zero) * scales).mean(-1, keepdims=True)
    beta = HQQ_BETA
    for _ in range(HQQ_ITERATIONS):
        codes = np.clip(np.round(blocks / scales + zero), 0, top)
        error = blocks - (codes - zero) * scales
        shrunk = np.sign(error) * np.maximum(np.abs(error) - np.abs(error) ** (HQQ_P - 1) / beta, 0)
        zero = np.clip(np.round(np.mean(codes - (blocks - shrunk) / scales, axis=-1, keepdims=True)), 0, top)
        candidate = np.clip(np.round(blocks / scales + zero), 0, top)
        mean_error = np.abs(blocks - (candidate - zero) * scales).mean(-1, keepdims=True)
        better = mean_error < best_error
        best_zero = np.where(better, zero, best_zero)
        best_error = np.minimum(mean_error, best_error)
        beta *= HQQ_KAPPA
    codes = _without_padding(np.clip(roundf(blocks / scales + best_zero), 0, top), weight.shape[0])
    return Blockwise(codes, start.scales, best_zero[..., 0].astype(np.uint8), bits, block_size, weight.shape[0])


def by_column_chunks(weight: np.ndarray, quantize: Callable[[np.ndarray], Blockwise]) -> Blockwise:
    """``quantize(weight)``, done on groups of output columns (blocks run along K, so columns are independent)."""
    columns = max(1, CHUNK_BYTES // (4 * max(weight.shape[0], 1)))
    if weight.shape[1] <= columns:
        return quantize(weight)
    parts = [quantize(weight[:, start : start + columns]) for start in range(0, weight.shape[1], columns)]
    zero_points = None if parts[0].zero_points is None else np.concatenate([p.zero_points for p in parts])
    first = parts[0]
    return Blockwise(
        np.concatenate([p.codes for p in parts]),
        np.concatenate([p.scales for p in parts]),
        zero_points,
        first.bits,
        first.block_size,
        first.k,
    )


def matmulnbits_tensors(quantized: Blockwise) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``B`` uint8 ``[N, blocks, block_size * bits / 8]`` (first value in the low nibble), ``scales``
    ``[N, blocks]`` and packed ``zero_points`` (``None`` when symmetric: the kernel's default is the middle code)."""
    codes = quantized.codes
    if quantized.bits == 8:
        return codes, quantized.scales, quantized.zero_points
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    if quantized.zero_points is None:
        return packed, quantized.scales, None
    zero = quantized.zero_points
    if zero.shape[1] % 2:  # an odd number of blocks: the last byte's high nibble is padding (ORT pads with 8)
        zero = np.concatenate([zero, np.full((zero.shape[0], 1), 8, np.uint8)], axis=1)
    return packed, quantized.scales, zero[:, 0::2] | (zero[:, 1::2] << 4)


def qdq_tensors(quantized: Blockwise) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """For ``DequantizeLinear(axis=0, block_size)``: codes ``[K, N]`` (int4/int8 when symmetric, centred on 0;
    uint4/uint8 otherwise), scales ``[blocks, N]``, zero points ``[blocks, N]`` or ``None``."""
    k = quantized.k
    codes = quantized.codes.reshape(quantized.codes.shape[0], -1)[:, :k].T
    if quantized.zero_points is None:
        return (codes.astype(np.int16) - quantized.middle).astype(np.int8), quantized.scales.T.copy(), None
    return np.ascontiguousarray(codes), quantized.scales.T.copy(), quantized.zero_points.T.copy()
