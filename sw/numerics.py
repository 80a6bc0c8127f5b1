"""The numerics contract: what the accelerator computes, bit for bit.

Every other part of tileskip — the quantizer, the compiler, the golden model, the schedule model,
every testbench — uses these functions, and the RTL must match them exactly. Change them only on
purpose, together with ``tests/test_numerics.py``.

Integer arithmetic
------------------
* Activations are int8 in [-128, 127], symmetric, zero-point 0: a real zero is the code 0, so
  skipping zeros is exact. One scale per tensor.
* Weights are int8 in [-127, 127] (symmetric), one scale per output channel. Biases are int32 in
  units of ``input_scale × weight_scale[c]``.
* conv2d and fully-connected layers accumulate int8 × int8 products plus the bias exactly in an
  int32 accumulator. A product is at most 128 × 127 = 16 256 in magnitude, so a layer with reduction
  length ``n`` (input channels × kernel area, or input features) and bias ``b`` cannot overflow when
  ``n × 16 256 + |b| ≤ 2**31 − 1``; the compiler checks exactly this per output channel and refuses
  a layer that fails it. With a bias below 2**30 in magnitude that admits every ``n`` up to
  :data:`MAX_REDUCTION` = 66 052. The computation here is done in float64, exact up to 2**53.
  Hardware with narrower accumulators (``Config.acc_bits``) computes the same: a layer's sums
  and every partial sum of its products stay within ``Σ|w| × 128 + |b|`` per output channel
  (:func:`accumulator_bound`), and a layer whose bound exceeds the accumulator is refused for
  that hardware (``sw/layout.py``).
* Requantization, per output channel ``c``: ``y = (acc × m[c] + 2**(s[c]−1)) >> s[c]`` (for
  ``s[c] = 0``: ``y = acc × m[c]``), an arithmetic shift: *round half up* (toward +∞).
  ``0 ≤ m[c] < 2**16``, ``0 ≤ s[c] ≤ 31``. Then optional ReLU (``max(y, 0)``), saturation to
  [-128, 127], then an optional 2×2 max-pool (stride 2, floor) on the int8 values.

Tiles and ε
-----------
Every conv/FC layer's input is split into tiles of ``(channels, rows, pixels)``, aligned to the
tensor's origin; tiles at the right and bottom edges may be partial; padding is never part of a
tile. A conv layer's input is tiled with the configured ``(channels, rows, pixels)`` tile (by
default one channel × one row × ``cols`` pixels); a fully-connected layer's input, kept in its
unflattened ``(C, H, W)`` shape (a vector is ``(N, 1, 1)``), with ``(pixels, 1, 1)`` tiles: that
many channels of one pixel, the order in which the accelerator stores a layer that feeds a fully
connected one (see :func:`layer_tile`). A tile whose every ``|x| ≤ ε`` (ε an integer
in quantized units, 0 = exact zeros) is *flagged* and counts as all zeros: it is zeroed before the
MACs. The final layer's output is not thresholded.
"""

import numpy as np
import torch

__all__ = [
    "ACT_MIN", "ACT_MAX", "WEIGHT_MAX", "ACC_MIN", "ACC_MAX", "MULT_MAX", "SHIFT_MAX",
    "MAX_PRODUCT", "MAX_REDUCTION", "NumericsError",
    "quantize", "dequantize", "quantize_multiplier", "requantize", "check_accumulator",
    "accumulator_bound",
    "conv2d_acc", "linear_acc", "maxpool2x2", "layer_tile", "tile_grid", "tile_flags",
    "apply_flags",
]

ACT_MIN, ACT_MAX = -128, 127
WEIGHT_MAX = 127
ACC_MIN, ACC_MAX = -(2 ** 31), 2 ** 31 - 1
MULT_BITS = 16
MULT_MAX = 2 ** MULT_BITS - 1
SHIFT_MAX = 31
MAX_PRODUCT = -ACT_MIN * WEIGHT_MAX  # 16 256
#: Longest reduction that cannot overflow the int32 accumulator with a bias below 2**30.
MAX_REDUCTION = (ACC_MAX - 2 ** 30) // MAX_PRODUCT


