"""Code-book tests: the V2 table, level sets, the offline search, the shape lookup.

Fast (a few seconds): the only search over a full distribution is the one that
re-derives the shipped lookup entries for beta = 1 and 2.
"""

import itertools
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dambq import codebook as cb
from dambq.codebook import (
    TABLE_FILE,
    V2_LAPLACE_TABLE,
    best_uniform_clip,
    build_codebook,
    gennorm_quantile_points,
    levels_from_coefs,
    search_multibit,
    search_table,
    shape_stat_of_beta,
)

# Spec section 1, typed in by hand: bits -> (a_1..a_b, k_b).
SPEC_V2_TABLE = {
    0: ((), 0.5),
    1: ((1.0,), 0.98),
    2: ((0.6123, 0.3877), 2.6),
    3: ((0.4557, 0.3436, 0.2007), 4.16),
    4: ((0.3317, 0.2858, 0.2346, 0.1479), 5.66),
}

# 4-level Lloyd-Max quantizer of a unit Gaussian (Max 1960): +-0.4528, +-1.510 sigma.
LLOYD_MAX_GAUSS_2BIT = np.array([-1.510, -0.4528, 0.4528, 1.510])

CODEBOOK_NAMES = ("lookup", "laplace", "uniform", "v1")


# ----------------------------------------------------------------------------- V2 table

def test_v2_table_matches_spec_exactly():
    assert set(V2_LAPLACE_TABLE) == set(SPEC_V2_TABLE)
    for bits, (coefs, k) in SPEC_V2_TABLE.items():
        got_coefs, got_k = V2_LAPLACE_TABLE[bits]
        assert tuple(got_coefs) == coefs, bits
        assert got_k == k, bits


def test_v2_table_coefficients_sum_to_one():
    for bits in range(1, 5):
        assert sum(V2_LAPLACE_TABLE[bits][0]) == pytest.approx(1.0, abs=1e-4)


# the original code's table, as the spec's section 1 states it
SPEC_V1_TABLE = {0: ((), 0.5), 1: ((1.0,), 0.98), 2: ((0.65, 0.35), 2.43),
                 3: ((7 / 15, 1 / 3, 1 / 5), 4.36), 4: ((0.32, 0.28, 0.24, 0.16), 5.52)}


@pytest.mark.parametrize("name,spec", [("laplace", SPEC_V2_TABLE), ("v1", SPEC_V1_TABLE)])
def test_constant_codebooks_are_the_authors_tables(name, spec):
    book = build_codebook(name)
    assert book.betas == (1.0,)
    assert tuple(book.levels.shape) == (5, 1, 16)
    for bits, (coefs, k) in spec.items():
        assert float(book.clip_factor[bits, 0]) == pytest.approx(k, rel=1e-6)
        expected_coefs = np.zeros(4)
        expected_coefs[:bits] = coefs
        np.testing.assert_allclose(book.coefs[bits, 0].numpy(), expected_coefs, atol=1e-6)
        # levels: the 2^b sums of +-a_i, sorted, then padded with the top level
        n = 2 ** bits
        expected = np.sort([np.dot(signs, coefs) for signs in itertools.product((-1, 1), repeat=bits)]) \
            if bits else np.zeros(1)
        np.testing.assert_allclose(book.levels[bits, 0, :n].numpy(), expected, atol=1e-6)
        assert torch.all(book.levels[bits, 0, n:] == book.levels[bits, 0, n - 1])


def test_spec_check_laplace_2bit_levels():
    """Spec: the 2-bit row gives levels +-0.584 s and +-2.6 s (s = mean|w|)."""
    coefs, k = V2_LAPLACE_TABLE[2]
    np.testing.assert_allclose(levels_from_coefs(coefs) * k, [-2.6, -0.584, 0.584, 2.6], atol=1e-3)


# ----------------------------------------------------------------------------- levels

@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(st.lists(st.floats(0.01, 1.0), min_size=1, max_size=4))
def test_levels_count_symmetric_sorted(raw):
    coefs = np.sort(np.array(raw))[::-1]
    coefs = coefs / coefs.sum()
    lv = levels_from_coefs(coefs)
    assert lv.shape == (2 ** len(raw),)
    assert np.all(np.diff(lv) >= 0)
    np.testing.assert_allclose(lv, -lv[::-1], atol=1e-12)
    assert lv[-1] == pytest.approx(1.0)  # sum a_i = 1: the top level is the clip
    # the level set is exactly {sum_i s_i a_i : s in {-1,+1}^b} (brute force)
    brute = np.sort([np.dot(signs, coefs) for signs in itertools.product((-1, 1), repeat=len(raw))])
    np.testing.assert_allclose(lv, brute, atol=1e-12)


