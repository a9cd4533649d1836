"""``RecInputs.pin_memory`` pins every tensor of a batch, checked on CPU (real pinning needs an
accelerator; CI has none): ``Tensor.pin_memory`` is answered by a copy that records itself."""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from mtlrec.models import random_inputs


class RecordPinning(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.pinned: list[int] = []  # data pointers of the tensors asked to be pinned

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.Tensor.pin_memory:
            self.pinned.append(args[0].data_ptr())
            return args[0].clone()
        return func(*args, **(kwargs or {}))


def test_every_tensor_of_a_batch_is_pinned_and_rows_stay_aligned() -> None:
    features = {"user": (50, 8), "item": (30, 4), "tags": (20, 3)}
    inputs = random_inputs(
        6, features, dense_dim=2, multi_hot={"tags": 3}, generator=torch.Generator().manual_seed(1)
    )
    tensors = [
        *inputs.sparse.values(),
        inputs.dense,
        *(t for bag in inputs.multi_hot.values() for t in (bag.offsets, bag.values)),
    ]
    with RecordPinning() as mode:
        pinned = inputs.pin_memory()
    assert sorted(mode.pinned) == sorted(t.data_ptr() for t in tensors)
    assert set(pinned.sparse) == set(inputs.sparse)
    for name, values in inputs.sparse.items():
        assert torch.equal(pinned.sparse[name], values)
    assert torch.equal(pinned.dense, inputs.dense)
    for name, bag in inputs.multi_hot.items():
        assert torch.equal(pinned.multi_hot[name].offsets, bag.offsets)
        assert torch.equal(pinned.multi_hot[name].values, bag.values)
