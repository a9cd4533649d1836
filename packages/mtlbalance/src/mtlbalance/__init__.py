"""mtlbalance: multi-task loss and gradient balancing, built around DB-MTL.

Two lines change in a training loop::

    balancer = mtlbalance.DBMTL(model.encoder, {"seg": model.seg, "depth": model.depth})
    ...
    stats = balancer.backward({"seg": loss_seg, "depth": loss_depth})  # instead of loss.backward()
    optimizer.step()
"""

from __future__ import annotations

from . import aggregators, engines, transforms
from ._params import per_rank
from .balancer import Balancer
from .methods import DBMTL, EW
from .registry import available, make, register_aggregator, register_method, register_transform
from .stats import BalanceStats
from .utils import without_cudnn_rnn

__version__ = "0.1.0"

__all__ = [
    "DBMTL",
    "EW",
    "BalanceStats",
    "Balancer",
    "aggregators",
    "available",
    "engines",
    "make",
    "per_rank",
    "register_aggregator",
    "register_method",
    "register_transform",
    "transforms",
    "without_cudnn_rnn",
]
