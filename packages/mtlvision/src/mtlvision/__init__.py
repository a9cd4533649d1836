"""mtlvision: the DB-MTL paper's vision benchmarks for mtlbalance / mtltrain / mtlbench.

NYUv2 and Cityscapes (LibMTL's ``.npy`` layout), Office-31 and Office-Home (image folders and
split lists), MultiMNIST (built from MNIST's files): loaders in :mod:`mtlvision.data`, models
in :mod:`mtlvision.models`, the paper's metrics in :mod:`mtlvision.metrics`, losses in
:mod:`mtlvision.losses`, ``mtlbench`` problem builders in :mod:`mtlvision.bench`. Importing
the package imports none of them (torchvision loads only when a model or loader is built).
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
