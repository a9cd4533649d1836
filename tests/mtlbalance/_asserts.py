"""A vocabulary of properties a balancing method may keep (after torchjd's
``tests/unit/aggregation/_asserts.py``), and rank-controlled random inputs.

Each assertion takes a *factory* (a fresh method per call, so stateful methods start
equal) and inputs, and states its property in its docstring. Expected values come from the
property itself (a permutation, a scaling, a dot product), never from the code under test.
"""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from mtlbalance._random import RandomDraws
from mtlbalance.aggregators import GradientAggregator

F64 = torch.float64
EPS = float(torch.finfo(F64).eps)
Factory = Callable[[], GradientAggregator]


# ------------------------------------------------------------------------------- inputs
def random_matrix(
    num_tasks: int,
    num_params: int,
    *,
    rank: int | None = None,
    decades: float = 0.0,
    seed: int = 0,
) -> Tensor:
    """(T, P) rows of a given rank (default min(T, P)), directions random, row norms
    log-uniform over ``decades`` orders of magnitude (the first row has norm 1, the last
    10^decades)."""
    gen = torch.Generator().manual_seed(seed)
    rank = min(num_tasks, num_params) if rank is None else rank
    left = torch.randn(num_tasks, rank, generator=gen, dtype=F64)
    right = torch.randn(rank, num_params, generator=gen, dtype=F64)
    rows = left @ right
    rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-300)
    exponents = torch.rand(num_tasks, generator=gen, dtype=F64) * decades
    exponents[0] = 0.0
    exponents[-1] = decades
    return rows * (10.0**exponents)[:, None]


def degenerate_matrices(num_params: int = 7) -> dict[str, Tensor]:
    g = torch.linspace(-1.0, 2.0, num_params, dtype=F64)
    h = torch.cos(torch.arange(num_params, dtype=F64))
    return {
        "one zero row": torch.stack([g, torch.zeros_like(g), h]),
        "identical rows": torch.stack([g, g, g]),
        "opposed rows": torch.stack([g, -g]),
        "T=1": g[None],
        "all zero": torch.zeros(3, num_params, dtype=F64),
        "tiny and huge": torch.stack([1e-12 * g, 1e6 * h]),
        "rank one": torch.stack([g, 2 * g, -0.5 * g]),
        "more tasks than parameters": random_matrix(5, 2, seed=3),
    }


def losses_for(matrix: Tensor) -> Tensor:
    return torch.linspace(0.5, 2.0, matrix.shape[0], dtype=matrix.dtype)


# ------------------------------------------------------------------------------- applying
def apply(aggregator: GradientAggregator, matrix: Tensor, losses: Tensor | None = None):
    """``(update, Aggregation)`` of one call (``out`` pre-filled with NaN: every entry must
    be written)."""
    out = torch.full((matrix.shape[1],), math.nan, dtype=matrix.dtype)
    result = aggregator(
        matrix.clone(), out, losses=losses_for(matrix) if losses is None else losses
    )
    return out, result


def _with_draws(factory: Factory, draws: Sequence[Tensor] | None) -> GradientAggregator:
    aggregator = factory()
    if draws and isinstance(aggregator, RandomDraws):
        aggregator.force_draws(*draws)
    return aggregator


def sample_draws(factory: Factory, num_tasks: int, steps: int = 1, seed: int = 0) -> list[Tensor]:
    """Draws for a randomised method (empty for a deterministic one)."""
    aggregator = factory()
    if not isinstance(aggregator, RandomDraws):
        return []
    torch.manual_seed(seed)
    like = torch.zeros(1, dtype=F64)
    return [aggregator.sample_draws(num_tasks, like) for _ in range(steps)]


# ------------------------------------------------------------------------------- properties
def assert_finite(factory: Factory, matrix: Tensor, steps: int = 3) -> None:
    """Finite update and weights, every entry written, for a few steps (stateful methods)."""
    aggregator = factory()
    for _ in range(steps):
        out, result = apply(aggregator, matrix)
        assert torch.isfinite(out).all(), out
        for w in (result.weights, result.task_weights):
            assert w is None or torch.isfinite(w).all(), w


def assert_permutation_equivariant(factory: Factory, matrix: Tensor, perm: Tensor) -> None:
    """Permuting the tasks permutes the weights and leaves the update unchanged (a randomised
    method gets the same draws, permuted)."""
    draws = sample_draws(factory, matrix.shape[0])
    out, result = apply(_with_draws(factory, draws), matrix)
    probe = factory()
    permuted = (
        [probe.permute_draws(d, perm) for d in draws] if isinstance(probe, RandomDraws) else []
    )
    out_p, result_p = apply(_with_draws(factory, permuted), matrix[perm], losses_for(matrix)[perm])
    weight = 0.0 if result.weights is None else float(result.weights.abs().max())
    scale = float(matrix.norm(dim=1).max()) * (weight + 1.0)
    assert float((out - out_p).abs().max()) <= 1e-7 * scale, (out, out_p)
    if result.weights is not None:  # (relative to the largest weight: ill-conditioned G
        # makes a solver's weights large and sensitive to rounding, not to the order)
        diff = float((result_p.weights - result.weights[perm]).abs().max())
        assert diff <= 1e-5 * weight + 1e-9, (result.weights, result_p.weights, perm)


