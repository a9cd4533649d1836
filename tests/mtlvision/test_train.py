"""The loaders with mtltrain's Trainer: a run interrupted mid-epoch (augmentation and dropout
on) resumes to exactly the state of an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import mtlbalance
from mtltrain import Trainer, TrainerConfig, seed_everything
from mtlvision.bench import dense_tasks
from mtlvision.data import NYUV2, BatchLoader, DenseScenes

from .conftest import write_dense

SIZE = (16, 24)


class TinyDense(nn.Module):
    """A small dense multi-task model with dropout (it draws from the global RNG)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Dropout2d(0.3))
        self.heads = nn.ModuleDict(
            {
                "segmentation": nn.Conv2d(8, 13, 1),
                "depth": nn.Conv2d(8, 1, 1),
                "normal": nn.Conv2d(8, 3, 1),
            }
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rep = self.encoder(x)
        return rep, {t: h(rep) for t, h in self.heads.items()}

    def shared_parameters(self) -> nn.Module:
        return self.encoder

    def task_parameters(self) -> dict[str, nn.Module]:
        return dict(self.heads.items())


class Stop(Exception):
    pass


def _trainer(ckpt: Path, stop_at: int | None = None) -> Trainer:
    seed_everything(0)
    model = TinyDense()
    balancer = mtlbalance.make("dbmtl", model.shared_parameters(), model.task_parameters())
    optimizer = torch.optim.Adam([*model.parameters(), *balancer.parameters()], lr=1e-2)

    def stop(_: Trainer, step: int) -> None:
        if step == stop_at:
            raise Stop

    return Trainer(
        model,
        dense_tasks(NYUV2),
        balancer,
        optimizer,
        config=TrainerConfig(
            epochs=2, checkpoint_dir=str(ckpt), checkpoint_every=1, progress=False
        ),
        callbacks=[stop],
    )


def test_interrupted_run_resumes_bit_for_bit(tmp_path: Path) -> None:
    write_dense(tmp_path / "nyuv2", classes=13, size=SIZE, counts=(10, 3))
    train = DenseScenes(NYUV2, tmp_path / "nyuv2", "train", size=SIZE, augment=True)
    test = DenseScenes(NYUV2, tmp_path / "nyuv2", "val", size=SIZE)
    loaders = (
        BatchLoader(train, 2, shuffle=True, drop_last=True, augment=True),
        BatchLoader(test, 2),
    )
    full = _trainer(tmp_path / "full")
    result = full.fit(*loaders)
    assert result.steps == 10 and all(r.val is not None for r in result.history)

    with pytest.raises(Stop):
        _trainer(tmp_path / "cut", stop_at=7).fit(*loaders)  # in the second epoch, batch 2 of 5
    resumed = _trainer(tmp_path / "cut")
    again = resumed.fit(*loaders, resume=True)
    assert again.steps == 10
    for (name, a), b in zip(
        full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert again.val == result.val
