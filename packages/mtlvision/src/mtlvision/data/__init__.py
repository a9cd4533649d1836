"""Loaders for the real formats: NYUv2 and Cityscapes (LibMTL's ``.npy`` layout), Office-31
and Office-Home (image folders plus split lists), MultiMNIST (built from MNIST's files)."""

from __future__ import annotations

from ._common import DATA_ENV, DatasetNotFoundError, data_root
from .dense import CITYSCAPES, NYUV2, DenseScenes, DenseSpec, augment_scene
from .loaders import BatchLoader, MultiInputLoader
from .multimnist import MultiMNIST, load_mnist, make_multimnist, overlay, read_idx
from .office import (
    OFFICE,
    OFFICE_31,
    OFFICE_HOME,
    OfficeDomain,
    OfficeSpec,
    office_splits,
    read_list,
)

__all__ = [
    "CITYSCAPES",
    "DATA_ENV",
    "NYUV2",
    "OFFICE",
    "OFFICE_31",
    "OFFICE_HOME",
    "BatchLoader",
    "DatasetNotFoundError",
    "DenseScenes",
    "DenseSpec",
    "MultiInputLoader",
    "MultiMNIST",
    "OfficeDomain",
    "OfficeSpec",
    "augment_scene",
    "data_root",
    "load_mnist",
    "make_multimnist",
    "office_splits",
    "overlay",
    "read_idx",
    "read_list",
]
