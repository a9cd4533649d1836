"""The API carries what the baselines need: each hook exercised with a small stub method."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

import mtlbalance
from mtlbalance.aggregators import GramWeighting, LossWeighting, RepresentationWeighting, Sum
from mtlbalance.transforms import Identity, Log, LossTransform

from .conftest import build_problem


class LearnedScale(LossTransform):
    """UW-like stub: ℓ̃_t = exp(−s_t) ℓ_t + s_t with learnable s (the balancer's own parameter)."""

    def setup(self, task_names: Sequence[str]) -> None:
        self.s = nn.Parameter(torch.linspace(-0.5, 0.5, len(task_names), dtype=torch.float64))

    def forward(self, losses: Tensor) -> Tensor:
        return torch.exp(-self.s) * losses + self.s


class EpochHistory(LossTransform):
    """DWA-like stub: accumulates losses during the epoch, keeps per-epoch means."""

    def __init__(self) -> None:
        super().__init__()
        self.running: Tensor | None = None
        self.count = 0
        self.history: list[Tensor] = []

    def forward(self, losses: Tensor) -> Tensor:
        d = losses.detach()
        self.running = d.clone() if self.running is None else self.running + d
        self.count += 1
        return losses

    def epoch_end(self) -> None:
        assert self.running is not None
        self.history.append(self.running / self.count)
        self.running, self.count = None, 0

    def get_extra_state(self):
        return {"history": [h.clone() for h in self.history]}

    def set_extra_state(self, state) -> None:
        self.history = [h.clone() for h in state["history"]]


class AfterStep(Sum):
    """FAMO-like stub: records the losses it is given after the optimizer step."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Tensor] = []

    def after_step(self, losses: Tensor) -> None:
        self.seen.append(losses)


class InverseNorm(GramWeighting):
    """Gram-only stub whose weights also scale the task-specific gradients (as Nash-MTL)."""

    weights_task_params = True

    def weights_from_gram(self, gram: Tensor, losses: Tensor) -> Tensor:
        return 1.0 / gram.diagonal().sqrt()


class RepInverseNorm(RepresentationWeighting):
    """Representation-level stub (as MGDA-UB): weights from the gradients at z."""

    def forward(self, rep_jacobian: Tensor, *, losses: Tensor) -> Tensor:
        return 1.0 / rep_jacobian.norm(dim=1)


class SoftmaxLoss(LossWeighting):
    def forward(self, losses: Tensor, transformed: Tensor) -> Tensor:
        return torch.softmax(losses, 0)


def grads(problem) -> list[Tensor]:
    return [p.grad.clone() for p in problem.all_params()]


def expected_weighted(problem, weights: Tensor, step: int = 0) -> list[Tensor]:
    twin = copy.deepcopy(problem)
    twin.zero_grad()
    losses, _ = twin.losses(step)
    sum(w * loss for w, loss in zip(weights, losses.values(), strict=True)).backward()
    return grads(twin)


def test_balancer_parameters_reach_the_optimizer() -> None:
    problem = build_problem(seed=0, num_tasks=3)
    transform = LearnedScale()
    balancer = mtlbalance.Balancer(
        problem.encoder, dict(problem.heads), transform=transform, aggregator=Sum()
    )
    (s,) = list(balancer.parameters())
    assert s is transform.s
    losses, _ = problem.losses(0)
    raw = torch.stack([v.detach() for v in losses.values()])
    expected = expected_weighted(problem, torch.exp(-s.detach()))
    balancer.backward(losses)
    for got, want in zip(grads(problem), expected, strict=True):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(s.grad, 1 - torch.exp(-s.detach()) * raw)
    opt = torch.optim.SGD([*problem.all_params(), *balancer.parameters()], lr=0.1)
    before = s.detach().clone()
    opt.step()
    assert not torch.equal(s.detach(), before)


def test_epoch_end_hook_and_history_in_state() -> None:
    problem = build_problem(seed=1, num_tasks=2)
    balancer = mtlbalance.Balancer(problem.encoder, dict(problem.heads), transform=EpochHistory())
    means = []
    for epoch in range(2):
        seen = []
        for k in range(3):
            problem.zero_grad()
            losses, _ = problem.losses(10 * epoch + k)
            seen.append(torch.stack([v.detach() for v in losses.values()]))
            balancer.backward(losses)
        means.append(torch.stack(seen).mean(0))
        balancer.epoch_end()
    history = balancer.transform.history
    assert len(history) == 2
    for h, m in zip(history, means, strict=True):
        torch.testing.assert_close(h, m)
    clone = mtlbalance.Balancer(problem.encoder, dict(problem.heads), transform=EpochHistory())
    clone.load_state_dict(copy.deepcopy(balancer.state_dict()))
    assert all(torch.equal(a, b) for a, b in zip(clone.transform.history, history, strict=True))


def test_after_step_hook_receives_detached_losses() -> None:
    problem = build_problem(seed=2, num_tasks=2)
    agg = AfterStep()
    balancer = mtlbalance.Balancer(problem.encoder, dict(problem.heads), aggregator=agg)
    opt = torch.optim.SGD(problem.all_params(), lr=0.1)
    losses, _ = problem.losses(0)
    balancer.backward(losses)
    opt.step()
    with torch.no_grad():
        after, _ = problem.losses(0)
    balancer.after_step(after)
    (seen,) = agg.seen
    assert not seen.requires_grad
    torch.testing.assert_close(seen, torch.stack([after["t0"], after["t1"]]))
    assert not torch.equal(seen, torch.stack([v.detach() for v in losses.values()]))


def test_gram_weighting_with_task_weights() -> None:
    problem = build_problem(seed=3, num_tasks=3)
    balancer = mtlbalance.Balancer(
        problem.encoder, dict(problem.heads), transform=Identity(), aggregator=InverseNorm()
    )
    losses, _ = problem.losses(0)
    shared = list(problem.encoder.parameters())
    rows = torch.stack(
        [
            torch.cat([g.reshape(-1) for g in torch.autograd.grad(v, shared, retain_graph=True)])
            for v in losses.values()
        ]
    )
    w = 1.0 / rows.norm(dim=1)
    expected = expected_weighted(problem, w)  # the weights act as loss weights everywhere
    stats = balancer.backward(losses)
    torch.testing.assert_close(stats.weights, w)
    for got, want in zip(grads(problem), expected, strict=True):
        torch.testing.assert_close(got, want)


def test_representation_level_weighting() -> None:
    problem = build_problem(seed=4, num_tasks=3)
    balancer = mtlbalance.Balancer(
        problem.encoder, dict(problem.heads), transform=Log(), aggregator=RepInverseNorm()
    )
    losses, z = problem.losses(0)
    logs = [torch.log(v + 1e-8) for v in losses.values()]
    rows = torch.stack([torch.autograd.grad(v, z, retain_graph=True)[0].reshape(-1) for v in logs])
    w = 1.0 / rows.norm(dim=1)
    twin = copy.deepcopy(problem)
    twin_losses, _ = twin.losses(0)
    sum(wt * torch.log(v + 1e-8) for wt, v in zip(w, twin_losses.values(), strict=True)).backward()
    stats = balancer.backward(losses, representation=z)
    torch.testing.assert_close(stats.weights, w)
    for got, want in zip(grads(problem), grads(twin), strict=True):
        torch.testing.assert_close(got, want)


def test_loss_weighting() -> None:
    problem = build_problem(seed=5, num_tasks=3)
    balancer = mtlbalance.Balancer(problem.encoder, dict(problem.heads), aggregator=SoftmaxLoss())
    losses, _ = problem.losses(0)
    w = torch.softmax(torch.stack([v.detach() for v in losses.values()]), 0)
    expected = expected_weighted(problem, w)
    stats = balancer.backward(losses)
    torch.testing.assert_close(stats.weights, w)
    for got, want in zip(grads(problem), expected, strict=True):
        torch.testing.assert_close(got, want)


def test_clip_of_the_shared_update() -> None:
    problem = build_problem(seed=6, num_tasks=3)
    twin = copy.deepcopy(problem)
    free = mtlbalance.DBMTL(twin.encoder, dict(twin.heads))
    free.backward(twin.losses(0)[0])
    unclipped = torch.cat([p.grad.reshape(-1) for p in twin.encoder.parameters()])
    limit = float(unclipped.norm()) / 4
    clipped = mtlbalance.DBMTL(problem.encoder, dict(problem.heads), max_update_norm=limit)
    stats = clipped.backward(problem.losses(0)[0])
    update = torch.cat([p.grad.reshape(-1) for p in problem.encoder.parameters()])
    torch.testing.assert_close(
        update.norm(), torch.tensor(limit, dtype=torch.float64), rtol=1e-5, atol=0
    )
    torch.testing.assert_close(update / update.norm(), unclipped / unclipped.norm())
    torch.testing.assert_close(stats.update_norm.double(), update.norm(), rtol=1e-5, atol=0)
    # task-specific gradients are not clipped
    for p, q in zip(problem.heads.parameters(), twin.heads.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)
