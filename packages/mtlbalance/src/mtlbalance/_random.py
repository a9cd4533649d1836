"""Random draws of randomised methods (RLW, PCGrad's order, GradDrop), made controllable so
that tests can replay the same draws — permuted when the tasks are permuted."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor


class RandomDraws:
    """Mixin for methods that draw random numbers each step.

    A method calls ``self.draws(num_tasks, like)`` to get this step's draws. They come from
    :meth:`sample_draws` (torch's global RNG on ``like``'s device, so ``torch.manual_seed``
    and a trainer's saved RNG state make runs reproducible) unless draws were queued with
    :meth:`force_draws`. :meth:`permute_draws` says how a task permutation acts on draws.
    """

    randomized: ClassVar[bool] = True

    def sample_draws(self, num_tasks: int, like: Tensor) -> Tensor:
        raise NotImplementedError

    def permute_draws(self, draws: Tensor, perm: Tensor) -> Tensor:
        """Draws for the tasks reordered as ``perm`` (new task i = old task perm[i])."""
        return draws[perm]

    def force_draws(self, *draws: Tensor) -> None:
        """Queue draws for the next steps (one tensor per step), instead of sampling."""
        queue = self.__dict__.setdefault("_forced_draws", [])
        queue.extend(draws)

    def draws(self, num_tasks: int, like: Tensor) -> Tensor:
        queue = self.__dict__.get("_forced_draws")
        if queue:
            return queue.pop(0).to(like.device)
        drawn = self.sample_draws(num_tasks, like)
        sync = self.__dict__.get("_sync_draws")  # data parallel: rank 0's draws (_step/reduce)
        return drawn if sync is None else sync(drawn)


def gaussian(num_tasks: int, like: Tensor) -> Tensor:
    return torch.randn(num_tasks, device=like.device, dtype=like.dtype)


class PairwiseOrderDraws(RandomDraws):
    """Draws of methods in which every task visits the others in its own random order
    (PCGrad, GradVac): a (T, T) matrix of keys, row t ordering the other tasks."""

    def sample_draws(self, num_tasks: int, like: Tensor) -> Tensor:
        dtype = like.dtype if like.is_floating_point() else torch.float32
        return torch.rand(num_tasks, num_tasks, device=like.device, dtype=dtype)

    def permute_draws(self, draws: Tensor, perm: Tensor) -> Tensor:
        return draws[perm][:, perm]
