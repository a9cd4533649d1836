"""IGBv2: improvable gap balancing with loss weights from a soft actor-critic agent."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._random import RandomDraws, gaussian
from ._sac import SACAgent, SACConfig
from .base import LogDomain, LossTransform
from .dwa import accumulate

_STATE_MAX = 1e4  # normalised losses are clipped to [0, 1e4] before they reach the agent


class IGBv2(RandomDraws, LogDomain, LossTransform):
    r"""IGBv2: ``ℓ̃_t = w_t log(ℓ_t + ε)`` with weights ``w`` (positive, summing to T) chosen
    each step by a soft actor-critic (SAC) agent, as in the official code:

    * state ``s_k = ℓ_k / ℓ̄``: the step's losses normalised by the base losses ``ℓ̄`` (the
      average training losses of epoch ``base_epoch``) — the improvable gaps to the ideal
      loss 0 in units of the base losses;
    * action ``w_k = T · softmax(u)``, ``u ~ N(µ(s_k), σ(s_k)²)`` (the actor's stochastic
      policy; the ``N(0, 1)`` draws are this method's random draws);
    * reward of the transition ``(s_{k−1}, w_{k−1}) → s_k``:
      ``reward_scale · min_t (s_{k−1,t} − s_{k,t})``, the decrease of the worst task's gap.

    Schedule (epochs counted by ``balancer.epoch_end()``, from 0): until epoch
    ``start_epoch`` the weights are ``T · softmax(z)``, ``z ~ N(0, I)`` (random weighting, the
    agent's exploration); transitions enter a replay buffer once the base losses are known;
    from epoch ``update_after`` on, every ``update_every`` steps the agent makes
    ``⌊update_every · k/2⌋`` SAC updates on batches of ``⌊batch_size · k/2⌋`` transitions,
    ``k = 1 + buffer fill fraction``. Without ``epoch_end`` calls IGBv2 stays random
    weighting of log losses.

    The agent (``hidden``-unit two-layer MLPs: actor, two Q critics and their Polyak target,
    learned temperature α with target entropy −T, Adam) lives in ``transforms/_sac.py``; its
    networks, optimizer states and replay buffer are part of this transform's state, so
    ``state_dict`` round-trips. It is created (from torch's global RNG) when the first
    transition is stored, on the losses' device, in float32.

    Choices where the paper leaves room (documented deviations from the official code): the
    agent's state is the normalised losses rather than the raw losses; states are clipped to
    ``[0, 1e4]`` and the policy's logits to ``[−15, 15]`` (finite, positive weights);
    ``ε = 1e-8`` in the log (the official code has none). The official trainer sets
    ``reward_scale`` to ``lr₀ / lr`` every epoch (the scheduler's decay); set
    ``balancer.transform.reward_scale`` to do the same.

    Reference: Y. Dai, N. Fei, Z. Lu, "Improvable Gap Balancing for Multi-Task Learning",
    UAI 2023.

    Args:
        base_epoch: the epoch whose average losses are the base losses (official: 1).
        start_epoch: first epoch whose weights come from the agent (official: 5).
        update_after: first epoch with SAC updates (official: 3).
        update_every: steps between bursts of SAC updates (official: 50).
        sac_lr: Adam learning rate of actor, critics and temperature (3e-4).
        buffer_size: replay buffer capacity in transitions (10 000).
        batch_size: SAC batch size (256).
        hidden: width of the two hidden layers of every network (128).
        gamma: discount factor (0.99).
        tau: Polyak coefficient of the target critics (0.005).
        alpha: initial temperature (0.2; learned).
        reward_scale: factor of the reward (1).
        eps: ``ε`` of the log (1e-8); losses must be greater than ``-ε``.
    """

    name: ClassVar[str] = "igbv2"
    domain_subject = "IGBv2 (on log losses)"
    reference: ClassVar[str] = (
        "Dai et al., Improvable Gap Balancing for Multi-Task Learning, UAI 2023"
    )
    cost: ClassVar[str] = (
        "one backward (as EW); a SAC agent (two-layer MLPs), ≈ update_every/2 SAC updates "
        "every update_every steps"
    )

    def __init__(
        self,
        base_epoch: int = 1,
        start_epoch: int = 5,
        update_after: int = 3,
        update_every: int = 50,
        sac_lr: float = 3e-4,
        buffer_size: int = 10_000,
        batch_size: int = 256,
        hidden: int = 128,
        gamma: float = 0.99,
        tau: float = 0.005,
        alpha: float = 0.2,
        reward_scale: float = 1.0,
        eps: float = 1e-8,
    ):
        super().__init__()
        for key, value, low in (
            ("base_epoch", base_epoch, 0),
            ("start_epoch", start_epoch, 0),
            ("update_after", update_after, 0),
            ("update_every", update_every, 1),
            ("buffer_size", buffer_size, 1),
            ("batch_size", batch_size, 1),
            ("hidden", hidden, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{key} must be an integer >= {low}, got {value!r}")
        for key, rate in (("sac_lr", sac_lr), ("alpha", alpha)):
            if not rate > 0:
                raise ValueError(f"{key} must be > 0, got {rate}")
        if not 0 <= gamma < 1:
            raise ValueError(f"gamma must be in [0, 1), got {gamma}")
        if not 0 < tau <= 1:
            raise ValueError(f"tau must be in (0, 1], got {tau}")
        if not reward_scale > 0:
            raise ValueError(f"reward_scale must be > 0, got {reward_scale}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.base_epoch = base_epoch
        self.start_epoch = start_epoch
        self.update_after = update_after
        self.update_every = update_every
        self.sac_lr = float(sac_lr)
        self.buffer_size = buffer_size
        self.batch_size = batch_size
        self.hidden = hidden
        self.gamma = float(gamma)
        self.tau = float(tau)
        self.alpha = float(alpha)
        self.reward_scale = float(reward_scale)
        self.eps = float(eps)
        self.num_tasks = 0
        self._fresh()

    def setup(self, task_names: Sequence[str]) -> None:
        self.num_tasks = len(task_names)

    def _fresh(self) -> None:
        self.epoch = 0  # epochs completed
        self.step = 0  # forward calls
        self.running: Tensor | None = None  # sums of the base epoch's losses
        self.count: Tensor | None = None
        self.base: Tensor | None = None  # the base losses ℓ̄
        self.prev_state: Tensor | None = None  # s_{k−1}
        self.prev_action: Tensor | None = None  # w_{k−1}
        self.agent: SACAgent | None = None
        self.last_weights: Tensor | None = None

    def _config(self) -> SACConfig:
        return SACConfig(
            state_dim=self.num_tasks,
            action_dim=self.num_tasks,
            hidden=self.hidden,
            lr=self.sac_lr,
            gamma=self.gamma,
            tau=self.tau,
            alpha=self.alpha,
            buffer_size=self.buffer_size,
        )

    def _agent(self, device: torch.device) -> SACAgent:
        if self.agent is None:
            self.agent = SACAgent(self._config(), device)
        elif self.agent.device != device:
            self.agent = self.agent.to(device)
        return self.agent

    # ------------------------------------------------------------------ random draws
    def sample_draws(self, num_tasks: int, like: Tensor) -> Tensor:
        return gaussian(num_tasks, like)

    # ------------------------------------------------------------------ the step
    def forward(self, losses: Tensor) -> Tensor:
        d = losses.detach()
        num_tasks = d.shape[0]
        if self.base is None and self.epoch >= self.base_epoch:
            self.running, self.count = accumulate(self.running, self.count, d)
        state: Tensor | None = None
        if self.base is not None:
            base = self.base.to(device=d.device, dtype=torch.float32)
            state = torch.nan_to_num(d.float() / (base + self.eps), nan=0.0, posinf=_STATE_MAX)
            state = state.clamp(0.0, _STATE_MAX)
            if self.prev_state is not None and self.prev_action is not None:
                agent = self._agent(d.device)
                reward = self.reward_scale * (self.prev_state.to(d.device) - state).min()
                agent.add(
                    self.prev_state.to(d.device), self.prev_action.to(d.device), reward, state
                )
            if (
                self.agent is not None
                and self.epoch >= self.update_after
                and self.step % self.update_every == 0
            ):
                agent = self._agent(d.device)
                k = 1.0 + agent.size / agent.cfg.buffer_size
                for _ in range(int(self.update_every * k / 2)):
                    agent.update(max(1, int(self.batch_size * k / 2)))
        noise = self.draws(num_tasks, d.float()).to(device=d.device, dtype=torch.float32)
        if state is not None and self.epoch >= self.start_epoch:
            weights = self._agent(d.device).act(state, noise)
            ok = torch.isfinite(weights).all()
            weights = torch.where(ok, weights, torch.ones_like(weights))
        else:
            weights = num_tasks * torch.softmax(noise, dim=0)
        if state is not None:
            self.prev_state, self.prev_action = state, weights
        self.last_weights = weights
        self.step += 1
        return weights.to(losses.dtype) * torch.log(losses + self.eps)

    def epoch_end(self) -> None:
        if self.base is None and self.running is not None and self.count is not None:
            self.base = self.running / self.count.clamp_min(1)
            self.running, self.count = None, None
        self.epoch += 1

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        self._fresh()

    def get_extra_state(self) -> Any:
        def copy(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.clone()

        return {
            "epoch": self.epoch,
            "step": self.step,
            "running": copy(self.running),
            "count": copy(self.count),
            "base": copy(self.base),
            "prev_state": copy(self.prev_state),
            "prev_action": copy(self.prev_action),
            "agent": None if self.agent is None else self.agent.state(),
        }

    def set_extra_state(self, state: Any) -> None:
        def copy(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.clone()

        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        self.running = copy(state["running"])
        self.count = copy(state["count"])
        self.base = copy(state["base"])
        self.prev_state = copy(state["prev_state"])
        self.prev_action = copy(state["prev_action"])
        agent = state["agent"]
        if agent is None:
            self.agent = None
        else:
            device = agent["log_alpha"].device
            self.agent = SACAgent.from_state(self._config(), agent, device)

    def extra_repr(self) -> str:
        return (
            f"base_epoch={self.base_epoch}, start_epoch={self.start_epoch}, "
            f"update_after={self.update_after}, update_every={self.update_every}, "
            f"hidden={self.hidden}"
        )
