"""The numerics contract: rounding, saturation, accumulator limits, tiles and ε."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sw import numerics as nx


def _requant_reference(acc, m, s, relu):
    # Round half up, written with exact rationals instead of shifts.
    y = Fraction(acc * m, 2 ** s)
    y = (y + Fraction(1, 2)).__floor__()
    if relu:
        y = max(y, 0)
    return min(max(y, -128), 127)


@pytest.mark.parametrize("acc,m,s,expect", [
    (3, 1, 1, 2),      # 1.5 → 2
    (-3, 1, 1, -1),    # -1.5 → -1 (half up, toward +inf)
    (-5, 1, 1, -2),    # -2.5 → -2
    (5, 1, 1, 3),      # 2.5 → 3
    (1, 1, 1, 1),      # 0.5 → 1
    (-1, 1, 1, 0),     # -0.5 → 0
    (7, 3, 0, 21),     # no shift: plain product
    (10 ** 6, 1, 0, 127),        # saturates high
    (-(10 ** 6), 1, 0, -128),    # saturates low
    (2 ** 31 - 1, 65535, 31, 127),
    (-(2 ** 31), 65535, 31, -128),
])
def test_requantize_edges(acc, m, s, expect):
    got = nx.requantize(np.array([[acc]]), [m], [s], relu=False)
    assert int(got[0, 0]) == expect == _requant_reference(acc, m, s, False)


def test_requantize_relu_and_per_channel():
    acc = np.array([[-300, 300], [5, -5]])
    got = nx.requantize(acc, [1, 2], [1, 2], relu=True)
    assert got.tolist() == [[0, 127], [3, 0]]


@given(st.integers(nx.ACC_MIN, nx.ACC_MAX), st.integers(0, nx.MULT_MAX),
       st.integers(0, nx.SHIFT_MAX), st.booleans())
def test_requantize_matches_rational_reference(acc, m, s, relu):
    got = nx.requantize(np.array([[acc]]), [m], [s], relu=relu)
    assert int(got[0, 0]) == _requant_reference(acc, m, s, relu)


def test_requantize_rejects_out_of_range_parameters():
    with pytest.raises(nx.NumericsError):
        nx.requantize(np.array([[1]]), [2 ** 16], [0], relu=False)
    with pytest.raises(nx.NumericsError):
        nx.requantize(np.array([[1]]), [1], [32], relu=False)


@given(st.floats(2.0 ** -16, float(nx.MULT_MAX)))
def test_quantize_multiplier_precision(ratio):
    m, s = nx.quantize_multiplier(ratio)
    assert 0 < m <= nx.MULT_MAX and 0 <= s <= nx.SHIFT_MAX
    # Largest shift that fits: half a unit of m, m ≥ 2**15 unless the shift is capped.
    assert abs(m / 2 ** s - ratio) <= 0.5 / 2 ** s
    assert abs(m / 2 ** s - ratio) / ratio <= 2.0 ** -15


def test_quantize_multiplier_limits():
    assert nx.quantize_multiplier(0) == (0, 0)
    m, s = nx.quantize_multiplier(2.0 ** -40)   # below the 31-bit shift: precision lost
    assert s == 31 and m == 0
    with pytest.raises(nx.NumericsError, match="too large"):
        nx.quantize_multiplier(2.0 ** 16)
    with pytest.raises(nx.NumericsError):
        nx.quantize_multiplier(float("nan"))


def test_quantize_rounds_half_even_and_saturates():
    q = nx.quantize([0.5, 1.5, 2.5, -0.5, 1000.0, -1000.0], 1.0)
    assert q.tolist() == [0, 2, 2, 0, 127, -128]
    assert nx.quantize([-1000.0], 1.0, lo=-127, hi=127).tolist() == [-127]
    with pytest.raises(nx.NumericsError):
        nx.quantize([1.0], 0.0)


def test_accumulator_limit_is_exact():
    n = nx.MAX_REDUCTION
    # With a bias just below 2**30 the longest accepted layer still fits; one more input does not.
    bias = nx.ACC_MAX - n * nx.MAX_PRODUCT
    assert bias >= 2 ** 30 - 1
    nx.check_accumulator(n, [bias], "layer")
    with pytest.raises(nx.NumericsError, match="int32 accumulator"):
        nx.check_accumulator(n, [bias + 1], "layer")
    with pytest.raises(nx.NumericsError, match="layer 'x'"):
        nx.check_accumulator(n + 1, [bias], "layer 'x'")


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 8), st.integers(0, 2 ** 32 - 1))
def test_accumulator_bound_holds_every_sum(co, n, seed):
    rng = np.random.default_rng(seed)
    w = rng.integers(-nx.WEIGHT_MAX, nx.WEIGHT_MAX + 1, (co, n))
    b = rng.integers(-5000, 5001, co)
    # Every input at an extreme, every subset of the products (0 for the others), bias or not:
    # the sums the accelerator's accumulators pass through, in whatever order it adds.
    grid = np.array(np.meshgrid(*[[nx.ACT_MIN, 0, nx.ACT_MAX]] * n)).reshape(n, -1).T
    sums = grid @ w.T                                   # (inputs, co)
    reached = int(max(np.abs(sums).max(), np.abs(sums + b).max()))
    bound = nx.accumulator_bound(w, b)
    assert reached <= bound
    # It is reached when a channel's weights are all ≥ 0 and its bias ≤ 0 (every input -128).
    pos = np.abs(w)
    assert nx.accumulator_bound(pos, -np.abs(b)) == int(np.abs(grid @ pos.T - np.abs(b)).max())


def test_worst_case_accumulator_is_exact():
    # Every product at its most negative: -128 × 127, summed over the longest reduction.
    n = nx.MAX_REDUCTION
    bias = -(2 ** 30)
    x = np.full((1, n), -128)
    w = np.full((1, n), 127)
    acc = nx.linear_acc(x, w, [bias])
    assert int(acc[0, 0]) == -128 * 127 * n + bias
    assert nx.ACC_MIN <= int(acc[0, 0])
    # The same through conv2d: n = channels × 3 × 3.
    c = n // 9
    acc = nx.conv2d_acc(np.full((1, c, 3, 3), -128), np.full((1, c, 3, 3), 127), [bias],
                        stride=1, padding=0)
    assert int(acc[0, 0, 0, 0]) == -128 * 127 * c * 9 + bias


def test_maxpool_floor_mode():
    x = np.arange(2 * 5 * 5).reshape(1, 2, 5, 5)
    y = nx.maxpool2x2(x)
    assert y.shape == (1, 2, 2, 2)
    assert y[0, 0].tolist() == [[6, 8], [16, 18]]


def test_tile_flags_partial_tiles_and_epsilon():
    x = np.zeros((1, 1, 2, 6), dtype=np.int64)
    x[0, 0, 0, 1] = 3       # tile (row 0, cols 0-3)
    x[0, 0, 1, 5] = -2      # partial tile (row 1, cols 4-5)
    tile = (1, 1, 4)
    assert nx.tile_flags(x, tile, 0).tolist() == [[[[False, True], [True, False]]]]
    assert nx.tile_flags(x, tile, 2).tolist() == [[[[False, True], [True, True]]]]
    assert nx.tile_flags(x, tile, 3).all()
    # Coarser tiles: a whole channel plane.
    assert nx.tile_flags(x, (1, 2, 6), 2).tolist() == [[[[False]]]]


def test_apply_flags_zeroes_only_flagged_tiles():
    x = np.arange(1, 13).reshape(1, 1, 2, 6)
    flags = np.array([[[[True, False], [False, True]]]])
    y = nx.apply_flags(x, flags, (1, 1, 4))
    assert y.tolist() == [[[[0, 0, 0, 0, 5, 6], [7, 8, 9, 10, 0, 0]]]]
    assert x[0, 0, 0, 0] == 1   # the input is not modified


def test_negative_epsilon_rejected():
    with pytest.raises(nx.NumericsError, match="epsilon"):
        nx.tile_flags(np.zeros((1, 1, 1, 1)), (1, 1, 1), -1)


@settings(deadline=None, max_examples=60)
@given(st.integers(1, 3), st.integers(1, 5), st.integers(3, 9), st.integers(0, 3),
       st.data())
def test_flagged_tiles_behave_as_zeros(c, tw, w, eps, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
    x = rng.integers(-eps - 1, eps + 2, size=(1, c, 3, w))
    tile = (1, 1, tw)
    flags = nx.tile_flags(x, tile, eps)
    y = nx.apply_flags(x, flags, tile)
    # Flagged tiles are all zero afterwards; unflagged ones are untouched and hold a |x| > ε.
    full = np.repeat(flags, tw, axis=3)[..., :w]
    assert np.all(y[full] == 0)
    assert np.array_equal(y[~full], x[~full])
    unflagged_tiles = nx.tile_flags(np.where(full, eps + 1, x), tile, eps)
    assert not unflagged_tiles.any()
