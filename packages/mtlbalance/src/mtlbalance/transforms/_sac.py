"""A small soft actor-critic (SAC) agent for IGBv2's loss weights (private to ``igbv2``).

Continuous actions ``a = A · softmax(u)``, ``u ~ N(µ(s), σ(s)²)`` (A = action dimension), two Q
critics with a Polyak-averaged target, a learned temperature α (target entropy ``−A``), and
a replay buffer held as tensors on the agent's device. Follows the agent of the IGBv2
official code (itself after XinJingHao/SAC-Continuous-Pytorch). Everything that changes
during training is returned by :meth:`SACAgent.state` as plain tensors and numbers, and
:meth:`SACAgent.from_state` rebuilds the agent without touching torch's RNG.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LOG_STD_MIN, _LOG_STD_MAX = -20.0, 2.0
_U_LIMIT = 15.0  # |u| bound of the action logits: weights stay positive (≥ e^{-30} relative)


@dataclass(frozen=True)
class SACConfig:
    state_dim: int
    action_dim: int
    hidden: int = 128
    lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    alpha: float = 0.2
    buffer_size: int = 10_000


def _mlp(sizes: list[int], out_act: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for j in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[j], sizes[j + 1]))
        if j < len(sizes) - 2 or out_act:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class _Actor(nn.Module):
    def __init__(self, cfg: SACConfig):
        super().__init__()
        self.body = _mlp([cfg.state_dim, cfg.hidden, cfg.hidden], out_act=True)
        self.mu = nn.Linear(cfg.hidden, cfg.action_dim)
        self.log_std = nn.Linear(cfg.hidden, cfg.action_dim)
        self.action_dim = cfg.action_dim

    def forward(self, state: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """Action ``A · softmax(u)`` and ``log π`` for ``u = µ + σ · noise``."""
        h = self.body(state)
        mu = self.mu(h)
        log_std = self.log_std(h).clamp(_LOG_STD_MIN, _LOG_STD_MAX)
        std = log_std.exp()
        u = (mu + std * noise).clamp(-_U_LIMIT, _U_LIMIT)
        action = self.action_dim * torch.softmax(u, dim=-1)
        # Gaussian log-density of u with the tanh-squashing correction term of SAC, as the
        # official IGBv2 code (the correction also penalises large |u|).
        gauss = -0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
        squash = 2 * (math.log(2) - u - F.softplus(-2 * u))
        logp = gauss.sum(-1) - squash.sum(-1)
        return action, logp


class _Critic(nn.Module):
    def __init__(self, cfg: SACConfig):
        super().__init__()
        sizes = [cfg.state_dim + cfg.action_dim, cfg.hidden, cfg.hidden, 1]
        self.q1 = _mlp(sizes, out_act=False)
        self.q2 = _mlp(sizes, out_act=False)

    def forward(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        sa = torch.cat([state, action], dim=-1)
        return self.q1(sa).squeeze(-1), self.q2(sa).squeeze(-1)


class SACAgent:
    """Actor, critics, temperature, their Adam optimizers and the replay buffer."""

    def __init__(self, cfg: SACConfig, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.actor = _Actor(cfg).to(device)
        self.critic = _Critic(cfg).to(device)
        self.target = copy.deepcopy(self.critic)
        for p in self.target.parameters():
            p.requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(cfg.alpha), device=device, requires_grad=True)
        self.target_entropy = -float(cfg.action_dim)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.lr)
        n = cfg.buffer_size
        self.buf_state = torch.zeros(n, cfg.state_dim, device=device)
        self.buf_action = torch.zeros(n, cfg.action_dim, device=device)
        self.buf_reward = torch.zeros(n, device=device)
        self.buf_next = torch.zeros(n, cfg.state_dim, device=device)
        self.ptr = 0
        self.size = 0

    # ------------------------------------------------------------------ acting
    def act(self, state: Tensor, noise: Tensor) -> Tensor:
        """A stochastic action for one state (``noise``: standard normal draws, (A,))."""
        with torch.no_grad(), _no_autocast(state):
            action, _ = self.actor(state.to(torch.float32), noise.to(torch.float32))
        return action

    # ------------------------------------------------------------------ replay buffer
    def add(self, state: Tensor, action: Tensor, reward: Tensor, next_state: Tensor) -> None:
        i = self.ptr
        self.buf_state[i] = state
        self.buf_action[i] = action
        self.buf_reward[i] = reward
        self.buf_next[i] = next_state
        self.ptr = (self.ptr + 1) % self.cfg.buffer_size
        self.size = min(self.size + 1, self.cfg.buffer_size)

    # ------------------------------------------------------------------ learning
    def update(self, batch_size: int) -> None:
        """One SAC step on a batch drawn (with replacement) from the buffer."""
        if self.size == 0:
            return
        with torch.enable_grad(), _no_autocast(self.buf_state):
            self._update(batch_size)

    def _update(self, batch_size: int) -> None:
        cfg = self.cfg
        idx = torch.randint(0, self.size, (batch_size,), device=self.device)
        s, a = self.buf_state[idx], self.buf_action[idx]
        r, s2 = self.buf_reward[idx], self.buf_next[idx]
        alpha = self.log_alpha.detach().exp()
        with torch.no_grad():
            a2, logp2 = self.actor(s2, torch.randn_like(a))
            t1, t2 = self.target(s2, a2)
            y = r + cfg.gamma * (torch.minimum(t1, t2) - alpha * logp2)
        q1, q2 = self.critic(s, a)
        q_loss = F.mse_loss(q1, y) + F.mse_loss(q2, y)
        self.critic_opt.zero_grad(set_to_none=True)
        q_loss.backward()
        self.critic_opt.step()

        for p in self.critic.parameters():
            p.requires_grad_(False)
        a_new, logp = self.actor(s, torch.randn_like(a))
        c1, c2 = self.critic(s, a_new)
        a_loss = (alpha * logp - torch.minimum(c1, c2)).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        a_loss.backward()
        self.actor_opt.step()
        for p in self.critic.parameters():
            p.requires_grad_(True)

        alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_opt.step()

        with torch.no_grad():
            target: list[Tensor] = list(self.target.parameters())
            source: list[Tensor] = list(self.critic.parameters())
            torch._foreach_lerp_(target, source, cfg.tau)

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        """A snapshot of everything that changes during training (tensors are copies)."""
        return copy.deepcopy(
            {
                "actor": self.actor.state_dict(),
                "critic": self.critic.state_dict(),
                "target": self.target.state_dict(),
                "log_alpha": self.log_alpha.detach(),
                "actor_opt": self.actor_opt.state_dict(),
                "critic_opt": self.critic_opt.state_dict(),
                "alpha_opt": self.alpha_opt.state_dict(),
                "buffer": {
                    "state": self.buf_state,
                    "action": self.buf_action,
                    "reward": self.buf_reward,
                    "next_state": self.buf_next,
                    "ptr": self.ptr,
                    "size": self.size,
                },
            }
        )

    @classmethod
    def from_state(cls, cfg: SACConfig, state: dict[str, Any], device: torch.device) -> SACAgent:
        """Rebuild an agent from :meth:`state` on ``device`` (torch's RNG is left as it was)."""
        with torch.random.fork_rng(devices=[]):  # modules are initialised on the CPU
            agent = cls(cfg, device)
        agent.load(state)
        return agent

    def load(self, state: dict[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.target.load_state_dict(state["target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.alpha_opt.load_state_dict(state["alpha_opt"])
        buf = state["buffer"]
        for name, key in (
            ("buf_state", "state"),
            ("buf_action", "action"),
            ("buf_reward", "reward"),
            ("buf_next", "next_state"),
        ):
            mine = getattr(self, name)
            if buf[key].shape != mine.shape:
                raise ValueError(
                    f"igbv2: the saved replay buffer {key!r} has shape {tuple(buf[key].shape)}, "
                    f"this agent's is {tuple(mine.shape)} (different buffer_size or tasks)"
                )
            mine.copy_(buf[key])
        self.ptr, self.size = int(buf["ptr"]), int(buf["size"])

    def to(self, device: torch.device) -> SACAgent:
        """This agent on ``device`` (itself if it is there already)."""
        if device == self.device:
            return self
        return SACAgent.from_state(self.cfg, self.state(), device)


def _no_autocast(like: Tensor) -> torch.autocast:
    """Run the agent in float32 even inside a caller's autocast region."""
    return torch.autocast(device_type=like.device.type, enabled=False)
