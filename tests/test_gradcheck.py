"""graphc check's numerical derivative: smooth functions, curvature and kinks near the point."""

from __future__ import annotations

import pytest

from graphc.runtime.train.gradcheck import STEP, _derivative


def derivative(f, x0=0.3):
    return _derivative(f, x0, f(x0), STEP)


def test_curvature_alone_is_smooth():
    d, smooth = derivative(lambda x: 5e3 * x * x + 2 * x)  # one-sided slopes differ by 1e4 * step
    assert smooth and d == pytest.approx(3002, rel=1e-9)


def test_a_kink_at_the_point_has_no_derivative():
    assert not derivative(lambda x: max(x - 0.3, 0.0) + 0.1 * x)[1]


def test_a_small_kink_within_the_step_is_stepped_over():
    """A unit downstream crossing zero 0.5 steps away changes the slope by a fraction of a percent:
    below the old absolute floor, but enough to spoil the difference (mlp.net's fc1.W once)."""
    slope, jump = 6.7e-5, 2.8e-7
    f = lambda x: slope * x + jump * max(x - 0.3 - 0.5 * STEP, 0.0)
    d, smooth = derivative(f)
    assert smooth and d == pytest.approx(slope, rel=1e-6)


def test_a_kink_within_a_quarter_step_has_no_derivative():
    f = lambda x: 6.7e-5 * x + 2.8e-7 * max(x - 0.3 - 0.1 * STEP, 0.0)
    assert not derivative(f)[1]
