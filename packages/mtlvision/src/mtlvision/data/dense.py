"""NYUv2 and Cityscapes in LibMTL's pre-processed ``.npy`` layout (Liu et al.'s MTAN release).

One folder per split, one file per image and target, numbered from 0::

    <root>/train/image/{i}.npy    float (H, W, 3), RGB
    <root>/train/label/{i}.npy    (H, W) class ids 0..C-1, -1 = not labelled
    <root>/train/depth/{i}.npy    (H, W, 1) or (H, W), 0 = no measurement
    <root>/train/normal/{i}.npy   (H, W, 3) surface normals, 0 = no normal   (NYUv2 only)
    <root>/val/...                the same; the test split of the paper's tables

NYUv2: 795 train / 654 val images of 288×384, 13 classes, depth and normals. Cityscapes:
2,975 train / 500 val images of 128×256, 7 classes, depth (inverse depth, as released).
Files are read when a sample is asked for; every file's shape and label values are checked
then, with the file named in the error.

Augmentation (``augment=True``, LibMTL's ``--aug``; Liu et al. 2021a's for SegNet): a random
scale s ∈ {1.0, 1.2, 1.5} — crop a random (H/s)×(W/s) window and resize it back to H×W
(image and normals bilinear, labels and depth nearest, depth divided by s) — then a
horizontal flip with probability 1/2 (the normals' x component changes sign).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ._common import DatasetNotFoundError, data_root, where_hint

__all__ = ["CITYSCAPES", "NYUV2", "DenseScenes", "DenseSpec", "augment_scene"]

SCALES = (1.0, 1.2, 1.5)


@dataclass(frozen=True)
class DenseSpec:
    """What one dense scene-understanding data set looks like."""

    name: str
    classes: int
    size: tuple[int, int]
    tasks: tuple[str, ...]
    counts: tuple[int, int]  # train, val images of the released data
    source: str

    def layout(self, label_dir: str = "label") -> str:
        h, w = self.size
        lines = [
            f"    <root>/train/image/{{0..{self.counts[0] - 1}}}.npy   float ({h}, {w}, 3) RGB",
            f"    <root>/train/{label_dir}/{{i}}.npy   ({h}, {w}) class ids 0..{self.classes - 1},"
            " -1 = not labelled",
            f"    <root>/train/depth/{{i}}.npy   ({h}, {w}, 1), 0 = no measurement",
        ]
        if "normal" in self.tasks:
            lines.append(f"    <root>/train/normal/{{i}}.npy  ({h}, {w}, 3) normals, 0 = none")
        lines.append(f"    <root>/val/...   the same, {self.counts[1]} images (the test split)")
        return "\n".join(lines)


NYUV2 = DenseSpec(
    name="nyuv2",
    classes=13,
    size=(288, 384),
    tasks=("segmentation", "depth", "normal"),
    counts=(795, 654),
    source="the pre-processed NYUv2 of Liu et al. (MTAN, github.com/lorenmt/mtan) that LibMTL "
    "uses, linked from LibMTL's examples/nyu/README.md "
    "(https://www.dropbox.com/sh/86nssgwm6hm3vkb/AACrnUQ4GxpdrBbLjb6n-mWNa?dl=0)",
)
CITYSCAPES = DenseSpec(
    name="cityscapes",
    classes=7,
    size=(128, 256),
    tasks=("segmentation", "depth"),
    counts=(2975, 500),
    source="the pre-processed Cityscapes of Liu et al. (MTAN) that LibMTL uses, linked from "
    "LibMTL's examples/cityscapes/README.md "
    "(https://www.dropbox.com/sh/gaw6vh6qusoyms6/AADwWi0Tp3E3M4B2xzeGlsEna?dl=0); in MTAN's "
    'original release the 7-class labels are in label_7/ (set label_dir = "label_7")',
)

_FOLDERS = {"segmentation": None, "depth": "depth", "normal": "normal"}


def _missing(spec: DenseSpec, root: Path, what: str, given: Any, label_dir: str) -> str:
    return (
        f"{spec.name}: {what}. The root was {root} ({where_hint(spec.name, given)}). Expected "
        f"LibMTL's .npy layout:\n{spec.layout(label_dir)}\nObtain it from {spec.source}, "
        f"unpack it there, or point [data] root (or ${{MTLVISION_DATA}}/{spec.name}) at it."
    )


class DenseScenes(Dataset[tuple[Tensor, dict[str, Tensor]]]):
    """One split of NYUv2 or Cityscapes, indexed by ``(index, seed)`` (see
    :mod:`mtlvision.data.loaders`); ``seed`` None or ``augment=False``: no augmentation.

    Samples are ``(image (3, H, W) float32, {"segmentation": (H, W) int64 with -1 ignored,
    "depth": (1, H, W) float32, "normal": (3, H, W) float32})``.

    Args:
        spec: :data:`NYUV2` or :data:`CITYSCAPES`.
        root: the data set folder (see :func:`~mtlvision.data._common.data_root`).
        split: ``"train"`` or ``"val"`` (the released test split).
        indices: keep only these image numbers (default all).
        label_dir: the folder of the segmentation labels (``label``).
        augment: apply the random scale-crop and flip (training).
        size: the expected (H, W) of every file (default the released size).
    """

    def __init__(
        self,
        spec: DenseSpec,
        root: str | os.PathLike[str] | None,
        split: str,
        *,
        indices: Sequence[int] | None = None,
        label_dir: str = "label",
        augment: bool = False,
        size: tuple[int, int] | None = None,
    ) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', not {split!r}")
        self.spec = spec
        self.root = data_root(spec.name, root)
        self.split = split
        self.label_dir = label_dir
        self.augment = bool(augment)
        self.size: tuple[int, int] = (int(size[0]), int(size[1])) if size is not None else spec.size
        folders = {"image": "image", "segmentation": label_dir}
        folders.update({t: f for t, f in _FOLDERS.items() if t in spec.tasks and f})
        self.folders = folders
        if not self.root.is_dir():
            raise DatasetNotFoundError(
                _missing(spec, self.root, "the data folder does not exist", root, label_dir)
            )
        counts: dict[str, set[int]] = {}
        for key, folder in folders.items():
            path = self.root / split / folder
            if not path.is_dir():
                raise DatasetNotFoundError(
                    _missing(spec, self.root, f"{path} does not exist", root, label_dir)
                )
            counts[key] = _numbers(path)
        image_ids = counts["image"]
        if not image_ids:
            raise DatasetNotFoundError(
                _missing(
                    spec, self.root, f"{self.root / split / 'image'} has no .npy", root, label_dir
                )
            )
        expected = set(range(len(image_ids)))
        for key, ids in counts.items():
            where = self.root / split / folders[key]
            gaps = sorted(expected - ids)
            extra = sorted(ids - expected)
            if gaps or extra:
                raise ValueError(
                    f"{spec.name}: {where} must hold 0.npy .. {len(image_ids) - 1}.npy like "
                    f"{self.root / split / 'image'}; missing {gaps[:10]}"
                    f"{'...' if len(gaps) > 10 else ''}, unexpected {extra[:10]}"
                    f"{'...' if len(extra) > 10 else ''}"
                )
        self.available = len(image_ids)
        if indices is None:
            self.indices = list(range(self.available))
        else:
            self.indices = [int(i) for i in indices]
            bad = [i for i in self.indices if not 0 <= i < self.available]
            if bad:
                raise ValueError(
                    f"{spec.name} {split}: image numbers {bad[:10]} are out of range "
                    f"0..{self.available - 1}"
                )

    def __len__(self) -> int:
        return len(self.indices)

    def _load(self, key: str, number: int) -> np.ndarray:
        path = self.root / self.split / self.folders[key] / f"{number}.npy"
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"{self.spec.name}: cannot read {path} as .npy ({e})") from e
        h, w = self.size
        allowed: dict[str, list[tuple[int, ...]]] = {
            "image": [(h, w, 3)],
            "segmentation": [(h, w)],
            "depth": [(h, w, 1), (h, w)],
            "normal": [(h, w, 3)],
        }
        shapes = allowed[key]
        if array.shape not in shapes:
            raise ValueError(
                f"{self.spec.name}: {path} has shape {array.shape}, expected "
                f"{' or '.join(str(s) for s in shapes)} (the {self.spec.name} layout; "
                f"[data] image_size sets another H, W)"
            )
        if not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"{self.spec.name}: {path} holds {array.dtype}, not numbers")
        if not np.isfinite(array).all():
            raise ValueError(f"{self.spec.name}: {path} has NaN or infinite values")
        if key == "segmentation":
            bad = np.unique(
                array[(array != np.round(array)) | (array < -1) | (array >= self.spec.classes)]
            )
            if bad.size:
                raise ValueError(
                    f"{self.spec.name}: {path} has label values {bad[:10].tolist()}; labels "
                    f"must be class ids 0..{self.spec.classes - 1} or -1 (not labelled)"
                )
        return array

    def __getitem__(self, key: tuple[int, int | None] | int) -> tuple[Tensor, dict[str, Tensor]]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        number = self.indices[index]
        image = torch.from_numpy(np.ascontiguousarray(self._load("image", number), np.float32))
        image = image.permute(2, 0, 1).contiguous()
        label = torch.from_numpy(self._load("segmentation", number).astype(np.int64))
        targets: dict[str, Tensor] = {"segmentation": label}
        depth = self._load("depth", number).astype(np.float32)
        targets["depth"] = torch.from_numpy(depth.reshape(1, *self.size))
        if "normal" in self.spec.tasks:
            normal = torch.from_numpy(
                np.ascontiguousarray(self._load("normal", number), np.float32)
            )
            targets["normal"] = normal.permute(2, 0, 1).contiguous()
        if self.augment and seed is not None:
            image, targets = augment_scene(image, targets, torch.Generator().manual_seed(seed))
        return image, targets


def augment_scene(
    image: Tensor, targets: dict[str, Tensor], generator: torch.Generator
) -> tuple[Tensor, dict[str, Tensor]]:
    """LibMTL's NYUv2 augmentation (Liu et al. 2019, 2021a): random scale-crop, then a random
    horizontal flip. ``image`` (3, H, W); targets as :class:`DenseScenes` returns them."""
    height, width = image.shape[-2:]
    scale = SCALES[int(torch.randint(len(SCALES), (1,), generator=generator))]
    h, w = int(height / scale), int(width / scale)
    i = int(torch.randint(height - h + 1, (1,), generator=generator))
    j = int(torch.randint(width - w + 1, (1,), generator=generator))
    flip = bool(torch.rand(1, generator=generator) < 0.5)

    def crop(x: Tensor, mode: str) -> Tensor:
        window = x[None, :, i : i + h, j : j + w]
        if mode == "nearest":
            return F.interpolate(window, size=(height, width), mode="nearest")[0]
        return F.interpolate(window, size=(height, width), mode="bilinear", align_corners=True)[0]

    image = crop(image, "bilinear")
    out: dict[str, Tensor] = {}
    for task, target in targets.items():
        if task == "segmentation":
            out[task] = crop(target[None].float(), "nearest")[0].round().long()
        elif task == "depth":
            out[task] = crop(target, "nearest") / scale
        elif task == "normal":
            out[task] = crop(target, "bilinear")
        else:  # pragma: no cover - DenseScenes gives only these
            raise KeyError(task)
    if flip:
        image = image.flip(-1)
        out = {t: v.flip(-1) for t, v in out.items()}
        if "normal" in out:
            out["normal"][0].neg_()
    return image, out


def _numbers(folder: Path) -> set[int]:
    ids: set[int] = set()
    for entry in os.scandir(folder):
        stem, dot, ext = entry.name.rpartition(".")
        if dot and ext == "npy" and stem.isdigit():
            ids.add(int(stem))
    return ids
