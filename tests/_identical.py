"""``assert_identical``: nested state (tensors in dicts, lists, tuples; plain values) equal bit
for bit — the tests of distributed and resumed runs use it (ranks must hold the same state,
a resumed run the uninterrupted one's, not nearly the same). Import it after putting the
``tests`` folder on ``sys.path`` (the tests run in importlib mode: no package)."""

from __future__ import annotations

from typing import Any

import torch


def assert_identical(got: Any, want: Any, where: str = "") -> None:
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor) and got.dtype == want.dtype, f"{where}: dtype"
        assert got.shape == want.shape, f"{where}: shape {tuple(got.shape)} != {tuple(want.shape)}"
        assert torch.equal(got, want), f"{where}: max diff {(got - want).abs().max()}"
    elif isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), f"{where}: {set(got)} {set(want)}"
        for k in want:
            assert_identical(got[k], want[k], f"{where}[{k!r}]")
    elif isinstance(want, list | tuple):
        assert isinstance(got, list | tuple) and len(got) == len(want), f"{where}: length"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_identical(g, w, f"{where}[{i}]")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"