@pytest.mark.parametrize("bits", range(5))
def test_levels_from_v2_coefs(bits):
    lv = levels_from_coefs(V2_LAPLACE_TABLE[bits][0])
    assert lv.size == 2 ** bits
    assert len(np.unique(np.round(lv, 9))) == 2 ** bits
    assert np.all(np.diff(lv) > 0)
    np.testing.assert_allclose(lv, -lv[::-1], atol=1e-12)


def test_zero_bits_is_single_zero_level():
    lv = levels_from_coefs(())
    assert lv.shape == (1,)
    assert lv[0] == 0.0
    for name in CODEBOOK_NAMES:
        book = build_codebook(name)
        assert torch.all(book.levels[0] == 0), name


@pytest.mark.parametrize("name", CODEBOOK_NAMES)
def test_codebook_shapes_and_ranges(name):
    book = build_codebook(name)
    n_shapes = len(book.betas)
    assert tuple(book.levels.shape) == (5, n_shapes, 16)
    assert tuple(book.clip_factor.shape) == (5, n_shapes)
    assert tuple(book.coefs.shape) == (5, n_shapes, 4)
    for bits in range(1, 5):
        lv = book.levels[bits, :, : 2 ** bits]
        assert torch.all(lv[:, 1:] > lv[:, :-1]), (name, bits)            # sorted, distinct
        torch.testing.assert_close(lv, -lv.flip(-1), atol=1e-6, rtol=0)   # symmetric
        torch.testing.assert_close(lv[:, -1], torch.ones(n_shapes), atol=1e-5, rtol=0)
        torch.testing.assert_close(book.coefs[bits].sum(-1), torch.ones(n_shapes), atol=1e-5, rtol=0)
        assert torch.all(book.clip_factor[bits] > 0)


def test_uniform_codebook_levels_are_uniform():
    book = build_codebook("uniform")
    for bits in range(1, 5):
        lv = book.levels[bits, :, : 2 ** bits].double()
        gaps = lv[:, 1:] - lv[:, :-1]
        torch.testing.assert_close(gaps, gaps[:, :1].expand_as(gaps), atol=1e-6, rtol=0)


def test_unknown_codebook_raises():
    with pytest.raises(ValueError, match="nonexistent"):
        build_codebook("nonexistent")
    with pytest.raises(ValueError):
        search_table("laplace")


# ----------------------------------------------------------------------------- search

@pytest.fixture(scope="module")
def laplace_points():
    return gennorm_quantile_points(1.0)


@pytest.fixture(scope="module")
def gauss_points():
    return gennorm_quantile_points(2.0)


def test_quantile_points_scale(laplace_points, gauss_points):
    for x in (laplace_points, gauss_points):
        assert np.abs(x).mean() == pytest.approx(1.0, rel=1e-9)
        assert np.mean(x) == pytest.approx(0.0, abs=1e-9)
        assert np.all(np.diff(x) > 0)
    # shape statistic of the points matches the closed form
    for beta, x in ((1.0, laplace_points), (2.0, gauss_points)):
        stat = np.abs(x).mean() / np.sqrt(np.mean(x ** 2))
        assert stat == pytest.approx(float(shape_stat_of_beta(beta)), rel=2e-3)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_search_on_laplace_reproduces_v2_table(laplace_points, bits):
    """Coefficients within 0.01 absolute (1% of their sum; the smallest 4-bit
    coefficient, 0.1479, is reproduced as 0.1512, 2.2% relative), clip within 1.5%."""
    a, k, mse = search_multibit(laplace_points, bits)
    coefs, k_v2 = SPEC_V2_TABLE[bits]
    assert a.sum() == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(a, coefs, atol=0.01, rtol=0)
    assert k == pytest.approx(k_v2, rel=0.015)
    # and the search is at least as good as the V2 table on the same points
    v2_levels = levels_from_coefs(coefs) * k_v2
    _, q = cb.quantize_to_levels(laplace_points, v2_levels)
    assert mse <= np.mean((laplace_points - q) ** 2) * (1 + 1e-6)


def test_search_laplace_2bit_matches_spec_optimum(laplace_points):
    """Spec: optimal 4-level quantizer of a Laplace law has levels +-0.594 s, +-2.594 s."""
    a, k, _ = search_multibit(laplace_points, 2)
    np.testing.assert_allclose(levels_from_coefs(a) * k, [-2.594, -0.594, 0.594, 2.594], rtol=0.01)


def test_search_gaussian_2bit_is_lloyd_max(gauss_points):
    a, k, _ = search_multibit(gauss_points, 2)
    sigma = np.sqrt(np.mean(gauss_points ** 2))
    np.testing.assert_allclose(levels_from_coefs(a) * k / sigma, LLOYD_MAX_GAUSS_2BIT, rtol=0.01)


