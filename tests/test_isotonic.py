"""Exact isotonic correction (IDA) against an independent generic solver, plus KD-p and the order metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from softdistill.isotonic import isotonic_logits, order_penalty
from softdistill.metrics import order_concordance, top2_hit_rate


# ---------------------------------------------------------------- generic reference solver
def _edges(classes: int, a: int, b: int, lam: float) -> list[tuple[int, int]]:
    """Constraints as (high, low) pairs meaning z_high >= z_low, straight from the definition."""
    others = [o for o in range(classes) if o not in (a, b)]
    if a == b:
        return [(a, o) for o in others]
    if lam == 0.5:
        return [(a, o) for o in others] + [(b, o) for o in others]
    r, s = (a, b) if lam > 0.5 else (b, a)
    return [(r, s)] + [(s, o) for o in others]


_STRUCTURES: dict[tuple[int, tuple[tuple[int, int], ...]], tuple[np.ndarray, list[np.ndarray]]] = {}


def _structure(classes: int, edges: list[tuple[int, int]]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Subset indicator matrix and, per class i, the subset ids U & L for upper sets U, lower sets L holding i."""
    key = (classes, tuple(edges))
    if key not in _STRUCTURES:
        ids = np.arange(2**classes)
        bits = (ids[:, None] >> np.arange(classes)) & 1 == 1
        hi, lo = np.array([e[0] for e in edges]), np.array([e[1] for e in edges])
        upper = ids[~(bits[:, lo] & ~bits[:, hi]).any(1)]  # low in U => high in U
        lower = ids[~(bits[:, hi] & ~bits[:, lo]).any(1)]  # high in L => low in L
        inter = [(upper[(upper >> i) & 1 == 1][:, None] & lower[(lower >> i) & 1 == 1][None, :])
                 for i in range(classes)]
        _STRUCTURES[key] = (bits.astype(np.float64), inter)
    return _STRUCTURES[key]


def reference_projection(y: np.ndarray, a: int, b: int, lam: float) -> np.ndarray:
    """Isotonic regression on a partial order by the min-max formula (Robertson, Wright & Dykstra,
    1988, Thm 1.4.4): z_i = max over upper sets U containing i of min over lower sets L containing i
    of mean(y[U & L]).  Exact, generic, exponential in K: for K <= 8."""
    bits, inter = _structure(len(y), _edges(len(y), a, b, lam))
    counts = bits.sum(1)
    means = np.divide(bits @ y, counts, out=np.zeros_like(counts), where=counts > 0)
    return np.array([means[ids].min(1).max() for ids in inter])


def _violation(z: np.ndarray, edges: list[tuple[int, int]]) -> float:
    return max(0.0, max(z[lo] - z[hi] for hi, lo in edges))


