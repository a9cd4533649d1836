"""Max-norm's own checks and defaults (survivors of mutation testing in aggregators/maxnorm.py):
the EMA's shape may change only before the first step; beta in [0, 1); the paper's ε = 1e-8
is what divides a tiny EMA norm."""

from __future__ import annotations

import pytest
import torch

from mtlbalance.aggregators.maxnorm import MaxNorm


def _step(agg: MaxNorm, jac: torch.Tensor) -> torch.Tensor:
    out = torch.empty(jac.shape[1], dtype=jac.dtype)
    return agg(jac, out, losses=torch.ones(jac.shape[0], dtype=jac.dtype)).weights


def test_a_shape_change_after_the_first_step_is_refused() -> None:
    agg = MaxNorm()
    _step(agg, torch.ones(2, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"shape changed from \(2, 5\) to \(2, 6\).*reset"):
        _step(agg, torch.ones(2, 6, dtype=torch.float64))
    agg.reset()  # after a reset any shape starts afresh
    _step(agg, torch.ones(3, 6, dtype=torch.float64))
    assert agg.ema is not None and agg.ema.shape == (3, 6) and agg.step == 1


@pytest.mark.parametrize("beta", [-0.1, 1.0, 1.5])
def test_beta_outside_zero_one_is_refused(beta: float) -> None:
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\)"):
        MaxNorm(beta=beta)


def test_beta_zero_is_allowed_and_keeps_no_memory() -> None:
    agg = MaxNorm(beta=0.0)
    _step(agg, torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64))
    second = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    _step(agg, second)
    assert agg.ema is not None and torch.equal(agg.ema, second)


def test_the_default_eps_is_the_papers() -> None:
    """Weights α / (‖ĝ_t‖ + ε): with ‖ĝ‖ = (1, 1e-7) on the first step (ĝ = g at β_1 = 0.9,
    σ = 0.5: ĝ = 0.1 g), task 1's weight is 0.1 / (1e-8 + 1e-8) = 5e6, not 1e7."""
    jac = torch.tensor([[1.0, 0.0], [0.0, 1e-7]], dtype=torch.float64)
    w = _step(MaxNorm(), jac)
    want = torch.tensor([0.1 / (0.1 + 1e-8), 0.1 / (1e-8 + 1e-8)], dtype=torch.float64)
    torch.testing.assert_close(w, want, rtol=1e-12, atol=0)