def assert_non_conflicting(factory: Factory, matrix: Tensor, tol: float = 0.0) -> None:
    """No task's loss increases to first order: ``⟨g_t, update⟩ ≥ −tol·‖g_t‖‖update‖``."""
    out, _ = apply(factory(), matrix)
    dots = matrix @ out
    floor = (tol + 1e3 * EPS) * matrix.norm(dim=1) * float(out.norm())
    assert bool((dots >= -floor).all()), (dots, floor)


def assert_homogeneous(factory: Factory, matrix: Tensor, degree: float, c: float) -> None:
    """Scaling every gradient by ``c > 0`` scales the update by ``c**degree`` (degree 1: the
    update is measured in gradient units; degree 0: invariant)."""
    draws = sample_draws(factory, matrix.shape[0])
    out, _ = apply(_with_draws(factory, draws), matrix)
    out_c, _ = apply(_with_draws(factory, draws), matrix * c)
    expected = out * c**degree
    assert float((out_c - expected).norm()) <= 1e-7 * float(expected.norm()), (out_c, expected)


def assert_exact_resume(factory: Factory, matrices: Sequence[Tensor], split: int) -> None:
    """``state_dict`` after ``split`` steps, loaded (through ``torch.save`` /
    ``torch.load(weights_only=True)``) into a fresh method, continues bit for bit."""
    draws = sample_draws(factory, matrices[0].shape[0], steps=len(matrices))
    first = _with_draws(factory, draws)
    outs = [apply(first, m)[0] for m in matrices[:split]]
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    outs += [apply(first, m)[0] for m in matrices[split:]]
    buf.seek(0)
    resumed = _with_draws(factory, draws[split:])
    resumed.setup([f"t{i}" for i in range(matrices[0].shape[0])])
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    again = [apply(resumed, m)[0] for m in matrices[split:]]
    for a, b in zip(outs[split:], again, strict=True):
        assert torch.equal(a, b), (a, b)


def assert_min_norm_kkt(matrix: Tensor, weights: Tensor) -> None:
    """``w`` on the simplex, and ``u = wᵀJ`` the minimum-norm point of the hull: ``⟨g_t, u⟩ ≥
    ‖u‖²``, with equality where ``w_t > 0`` — relative to ``‖u‖²``, up to the rounding of
    ``⟨g_t, u⟩`` itself (``ε ‖g_t‖ ‖u‖``); or ``u`` is the origin, up to rounding."""
    assert (weights >= 0).all() and abs(float(weights.sum()) - 1.0) < 1e-12, weights
    norms = matrix.norm(dim=1)
    u = weights @ matrix
    length = float(u.norm())
    if length <= 1e3 * EPS * float(norms.max()):
        return
    norm2 = length * length
    tol = 1e-9 * norm2 + 3e4 * EPS * float(norms.max()) * length
    dots = matrix @ u
    assert (dots >= norm2 - tol).all(), ((dots - norm2) / norm2, tol / norm2)
    support = weights > 0
    assert float((dots[support] - norm2).abs().max()) <= tol, ((dots - norm2) / norm2, weights)


def assert_loss_scale_invariant(
    build: Callable[..., object], problem: object, factors: Sequence[float], steps: int = 2
) -> None:
    """Multiplying task t's loss by ``factors[t] > 0`` leaves the shared update unchanged
    (the log transform with ε = 0: ``∇ log(c ℓ) = ∇ℓ / ℓ``). ``build(encoder, heads)``
    makes the balancer; ``problem`` is a ``conftest.Problem`` (copied)."""
    runs = []
    for scale in ([1.0] * len(factors), list(factors)):
        p = copy.deepcopy(problem)
        p.scales = [s * f for s, f in zip(p.scales, scale, strict=True)]  # type: ignore[attr-defined]
        torch.manual_seed(0)
        balancer = build(p.encoder, dict(p.heads))  # type: ignore[attr-defined]
        updates = []
        for k in range(steps):
            p.zero_grad()  # type: ignore[attr-defined]
            losses, z = p.losses(k)  # type: ignore[attr-defined]
            balancer.backward(losses, representation=z)  # type: ignore[attr-defined]
            updates.append(torch.cat([q.grad.reshape(-1) for q in p.encoder.parameters()]))  # type: ignore[attr-defined]
        runs.append(updates)
    for a, b in zip(*runs, strict=True):
        assert float((a - b).norm()) <= 1e-9 * float(a.norm()) + 1e-300, (a, b)