def _chain_pava(y: np.ndarray, a: int, b: int, lam: float) -> np.ndarray:
    """Textbook pool-adjacent-violators on the chain r, s, o_1, o_2, ... (others sorted descending)."""
    r, s = (a, b) if lam > 0.5 or (lam == 0.5 and y[a] >= y[b]) else (b, a)
    others = sorted((o for o in range(len(y)) if o not in (r, s)), key=lambda o: -y[o])
    chain = [r] + others if a == b else [r, s] + others
    blocks: list[list[float]] = []  # [sum, count]
    for idx in chain:
        blocks.append([y[idx], 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] < blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    values = [blk[0] / blk[1] for blk in blocks for _ in range(int(blk[1]))]
    z = np.empty_like(y)
    z[chain] = values
    return z


def _random_rows(rng: np.random.Generator, classes: int, n: int) -> np.ndarray:
    kind = rng.integers(0, 5, size=n)
    rows = rng.normal(size=(n, classes))
    rows[kind == 1] = rng.integers(0, 3, size=((kind == 1).sum(), classes))  # many ties
    rows[kind == 2] *= 1e-6
    rows[kind == 3] *= 1e4
    rows[kind == 4] += rng.normal(size=((kind == 4).sum(), 1)) * 50  # offset
    return rows


def _random_labels(rng: np.random.Generator, classes: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = rng.integers(0, classes, size=n)
    b = rng.integers(0, classes, size=n)
    same = rng.random(n) < 0.15
    b[same] = a[same]
    lam = rng.random(n)
    lam[rng.random(n) < 0.2] = 0.5
    lam[rng.random(n) < 0.05] = 1.0
    lam[rng.random(n) < 0.05] = 0.0
    return a, b, lam


def _teacher_like(rng: np.random.Generator, classes: int, n: int,
                  intruders: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows where a and b lead and at most `intruders` other classes come near them (few candidates)."""
    a, b, lam = _random_labels(rng, classes, n)
    rows = rng.normal(size=(n, classes))
    rows[np.arange(n), a] += 6
    rows[np.arange(n), b] += 5 + rng.normal(size=n)
    for i in range(n):
        others = [o for o in range(classes) if o not in (a[i], b[i])]
        picked = rng.choice(others, size=int(rng.integers(0, intruders + 1)), replace=False)
        rows[i, picked] = rows[i, a[i]] + rng.uniform(-2, 2, size=len(picked))
    pad = np.minimum(rows[np.arange(n), a], rows[np.arange(n), b])
    candidates = (rows > pad[:, None]).sum(1) - (rows[np.arange(n), a] > pad) - (rows[np.arange(n), b] > pad)
    assert 2 * (candidates.max() + 1) <= classes  # isotonic_logits takes its partial (topk) path
    return rows, a, b, lam


# ---------------------------------------------------------------- exactness
def test_reference_agrees_with_slsqp():
    """Cross-check the min-max reference itself against a generic QP (SLSQP) on small rows."""
    rng = np.random.default_rng(1)
    for _ in range(40):
        classes = int(rng.integers(3, 7))
        y = rng.normal(size=classes)
        a, b = (int(v) for v in rng.integers(0, classes, size=2))
        lam = float(rng.choice([0.3, 0.5, 0.8]))
        edges = _edges(classes, a, b, lam)
        cons = [{"type": "ineq", "fun": lambda z, h=h, l=l: z[h] - z[l],
                 "jac": lambda z, h=h, l=l: np.eye(classes)[h] - np.eye(classes)[l]} for h, l in edges]
        sol = minimize(lambda z: ((z - y) ** 2).sum(), y, jac=lambda z: 2 * (z - y), constraints=cons,
                       method="SLSQP", options={"ftol": 1e-14, "maxiter": 500})
        ref = reference_projection(y, a, b, lam)
        assert _violation(ref, edges) <= 1e-12
        np.testing.assert_allclose(ref, sol.x, atol=1e-5)


@pytest.mark.parametrize("classes", range(3, 9))
def test_matches_generic_solver(classes):
    rng = np.random.default_rng(classes)
    n = 300 if classes < 8 else 150  # 1650 rows in all
    rows = _random_rows(rng, classes, n)
    a, b, lam = _random_labels(rng, classes, n)
    out = isotonic_logits(torch.from_numpy(rows), torch.from_numpy(a), torch.from_numpy(b),
                          torch.from_numpy(lam)).numpy()
    for y, z, ai, bi, li in zip(rows, out, a, b, lam):
        ref = reference_projection(y, int(ai), int(bi), float(li))
        scale = np.abs(y).max()
        obj, obj_ref = ((z - y) ** 2).sum(), ((ref - y) ** 2).sum()
        assert abs(obj - obj_ref) <= 1e-6 * obj_ref + 1e-24 * (1 + scale**2), (y, ai, bi, li)
        assert _violation(z, _edges(classes, int(ai), int(bi), float(li))) <= 1e-6
        np.testing.assert_allclose(z, ref, rtol=0, atol=1e-9 * scale + 1e-30)


@pytest.mark.parametrize("classes", [6, 7, 8])
def test_matches_generic_solver_few_candidates(classes):
    rng = np.random.default_rng(10 + classes)
    rows, a, b, lam = _teacher_like(rng, classes, 60, intruders=1)
    for chunk in range(0, 60, 6):
        part = slice(chunk, chunk + 6)
        out = isotonic_logits(torch.from_numpy(rows[part]), torch.from_numpy(a[part]), torch.from_numpy(b[part]),
                              torch.from_numpy(lam[part])).numpy()
        for y, z, ai, bi, li in zip(rows[part], out, a[part], b[part], lam[part]):
            np.testing.assert_allclose(z, reference_projection(y, int(ai), int(bi), float(li)), rtol=0, atol=1e-9)


def test_matches_chain_pava_large_k():
    rng = np.random.default_rng(0)
    for classes in (2, 30, 257):
        rows = _random_rows(rng, classes, 40)
        a, b, lam = _random_labels(rng, classes, 40)
        out = isotonic_logits(torch.from_numpy(rows), torch.from_numpy(a), torch.from_numpy(b),
                              torch.from_numpy(lam)).numpy()
        for y, z, ai, bi, li in zip(rows, out, a, b, lam):
            np.testing.assert_allclose(z, _chain_pava(y, int(ai), int(bi), float(li)), rtol=1e-9,
                                       atol=1e-9 * np.abs(y).max())
    for classes in (30, 257):
        rows, a, b, lam = _teacher_like(rng, classes, 40, intruders=6)
        out = isotonic_logits(torch.from_numpy(rows), torch.from_numpy(a), torch.from_numpy(b),
                              torch.from_numpy(lam)).numpy()
        for y, z, ai, bi, li in zip(rows, out, a, b, lam):
            np.testing.assert_allclose(z, _chain_pava(y, int(ai), int(bi), float(li)), rtol=1e-9, atol=1e-9)


def test_float32_close_to_float64():
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(32, 500)) * 5
    a, b, lam = _random_labels(rng, 500, 32)
    args = (torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(lam))
    out32 = isotonic_logits(torch.from_numpy(rows).float(), *args)
    out64 = isotonic_logits(torch.from_numpy(rows), *args)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out64, rtol=0, atol=1e-4)


def test_one_class_and_empty_batch():
    y = torch.tensor([[1.5], [-2.0]])
    zero = torch.zeros(2, dtype=torch.long)
    assert torch.equal(isotonic_logits(y, zero, zero, 0.7), y)
    assert isotonic_logits(torch.zeros(0, 4), zero[:0], zero[:0], 0.7).shape == (0, 4)


# ---------------------------------------------------------------- properties
def test_ordered_rows_unchanged():
    y = torch.tensor([[5.0, 3.0, 1.0, 3.0], [2.0, 4.0, -1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    a, b = torch.tensor([0, 0, 2]), torch.tensor([1, 1, 2])
    assert torch.equal(isotonic_logits(y, a, b, torch.tensor([0.9, 0.5, 0.3])), y)
    assert torch.equal(isotonic_logits(y[:1], a[:1], b[:1], 0.6), y[:1])


def test_hand_example():
    # r = 0, s = 1 (lam 0.7); teacher says tiger (2) > panda (0) > cat (1).
    y = torch.tensor([[2.0, 1.0, 3.0, 0.0]])
    out = isotonic_logits(y, torch.tensor([0]), torch.tensor([1]), 0.7)
    # s-block {1, 2} has level 2 = y_r, so r stays: z = (2, 2, 2, 0).
    torch.testing.assert_close(out, torch.tensor([[2.0, 2.0, 2.0, 0.0]]))
    out = isotonic_logits(torch.tensor([[1.0, 1.0, 4.0, 0.0]]), torch.tensor([0]), torch.tensor([1]), 0.7)
    torch.testing.assert_close(out, torch.tensor([[2.0, 2.0, 2.0, 0.0]]))  # all three pooled


def test_shift_and_scale_equivariance():
    rng = np.random.default_rng(5)
    y = torch.from_numpy(rng.normal(size=(50, 12)))
    a, b, lam = (torch.from_numpy(v) for v in _random_labels(rng, 12, 50))
    base = isotonic_logits(y, a, b, lam)
    torch.testing.assert_close(isotonic_logits(y + 7.25, a, b, lam), base + 7.25)
    torch.testing.assert_close(isotonic_logits(y * 0.37, a, b, lam), base * 0.37)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_dtype_preserved(dtype):
    y = torch.randn(4, 6).to(dtype)
    out = isotonic_logits(y, torch.tensor([0, 1, 2, 3]), torch.tensor([1, 1, 0, 5]), 0.6)
    assert out.dtype == dtype and out.device == y.device


def test_int32_labels():
    y = torch.randn(4, 6)
    a, b = torch.tensor([0, 1, 2, 3]), torch.tensor([1, 1, 0, 5])
    assert torch.equal(isotonic_logits(y, a.int(), b.int(), 0.3), isotonic_logits(y, a, b, 0.3))
    assert order_penalty(y, a.int(), b.int(), 0.3) == order_penalty(y, a, b, 0.3)
    assert order_concordance(y, a.int(), b.int(), 0.3) == order_concordance(y, a, b, 0.3)


def test_per_sample_lam_equals_per_row_calls():
    rng = np.random.default_rng(7)
    y = torch.from_numpy(rng.normal(size=(40, 7)))
    a, b, lam = _random_labels(rng, 7, 40)
    batched = isotonic_logits(y, torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(lam))
    for i in range(40):
        row = isotonic_logits(y[i:i + 1], torch.from_numpy(a[i:i + 1]), torch.from_numpy(b[i:i + 1]), float(lam[i]))
        assert torch.equal(row, batched[i:i + 1])


def test_no_gradient_to_teacher():
    y = torch.randn(3, 5, requires_grad=True)
    out = isotonic_logits(y, torch.tensor([0, 1, 2]), torch.tensor([1, 2, 2]), 0.3)
    assert not out.requires_grad and out.grad_fn is None


@pytest.mark.parametrize("fn", [isotonic_logits, order_penalty, order_concordance])
def test_input_checks(fn):
    y, a, b = torch.randn(3, 5), torch.tensor([0, 1, 2]), torch.tensor([1, 2, 3])
    with pytest.raises(ValueError, match="B x K"):
        fn(y[0], a, b, 0.5)
    with pytest.raises(ValueError, match="shape"):
        fn(y, a[:2], b, 0.5)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        fn(y, a, torch.tensor([1, 2, 5]), 0.5)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        fn(y, torch.tensor([-1, 0, 0]), b, 0.5)
    with pytest.raises(ValueError, match="integer"):
        fn(y, a.float(), b, 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fn(y, a, b, 1.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fn(y, a, b, torch.tensor([0.2, -0.1, 0.5]))
    with pytest.raises(ValueError, match="lam"):
        fn(y, a, b, torch.tensor([0.2, 0.5]))


# ---------------------------------------------------------------- KD-p penalty
def test_order_penalty_hand_value_and_gradient():
    z = torch.tensor([[0.0, 1.0, 2.0]], requires_grad=True)  # a = 0 (lam 0.7, r), b = 1 (s), other 2
    e = [1.0, math.e, math.e**2]
    p = [v / sum(e) for v in e]  # 0.0900, 0.2447, 0.6652
    expected = (p[2] - p[0]) + (p[1] - p[0])  # relu(max_o p_o - min(p_a, p_b)) + relu(p_s - p_r)
    loss = order_penalty(z, torch.tensor([0]), torch.tensor([1]), 0.7)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert z.grad[0, 0] < 0 < z.grad[0, 2]  # raise the heavier label, lower the intruder
    with torch.no_grad():
        assert order_penalty(z - 0.1 * z.grad, torch.tensor([0]), torch.tensor([1]), 0.7) < loss
    # lam == 0.5 drops the r-s term; lam < 0.5 swaps r and s; a == b keeps only relu(max_o p_o - p_a).
    assert order_penalty(z, torch.tensor([0]), torch.tensor([1]), 0.5).item() == pytest.approx(p[2] - p[0], rel=1e-6)
    assert order_penalty(z, torch.tensor([0]), torch.tensor([1]), 0.2).item() == pytest.approx(p[2] - p[0], rel=1e-6)
    assert order_penalty(z, torch.tensor([1]), torch.tensor([1]), 0.9).item() == pytest.approx(p[2] - p[1], rel=1e-6)
    assert order_penalty(z, torch.tensor([2]), torch.tensor([1]), 0.9).item() == 0.0  # ordered
    lam = torch.tensor([0.7, 0.5])
    both = order_penalty(z.detach().repeat(2, 1), torch.tensor([0, 0]), torch.tensor([1, 1]), lam)
    assert both.item() == pytest.approx((expected + p[2] - p[0]) / 2, rel=1e-6)


def test_order_penalty_two_classes():
    z = torch.tensor([[3.0, 0.0]], requires_grad=True)
    loss = order_penalty(z, torch.tensor([0]), torch.tensor([1]), 0.2)  # r = 1, s = 0, no others
    p0 = 1 / (1 + math.exp(-3))
    assert loss.item() == pytest.approx(p0 - (1 - p0), rel=1e-6)
    loss.backward()
    assert torch.isfinite(z.grad).all()


# ---------------------------------------------------------------- metrics
def test_order_concordance():
    a, b = torch.tensor([0]), torch.tensor([1])
    assert order_concordance(torch.tensor([[4.0, 3.0, 1.0, 2.0]]), a, b, 0.8) == 1.0
    assert order_concordance(torch.tensor([[1.0, 2.0, 4.0, 3.0]]), a, b, 0.8) == -1.0
    # r = 0, s = 1: (r,s) +1, (r,2) +1, (r,3) +1, (s,2) -1, (s,3) +1 -> 3/5; with a tie at (s,2) -> 4/5.
    soft = torch.tensor([[3.0, 1.0, 2.0, 0.0], [3.0, 2.0, 2.0, 0.0]])
    assert order_concordance(soft, a.repeat(2), b.repeat(2), 0.7) == pytest.approx(0.7)
    assert order_concordance(soft.softmax(1), a.repeat(2), b.repeat(2), 0.7) == pytest.approx(0.7)
    # lam < 0.5: r = 1, s = 0: (r,s) -1, (r,2) -1, (r,3) +1, (s,2) +1, (s,3) +1 -> 1/5
    assert order_concordance(soft[:1], a, b, 0.3) == pytest.approx(0.2)
    # lam == 0.5: no (r,s) pair -> 2/4
    assert order_concordance(soft[:1], a, b, 0.5) == pytest.approx(0.5)
    # a == b == 1: pairs (1,0) -1, (1,2) -1, (1,3) +1 -> -1/3
    assert order_concordance(soft[:1], b, b, 0.9) == pytest.approx(-1 / 3)
    lam = torch.tensor([0.3, 0.5])
    assert order_concordance(soft[[0, 0]], a.repeat(2), b.repeat(2), lam) == pytest.approx(0.35)


def test_top2_hit_rate():
    soft = torch.tensor([[5.0, 4.0, 0.0, 1.0],   # a, b both in the top-2
                         [5.0, 0.0, 4.0, 1.0],   # only a
                         [0.0, 1.0, 5.0, 4.0],   # neither
                         [0.0, 1.0, 5.0, 4.0]])  # a == b == 3 in the top-2
    a, b = torch.tensor([0, 0, 0, 3]), torch.tensor([1, 1, 1, 3])
    assert top2_hit_rate(soft, a, b) == pytest.approx(0.75)
    assert top2_hit_rate(soft, a, b, both=True) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="two classes"):
        top2_hit_rate(soft[:, :1], torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long))
