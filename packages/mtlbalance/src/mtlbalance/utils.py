"""Helpers for models whose layers the batched engines cannot vmap."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn


def without_cudnn_rnn(module: nn.Module) -> nn.Module:
    """Run every ``nn.RNN``/``nn.GRU``/``nn.LSTM`` inside ``module`` without cuDNN.

    cuDNN's RNN backward has no vmap batching rule, so the batched and representation engines
    cannot differentiate through it (they fall back to the loop engine, with a warning). The
    native RNN kernels can be batched. The forward is otherwise unchanged. Returns ``module``.
    """
    for sub in module.modules():
        if isinstance(sub, nn.RNNBase) and not getattr(sub, "_mtl_no_cudnn", False):
            forward = sub.forward

            @functools.wraps(forward)
            def wrapped(*args: Any, __forward: Any = forward, **kwargs: Any) -> Any:
                with torch.backends.cudnn.flags(enabled=False):
                    return __forward(*args, **kwargs)

            sub.forward = wrapped
            sub._mtl_no_cudnn = True
    return module
