"""MultiMNIST built from real MNIST the way Sener & Koltun (2018) build it.

For every image ``i`` of a split a partner ``j`` is drawn uniformly from the same split (it
may be ``i`` itself); ``i`` goes to the top-left corner of a 36×36 canvas, ``j`` 6 pixels
right and down; where they overlap the canvas keeps the brighter pixel; the canvas is resized
to 28×28 by nearest-neighbour sampling (PIL's ``NEAREST``, which their ``scipy.misc.imresize``
call used). The tasks: classify the left (``i``) and the right (``j``) digit. Pixels are
scaled to [0, 1] and normalised with MNIST's mean 0.1307 and std 0.3081. Everything is drawn
from ``numpy.random.default_rng(seed)``, so a seed gives the same data set on every machine.

MNIST files (``root``), as published (gzip or not)::

    t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz        the 10,000 test images
    train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz      the 60,000 training images
      or mnist_train_first10k_uint8.npz (``images`` N×28×28 uint8, ``labels``)

The test split is built from the test images, train and validation from the training images
(a seeded permutation: the first ``val_size`` go to validation).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._common import DatasetNotFoundError, data_root, where_hint

__all__ = [
    "MNIST_MEAN",
    "MNIST_STD",
    "MultiMNIST",
    "load_mnist",
    "make_multimnist",
    "overlay",
    "read_idx",
]

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
CANVAS = 36
SHIFT = 6
SIZE = 28
NPZ = "mnist_train_first10k_uint8.npz"
_LAYOUT = (
    "    <root>/t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz    (test)\n"
    "    <root>/train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz  (training)\n"
    f"      or <root>/{NPZ} (arrays 'images' N×28×28 uint8 and 'labels')\n"
    "    (the .gz files may also be stored uncompressed, without .gz)\n"
    "The files are MNIST as published by LeCun et al. (torchvision.datasets.MNIST downloads "
    "them into MNIST/raw/)."
)
_MAGIC = {2049: 1, 2051: 3}  # idx magic number -> number of dimensions (uint8 data)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """An idx file (MNIST's format; gzip or plain) as a uint8 array, with its header checked."""
    path = Path(path)
    opener: Any = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"cannot read {path} ({e})") from e
    if len(data) < 8:
        raise ValueError(f"{path} is too short for an idx file ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if magic not in _MAGIC:
        raise ValueError(
            f"{path}: idx magic number {magic} is neither 2049 (labels) nor 2051 (images); "
            f"is it an MNIST file?"
        )
    ndim = _MAGIC[magic]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(data[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim)]
    expected = int(np.prod(dims))
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: the header says {dims} = {expected} bytes of data, the file has "
            f"{len(data) - header} (truncated or corrupt download?)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find(root: Path, name: str) -> Path | None:
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.is_file():
            return candidate
    return None


def _missing(root: Path, given: Any, what: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"mnist: {what} (looked in {root}, chosen by {where_hint('mnist', given)}). "
        f"Expected:\n{_LAYOUT}"
    )


def _pair(root: Path, given: Any, images: str, labels: str) -> tuple[np.ndarray, np.ndarray] | None:
    ipath, lpath = _find(root, images), _find(root, labels)
    if ipath is None:  # labels alone are no data set (the npz carries its own labels)
        return None
    if lpath is None:
        raise _missing(root, given, f"{ipath.name} is there but not {labels}(.gz)")
    x, y = read_idx(ipath), read_idx(lpath)
    if x.ndim != 3 or x.shape[1:] != (SIZE, SIZE):
        raise ValueError(f"{ipath}: images of shape {x.shape[1:]}, expected (28, 28)")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"{lpath} has {len(y)} labels for the {len(x)} images of {ipath}")
    return x, y


