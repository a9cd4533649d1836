"""``Balancer(process_group=...)``: what is accepted and what a wrong setup is told."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mtlbalance


def _balancer(**kw: object) -> tuple[mtlbalance.Balancer, dict[str, torch.Tensor]]:
    enc, heads = nn.Linear(3, 2), {"a": nn.Linear(2, 1), "b": nn.Linear(2, 1)}
    balancer = mtlbalance.make("dbmtl", enc, heads, **kw)
    z = enc(torch.randn(4, 3))
    return balancer, {t: h(z).pow(2).mean() for t, h in heads.items()}


def test_one_process_by_default() -> None:
    balancer, losses = _balancer()
    assert balancer.process_group is None
    balancer.backward(losses)
    assert balancer.communicated_bytes == 0


def test_a_group_needs_an_initialised_job() -> None:
    assert not torch.distributed.is_initialized()
    balancer, losses = _balancer(process_group="world")
    assert balancer.process_group == "world"
    with pytest.raises(RuntimeError, match=r"torch\.distributed is not initialised: call"):
        balancer.backward(losses)


def test_unknown_group_name() -> None:
    with pytest.raises(ValueError, match=r"process_group='all': pass a torch\.distributed"):
        _balancer(process_group="all")
