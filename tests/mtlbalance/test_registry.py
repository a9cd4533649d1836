"""The registry of named methods and one-line combinations."""

from __future__ import annotations

import pytest

import mtlbalance
from mtlbalance.aggregators import MaxNorm, Sum
from mtlbalance.registry import parse
from mtlbalance.transforms import Identity, Log

from .conftest import build_problem


def test_presets_and_combinations() -> None:
    assert parse("dbmtl") == ("log", "maxnorm", {"beta": 0.9, "sigma": 0.5, "eps": 1e-8})
    assert parse("log+ew")[:2] == ("log", "sum")
    assert parse("maxnorm")[:2] == ("identity", "maxnorm")
    assert parse("LOG+MaxNorm")[:2] == ("log", "maxnorm")
    assert {"ew", "dbmtl", "maxnorm"} <= set(mtlbalance.available())
    assert "sum" not in mtlbalance.available()  # the same method as "ew"


def test_make_passes_hyperparameters_and_options() -> None:
    problem = build_problem(seed=0, num_tasks=2)
    b = mtlbalance.make(
        "dbmtl", problem.encoder, dict(problem.heads), beta=0.5, sigma=0.0, eps=1e-6, engine="loop"
    )
    assert isinstance(b.transform, Log) and isinstance(b.aggregator, MaxNorm)
    assert (b.aggregator.beta, b.aggregator.sigma, b.aggregator.eps, b.transform.eps) == (
        0.5,
        0.0,
        1e-6,
        1e-6,
    )
    assert b.engine.name == "loop"
    ew = mtlbalance.make("ew", problem.encoder)
    assert isinstance(ew.transform, Identity) and isinstance(ew.aggregator, Sum)
    assert isinstance(mtlbalance.DBMTL(problem.encoder), mtlbalance.Balancer)


def test_bad_specs() -> None:
    problem = build_problem(seed=0, num_tasks=2)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        mtlbalance.make("nope", problem.encoder)
    with pytest.raises(ValueError, match="already has the 'log' transform"):
        mtlbalance.make("log+dbmtl", problem.encoder)
    with pytest.raises(ValueError, match="unknown transform 'sqrt'"):
        mtlbalance.make("sqrt+ew", problem.encoder)
    with pytest.raises(TypeError, match=r"'ew' does not take \['beta'\]"):
        mtlbalance.make("ew", problem.encoder, beta=0.5)
    with pytest.raises(ValueError, match="invalid method"):
        mtlbalance.make("log+log+ew", problem.encoder)


def test_register_rejects_duplicates_and_bad_names() -> None:
    with pytest.raises(ValueError, match="already registered"):
        mtlbalance.register_method("dbmtl", "log", "maxnorm", reference="x", description="x")
    with pytest.raises(ValueError, match="contain no"):
        mtlbalance.register_aggregator("a+b", Sum)