def load_mnist(root: str | os.PathLike[str] | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images, labels), "test": (images, labels)}`` (uint8 N×28×28, uint8 N)."""
    folder = data_root("mnist", root)
    if not folder.is_dir():
        raise _missing(folder, root, "the folder does not exist")
    test = _pair(folder, root, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    if test is None:
        raise _missing(folder, root, "no t10k-images-idx3-ubyte(.gz) / t10k-labels-idx1-ubyte(.gz)")
    train = _pair(folder, root, "train-images-idx3-ubyte", "train-labels-idx1-ubyte")
    if train is None:
        npz = folder / NPZ
        if not npz.is_file():
            raise _missing(
                folder, root, f"no training images (train-images-idx3-ubyte(.gz) or {NPZ})"
            )
        with np.load(npz, allow_pickle=False) as archive:
            if "images" not in archive or "labels" not in archive:
                raise ValueError(
                    f"{npz} must hold arrays 'images' and 'labels', not {archive.files}"
                )
            x, y = archive["images"], archive["labels"]
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (SIZE, SIZE):
            raise ValueError(f"{npz}: 'images' must be uint8 N×28×28, not {x.dtype} {x.shape}")
        if y.ndim != 1 or len(y) != len(x):
            raise ValueError(f"{npz}: {len(y)} labels for {len(x)} images")
        train = (x, y)
    for split, (_, y) in (("train", train), ("test", test)):
        if y.size and int(y.max()) > 9:
            raise ValueError(f"mnist {split}: label {int(y.max())} is not a digit 0..9")
    return {"train": train, "test": test}


def overlay(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Sener & Koltun's MultiMNIST image of ``left`` (N×28×28) and ``right``: uint8 N×28×28."""
    n = left.shape[0]
    canvas = np.zeros((n, CANVAS, CANVAS), dtype=np.uint8)
    canvas[:, :SIZE, :SIZE] = left
    canvas[:, SHIFT : SHIFT + SIZE, SHIFT : SHIFT + SIZE] = right
    overlap = slice(SHIFT, SIZE)
    canvas[:, overlap, overlap] = np.maximum(
        left[:, overlap, overlap], right[:, : SIZE - SHIFT, : SIZE - SHIFT]
    )
    # nearest neighbour 36 -> 28 with pixel centres aligned (PIL NEAREST)
    src = np.floor((np.arange(SIZE) + 0.5) * CANVAS / SIZE).astype(np.int64)
    return canvas[:, src][:, :, src]


@dataclass
class MultiMNIST:
    """One split: ``images`` float32 (N, 1, 28, 28) normalised, ``left``/``right`` int64 (N,),
    and which MNIST images made each sample (``source_left``/``source_right``)."""

    images: Tensor
    left: Tensor
    right: Tensor
    source_left: np.ndarray
    source_right: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def targets(self) -> dict[str, Tensor]:
        return {"left": self.left, "right": self.right}


def _build(
    images: np.ndarray, labels: np.ndarray, ids: np.ndarray, rng: np.random.Generator
) -> MultiMNIST:
    partner = ids[rng.integers(0, len(ids), size=len(ids))]
    pixels = overlay(images[ids], images[partner]).astype(np.float32) / 255.0
    x = torch.from_numpy((pixels - MNIST_MEAN) / MNIST_STD).unsqueeze(1)
    return MultiMNIST(
        images=x.contiguous(),
        left=torch.from_numpy(labels[ids].astype(np.int64)),
        right=torch.from_numpy(labels[partner].astype(np.int64)),
        source_left=ids,
        source_right=partner,
    )


def make_multimnist(
    mnist: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    seed: int = 0,
    val_size: int = 1000,
    train_size: int | None = None,
    test_size: int | None = None,
) -> tuple[MultiMNIST, MultiMNIST, MultiMNIST]:
    """(train, val, test) MultiMNIST splits; partners are drawn within each split."""
    train_images, train_labels = mnist["train"]
    test_images, test_labels = mnist["test"]
    n = len(train_images)
    if not 0 < val_size < n:
        raise ValueError(f"val_size must be in 1..{n - 1} (the training images), not {val_size}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    val_ids = order[:val_size]
    train_ids = order[val_size:]
    if train_size is not None:
        if train_size > len(train_ids):
            raise ValueError(
                f"train_size {train_size} is more than the {len(train_ids)} training images "
                f"left after val_size {val_size}"
            )
        train_ids = train_ids[:train_size]
    test_ids = np.arange(len(test_images))
    if test_size is not None:
        if test_size > len(test_ids):
            raise ValueError(f"test_size {test_size} is more than the {len(test_ids)} test images")
        test_ids = test_ids[:test_size]
    train = _build(train_images, train_labels, train_ids, rng)
    val = _build(train_images, train_labels, val_ids, rng)
    test = _build(test_images, test_labels, test_ids, rng)
    return train, val, test
