"""A tiny two-task problem for the trainer tests, also runnable as a script (the kill-and-resume
test runs it in a subprocess and kills it with SIGKILL mid-epoch):

    python trainer_problem.py OUT.json CKPT_DIR [--kill-at STEP] [--method dbmtl]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

import mtlbalance
from mtltrain.metrics import MeanError
from mtltrain.trainer import Task, Trainer, TrainerConfig, seed_everything

TASKS = ("a", "b")


class Data(Dataset[tuple[Tensor, dict[str, Tensor]]]):
    """Task a: unit-scale regression; task b: a target in the hundreds."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 8, generator=g)
        self.a = self.x[:, :4].sum(1) + 0.1 * torch.randn(n, generator=g)
        self.b = 100 * self.x[:, 4:].sum(1).tanh()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        return self.x[i], {"a": self.a[i], "b": self.b[i]}


class Model(nn.Module):
    def __init__(self, dropout: float = 0.1) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(dropout))
        self.heads = nn.ModuleDict({t: nn.Linear(32, 1) for t in TASKS})

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        z = self.enc(x)
        return z, {t: h(z).squeeze(-1) for t, h in self.heads.items()}


def tasks() -> list[Task]:
    return [Task(t, nn.functional.mse_loss, {"mae": MeanError()}) for t in TASKS]


def loaders(batch_size: int = 32, shuffle: bool = True, n: int = 256) -> tuple[Any, Any, Any]:
    return (
        DataLoader(Data(n, 0), batch_size, shuffle=shuffle),
        DataLoader(Data(128, 1), 64),
        DataLoader(Data(128, 2), 64),
    )


def build(
    method: str = "dbmtl",
    *,
    seed: int = 0,
    dropout: float = 0.1,
    lr: float = 1e-2,
    scheduler: str | None = None,
    balancer_kw: dict[str, Any] | None = None,
    **config: Any,
) -> Trainer:
    seed_everything(seed)
    model = Model(dropout)
    # the engine is pinned: "auto" picks by timing, and two runs compared bit for bit must not
    # be allowed to pick differently on a busy machine
    balancer_kw = {"engine": "loop", **(balancer_kw or {})}
    balancer = mtlbalance.make(method, model.enc, dict(model.heads.items()), **balancer_kw)
    opt = torch.optim.Adam([*model.parameters(), *balancer.parameters()], lr=lr)
    sched: Any = None
    if scheduler == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    config.setdefault("epochs", 3)
    config.setdefault("progress", False)
    trainer_kw = {
        k: config.pop(k)
        for k in ("tracker", "val_reference", "test_reference", "select_tasks", "callbacks")
        if k in config
    }
    return Trainer(
        model,
        tasks(),
        balancer,
        opt,
        config=TrainerConfig(seed=seed, **config),
        scheduler=sched,
        **trainer_kw,
    )


class Stop(Exception):
    """Raised by :func:`stop_at`: a run interrupted in-process (a kill, for the tests)."""


def stop_at(step_to_stop: int) -> Callable[[Trainer, int], None]:
    """A trainer callback that raises :class:`Stop` after optimizer step ``step_to_stop``."""

    def stop(trainer: Trainer, step: int) -> None:
        if step == step_to_stop:
            raise Stop

    return stop


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("ckpt")
    parser.add_argument("--kill-at", type=int, default=None)
    parser.add_argument("--method", default="dbmtl")
    args = parser.parse_args()
    callbacks = []
    if args.kill_at is not None:

        def kill(trainer: Trainer, step: int) -> None:
            if step == args.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

        callbacks.append(kill)
    trainer = build(
        args.method,
        checkpoint_dir=args.ckpt,
        checkpoint_every=3,
        scheduler="step",
        callbacks=callbacks,
    )
    result = trainer.fit(*loaders(), resume=True)
    params = {k: v.tolist() for k, v in trainer.model.state_dict().items()}
    with open(args.out, "w") as f:
        json.dump(
            {
                "val": result.val,
                "test": result.test,
                "best_epoch": result.best_epoch,
                "steps": result.steps,
                "params": params,
            },
            f,
        )


if __name__ == "__main__":
    main()