def test_search_one_bit_is_mean_abs(laplace_points):
    """The best 1-bit code of any symmetric law is +-mean|x| (k = 1 in these units)."""
    a, k, _ = search_multibit(laplace_points, 1)
    np.testing.assert_allclose(a, [1.0])
    assert k == pytest.approx(1.0, rel=1e-6)


def test_search_error_decreases_with_bits(gauss_points):
    errors = [search_multibit(gauss_points, b)[2] for b in range(5)]
    assert errors[0] == pytest.approx(np.mean(gauss_points ** 2))
    assert all(e1 < e0 for e0, e1 in zip(errors, errors[1:]))


def test_best_uniform_clip_beats_neighbours(gauss_points):
    for bits in (2, 3):
        k, mse = best_uniform_clip(gauss_points, bits)
        unit = levels_from_coefs(cb._power_of_two_coefs(bits))
        for factor in (0.9, 1.1):
            _, q = cb.quantize_to_levels(gauss_points, unit * k * factor)
            assert mse < np.mean((gauss_points - q) ** 2)


# ----------------------------------------------------------------------------- shape statistic

def test_shape_statistic_known_values():
    assert float(shape_stat_of_beta(1.0)) == pytest.approx(1 / math.sqrt(2), rel=1e-9)
    assert float(shape_stat_of_beta(2.0)) == pytest.approx(math.sqrt(2 / math.pi), rel=1e-9)
    # the uniform limit (beta -> inf) is sqrt(3)/2
    assert float(shape_stat_of_beta(200.0)) == pytest.approx(math.sqrt(3) / 2, rel=1e-2)


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(st.floats(0.3, 10.0), st.floats(0.3, 10.0))
def test_shape_statistic_monotone(b1, b2):
    if abs(b1 - b2) < 1e-3:
        return
    lo, hi = sorted((b1, b2))
    assert float(shape_stat_of_beta(lo)) < float(shape_stat_of_beta(hi))


# ----------------------------------------------------------------------------- shipped table

def test_shipped_table_matches_fresh_search():
    assert TABLE_FILE.exists()
    shipped = json.loads(TABLE_FILE.read_text())["lookup"]
    fresh = search_table("lookup", betas=(1.0, 2.0))
    for beta in ("1.0", "2.0"):
        assert len(shipped[beta]) == len(fresh[beta]) == 5
        for bits, (row_s, row_f) in enumerate(zip(shipped[beta], fresh[beta])):
            assert len(row_s) == len(row_f) == bits + 1
            np.testing.assert_allclose(row_s, row_f, atol=1e-3, rtol=0, err_msg=f"beta={beta} bits={bits}")


def test_lookup_codebook_holds_shipped_entries():
    shipped = json.loads(TABLE_FILE.read_text())["lookup"]
    book = build_codebook("lookup")
    assert book.betas == tuple(float(b) for b in shipped)
    for beta in (1.0, 2.0):
        j = book.entry(beta)
        assert book.betas[j] == beta
        for bits, row in enumerate(shipped[repr(beta)]):
            assert float(book.clip_factor[bits, j]) == pytest.approx(row[-1], rel=1e-5)
            np.testing.assert_allclose(book.coefs[bits, j, :bits].numpy(), row[:-1], atol=1e-6)


# ----------------------------------------------------------------------------- pick

def _stat(x: torch.Tensor) -> torch.Tensor:
    return x.abs().mean() / x.pow(2).mean().sqrt()


def test_pick_laplace_and_gaussian_samples():
    book = build_codebook("lookup")
    gen = torch.Generator().manual_seed(0)
    gauss = torch.randn(200_000, generator=gen, dtype=torch.float64)
    laplace = torch.distributions.Laplace(0.0, 1.0)
    torch.manual_seed(0)
    lap = laplace.sample((200_000,)).double()
    stats = torch.stack([_stat(lap), _stat(gauss)]).float()
    picked = book.pick(stats)
    assert book.betas[int(picked[0])] == 1.0
    assert book.betas[int(picked[1])] == 2.0
    assert int(picked[0]) == book.entry(1.0)
    assert int(picked[1]) == book.entry(2.0)


def test_pick_is_monotone_and_entry_exact_on_grid():
    book = build_codebook("lookup")
    for j, beta in enumerate(book.betas):
        assert book.entry(beta) == j
    stats = torch.linspace(0.5, 0.86, 200)
    picked = book.pick(stats)
    assert torch.all(picked[1:] >= picked[:-1])
    assert int(picked[0]) == 0 and int(picked[-1]) == len(book.betas) - 1


def test_single_entry_codebook_picks_zero():
    book = build_codebook("laplace")
    assert torch.all(book.pick(torch.tensor([0.5, 0.7, 0.8, 0.9])) == 0)