class NumericsError(ValueError):
    """A value or layer outside what the integer arithmetic can represent."""


def _round_half_even(x):
    return np.rint(x)


def quantize(x, scale, *, lo=ACT_MIN, hi=ACT_MAX):
    """Float → int: ``clamp(round_half_even(x / scale), lo, hi)`` as int64.

    ``scale`` is a positive scalar or broadcastable array. Used for activations (host side, the
    network input), weights (``lo=-127``) and, with ``lo/hi`` at the int32 limits, biases.
    """
    x = np.asarray(x, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    if np.any(scale <= 0) or not np.all(np.isfinite(scale)):
        raise NumericsError(f"quantization scale must be positive and finite, not {scale!r}")
    return np.clip(_round_half_even(x / scale), lo, hi).astype(np.int64)


def dequantize(q, scale):
    return np.asarray(q, dtype=np.float64) * np.asarray(scale, dtype=np.float64)


def quantize_multiplier(ratio):
    """Real rescale factor → ``(m, s)`` with ``m / 2**s ≈ ratio``, ``m < 2**16``, ``s ≤ 31``.

    Picks the largest shift that keeps ``m`` within 16 bits, so the relative error is at most
    2**-16 whenever ``ratio ≥ 2**-16``. Smaller ratios lose precision (``s`` is capped at 31), and
    ``m`` may be 0. A ratio that rounds above 2**16 − 1 with no shift cannot be represented and
    raises.
    """
    ratio = float(ratio)
    if not np.isfinite(ratio) or ratio < 0:
        raise NumericsError(f"requantization ratio must be finite and non-negative, not {ratio}")
    if ratio == 0:
        return 0, 0
    for s in range(SHIFT_MAX, -1, -1):
        m = int(np.rint(ratio * 2.0 ** s))
        if m <= MULT_MAX:
            return m, s
    raise NumericsError(f"requantization ratio {ratio} is too large for a {MULT_BITS}-bit "
                        f"multiplier with no shift (largest is {MULT_MAX})")


def requantize(acc, m, s, *, relu):
    """int32 accumulators → int8: multiply, round half up, shift, optional ReLU, saturate.

    ``acc`` has the output channel on axis 1 (``(N, C, ...)``) or is ``(N, C)``; ``m`` and ``s``
    are per-channel integer arrays of length C.
    """
    acc = np.asarray(acc, dtype=np.int64)
    m = np.asarray(m, dtype=np.int64)
    s = np.asarray(s, dtype=np.int64)
    if np.any((m < 0) | (m > MULT_MAX)) or np.any((s < 0) | (s > SHIFT_MAX)):
        raise NumericsError("requantization multiplier/shift out of range")
    shape = (1, -1) + (1,) * (acc.ndim - 2)
    m = m.reshape(shape)
    s = s.reshape(shape)
    # |acc × m| < 2**47: exact in int64. The rounding constant is 0 for s = 0.
    rnd = np.where(s > 0, np.left_shift(np.int64(1), np.maximum(s - 1, 0)), 0)
    y = np.right_shift(acc * m + rnd, s)
    if relu:
        y = np.maximum(y, 0)
    return np.clip(y, ACT_MIN, ACT_MAX)


def check_accumulator(reduction, bias, where):
    """Refuse a layer whose int32 accumulator could overflow (see the module docstring)."""
    bias = np.abs(np.asarray(bias, dtype=np.int64))
    worst = reduction * MAX_PRODUCT + (int(bias.max()) if bias.size else 0)
    if worst > ACC_MAX:
        raise NumericsError(
            f"{where}: reduction length {reduction} with |bias| up to {int(bias.max())} can reach "
            f"{worst}, beyond the int32 accumulator ({ACC_MAX}); at most "
            f"{(ACC_MAX - int(bias.max())) // MAX_PRODUCT} inputs per output fit")


def accumulator_bound(weight, bias):
    """The largest magnitude a layer's accumulator can reach, over its output channels: ``Σ|w| ×
    128 + |b|`` (every input at its largest magnitude, 128). It bounds every partial sum of the
    products too, in any order, plus the bias or not. It is reached by a channel whose weights
    are all ≥ 0 and bias ≤ 0 (every input -128), or all ≤ 0 and bias ≥ 0."""
    w = np.abs(np.asarray(weight, dtype=np.int64)).reshape(len(weight), -1)
    b = np.abs(np.asarray(bias, dtype=np.int64))
    return int((w.sum(axis=1) * -ACT_MIN + b).max()) if len(weight) else 0


def conv2d_acc(x, w, bias, *, stride, padding):
    """Exact integer conv2d: int8 ``x`` (N, Ci, H, W), int8 ``w`` (Co, Ci, K, K), int32 bias → int64
    accumulators (N, Co, Ho, Wo). Computed in float64, which is exact here (|acc| < 2**31 ≪ 2**53).
    """
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    wt = torch.as_tensor(np.asarray(w), dtype=torch.float64)
    bt = torch.as_tensor(np.asarray(bias), dtype=torch.float64)
    y = torch.nn.functional.conv2d(xt, wt, bt, stride=stride, padding=padding)
    return y.numpy().astype(np.int64)


def linear_acc(x, w, bias):
    """Exact integer fully-connected layer: (N, In) × (Out, In) + bias → int64 (N, Out)."""
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    wt = torch.as_tensor(np.asarray(w), dtype=torch.float64)
    bt = torch.as_tensor(np.asarray(bias), dtype=torch.float64)
    return torch.nn.functional.linear(xt, wt, bt).numpy().astype(np.int64)


def maxpool2x2(x):
    """2×2 max-pool, stride 2, floor mode, on (N, C, H, W) integers."""
    x = np.asarray(x)
    n, c, h, w = x.shape
    h2, w2 = h // 2, w // 2
    x = x[:, :, :2 * h2, :2 * w2].reshape(n, c, h2, 2, w2, 2)
    return x.max(axis=(3, 5))


def layer_tile(kind, tile):
    """The tile a layer of ``kind`` ("conv" or "fc") flags its input in, for a configured tile."""
    return tuple(tile) if kind == "conv" else (tile[2], 1, 1)


def tile_grid(shape, tile):
    """Number of tiles along (C, H, W) of a ``(C, H, W)`` tensor for ``tile = (tc, th, tw)``."""
    return tuple(-(-d // t) for d, t in zip(shape, tile))


def _pad_to_tiles(x, tile):
    n, c, h, w = x.shape
    gc, gh, gw = tile_grid((c, h, w), tile)
    tc, th, tw = tile
    padded = np.zeros((n, gc * tc, gh * th, gw * tw), dtype=x.dtype)
    padded[:, :c, :h, :w] = x
    return padded.reshape(n, gc, tc, gh, th, gw, tw)


def tile_flags(x, tile, epsilon):
    """Flags of ``x`` (N, C, H, W): True where every element of the tile has ``|x| ≤ ε``.

    The tail of a partial edge tile lies outside the tensor and does not count.
    """
    x = np.asarray(x)
    if epsilon < 0:
        raise NumericsError(f"epsilon must be a non-negative integer, not {epsilon}")
    small = _pad_to_tiles(np.abs(x) <= epsilon, tile)
    # Out-of-tensor positions were padded with False; they must not unflag a tile.
    inside = _pad_to_tiles(np.ones((1,) + x.shape[1:], dtype=bool), tile)
    return np.all(small | ~inside, axis=(2, 4, 6))


def apply_flags(x, flags, tile):
    """Zero every flagged tile of ``x`` (N, C, H, W); returns a new array."""
    x = np.asarray(x)
    n, c, h, w = x.shape
    tc, th, tw = tile
    keep = ~np.asarray(flags)
    keep = np.repeat(np.repeat(np.repeat(keep, tc, axis=1), th, axis=2), tw, axis=3)
    return np.where(keep[:, :c, :h, :w], x, 0)
