"""Which properties each gradient-level method keeps, stated per method and checked with the
vocabulary of ``tests/mtlbalance/_asserts.py`` on rank-controlled random inputs.

Every gradient-level method registered must appear in ``KEEPS``: a new method states its
properties (what it does not keep is simply absent). Loss- and representation-level
methods are checked at the Balancer level in ``test_all_methods.py`` (permutation, resume,
finiteness), which uses the same assertions where they apply.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mtlbalance
from mtlbalance import aggregators as A
from mtlbalance import registry
from mtlbalance.aggregators import GradientAggregator
from mtlbalance.transforms import Log

from .._asserts import (
    Factory,
    apply,
    assert_exact_resume,
    assert_finite,
    assert_homogeneous,
    assert_loss_scale_invariant,
    assert_min_norm_kkt,
    assert_non_conflicting,
    assert_permutation_equivariant,
    degenerate_matrices,
    random_matrix,
)
from ..conftest import build_problem

FINITE = "finite on degenerate inputs"
PERMUTATION = "permutation equivariant"
RESUME = "exact resume"
NON_CONFLICT = "non-conflicting (full row rank)"
MIN_NORM = "minimum norm (KKT)"
LOG_SCALE_FREE = "with log: invariant to task loss scales"


def homogeneous(degree: int) -> str:
    return f"homogeneous of degree {degree}"


ALWAYS = {FINITE, PERMUTATION, RESUME, LOG_SCALE_FREE}
#: method -> (factory, properties it keeps)
KEEPS: dict[str, tuple[Factory, set[str]]] = {
    # (homogeneous exactly without ε: α/(‖ĝ_t‖ + ε) is scale-free only for ε = 0)
    "maxnorm": (lambda: A.MaxNorm(eps=0.0), ALWAYS | {homogeneous(1)}),
    "mgda": (A.MGDA, ALWAYS | {NON_CONFLICT, MIN_NORM, homogeneous(1)}),
    "imtl_g": (A.IMTLG, ALWAYS | {homogeneous(1)}),
    "cagrad": (A.CAGrad, ALWAYS | {homogeneous(1)}),
    # (the official clip makes the update's norm at most 1: checked unclipped)
    "nashmtl": (lambda: A.NashMTL(max_norm=0.0), ALWAYS | {NON_CONFLICT, homogeneous(0)}),
    "aligned_mtl": (A.AlignedMTL, ALWAYS | {homogeneous(1)}),
    "upgrad": (A.UPGrad, ALWAYS | {NON_CONFLICT, homogeneous(1)}),
    "fairgrad": (A.FairGrad, ALWAYS | {NON_CONFLICT, homogeneous(0)}),
    "excessmtl": (A.ExcessMTL, ALWAYS),
    "pcgrad": (A.PCGrad, ALWAYS | {homogeneous(1)}),
    "gradvac": (A.GradVac, ALWAYS | {homogeneous(1)}),
    "graddrop": (A.GradDrop, ALWAYS | {homogeneous(1)}),
    "mtadam": (A.MTAdam, ALWAYS),
    "metabalance": (A.MetaBalance, ALWAYS),
    # rows normalised to |ℓ_t| (the raw losses) first: scale-free in J, not in the losses
    "moco": (A.MoCo, ALWAYS - {LOG_SCALE_FREE} | {homogeneous(0)}),
    "gradnorm": (A.GradNorm, ALWAYS | {homogeneous(1)}),
}

#: a property a method keeps exactly only in a variant: UPGrad is non-conflicting without
#: its ridge (the default reg_eps = 1e-4 may leave ⟨g_t, update⟩ slightly negative, as its
#: docstring says; the ridge is what makes its weights unique on rank-deficient inputs)
VARIANTS: dict[tuple[str, str], Factory] = {
    ("upgrad", NON_CONFLICT): lambda: A.UPGrad(reg_eps=0.0),
}

CASES = [(m, p) for m, (_, props) in KEEPS.items() for p in sorted(props)]
SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def factory(method: str, prop: str = "") -> Factory:
    return VARIANTS.get((method, prop), KEEPS[method][0])


def methods_with(prop: str) -> list[str]:
    return [m for m, (_, props) in KEEPS.items() if prop in props]


def test_every_gradient_level_method_states_its_properties() -> None:
    gradient_level = {
        name for name, cls in registry.AGGREGATORS.items() if issubclass(cls, GradientAggregator)
    }
    assert gradient_level == set(KEEPS)
    for name, (make, _) in KEEPS.items():
        assert isinstance(make(), registry.AGGREGATORS[name])


@pytest.mark.parametrize("method", methods_with(FINITE))
@pytest.mark.parametrize("case", list(degenerate_matrices()))
def test_finite(method: str, case: str) -> None:
    assert_finite(factory(method), degenerate_matrices()[case])


@pytest.mark.parametrize("method", methods_with(PERMUTATION))
@SETTINGS
@given(
    seed=st.integers(0, 2**31 - 1),
    num_tasks=st.integers(2, 5),
    rank_gap=st.integers(0, 2),
    decades=st.floats(0.0, 3.0),
    data=st.data(),
)
def test_permutation_equivariant(method, seed, num_tasks, rank_gap, decades, data) -> None:
    matrix = random_matrix(
        num_tasks, 9, rank=max(1, num_tasks - rank_gap), decades=decades, seed=seed
    )
    perm = torch.tensor(data.draw(st.permutations(range(num_tasks))))
    assert_permutation_equivariant(factory(method), matrix, perm)


@pytest.mark.parametrize("method", methods_with(RESUME))
def test_exact_resume(method: str) -> None:
    matrices = [random_matrix(3, 8, decades=2.0, seed=s) for s in range(5)]
    assert_exact_resume(factory(method), matrices, split=2)


@pytest.mark.parametrize("method", methods_with(NON_CONFLICT))
@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), num_tasks=st.integers(2, 5), decades=st.floats(0.0, 4.0))
def test_non_conflicting(method: str, seed: int, num_tasks: int, decades: float) -> None:
    matrix = random_matrix(num_tasks, 9, decades=decades, seed=seed)  # full row rank
    assert_non_conflicting(factory(method, NON_CONFLICT), matrix)


@pytest.mark.parametrize(
    ("method", "degree"),
    [(m, d) for d in (0, 1) for m in methods_with(homogeneous(d))],
)
@pytest.mark.parametrize("c", [0.25, 3.7, 250.0])  # (row norms stay ≫ the methods' ε)
def test_homogeneous(method: str, degree: int, c: float) -> None:
    for seed in range(3):
        matrix = random_matrix(3, 8, decades=1.0, seed=seed)
        assert_homogeneous(factory(method), matrix, degree, c)


@pytest.mark.parametrize("method", methods_with(MIN_NORM))
@SETTINGS
@given(
    seed=st.integers(0, 2**31 - 1),
    num_tasks=st.integers(2, 6),
    rank_gap=st.integers(0, 3),
    decades=st.floats(0.0, 8.0),
)
def test_minimum_norm(method: str, seed: int, num_tasks: int, rank_gap: int, decades: float):
    matrix = random_matrix(
        num_tasks, 9, rank=max(1, num_tasks - rank_gap), decades=decades, seed=seed
    )
    _, result = apply(factory(method)(), matrix)
    assert_min_norm_kkt(matrix, result.weights)


@pytest.mark.parametrize("method", methods_with(LOG_SCALE_FREE))
def test_log_combination_is_invariant_to_task_loss_scales(method: str) -> None:
    """DB-MTL's point, for every gradient method (the paper's Figure 1): with the log
    transform (ε = 0) the rows ``∇ℓ_t / ℓ_t`` do not depend on the losses' scales, so neither
    does the update of a method that reads only the rows (randomised methods: one seed)."""

    def build(encoder, heads):
        return mtlbalance.Balancer(
            encoder, heads, transform=Log(eps=0.0), aggregator=factory(method)(), engine="loop"
        )

    assert_loss_scale_invariant(build, build_problem(seed=4, num_tasks=3), [1e-3, 1.0, 1e3])
