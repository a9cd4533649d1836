"""Office-31 and Office-Home: one classification task per domain, images listed in
``{domain}_{train,val,test}.txt`` (LibMTL's 60/20/20 split, ``examples/office/data_txt``).

Layout (``lists`` defaults to ``root``)::

    <root>/amazon/images/back_pack/frame_0001.jpg ...     (Office-31; Office-Home: Art/...)
    <lists>/amazon_train.txt, amazon_val.txt, amazon_test.txt, dslr_*.txt, webcam_*.txt

Each list line is ``<image path relative to root> <class id>``. Every list and every image it
names is checked when the data set is built (missing file, malformed line, class id out of
range: an error naming the list and the line). Images are decoded when asked for, converted
to RGB, resized to 224×224 and normalised with the ImageNet mean and std (LibMTL's transform).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ._common import DatasetNotFoundError, data_root, where_hint

__all__ = ["OFFICE", "OFFICE_31", "OFFICE_HOME", "OfficeDomain", "OfficeSpec", "read_list"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class OfficeSpec:
    name: str
    domains: tuple[str, ...]
    classes: int
    images: int
    source: str


OFFICE_31 = OfficeSpec(
    name="office-31",
    domains=("amazon", "dslr", "webcam"),
    classes=31,
    images=4110,
    source="Office-31 (Saenko et al., 2010; https://faculty.cc.gatech.edu/~judy/domainadapt/, "
    "the 'domain_adaptation_images' archive: amazon/, dslr/, webcam/)",
)
OFFICE_HOME = OfficeSpec(
    name="office-home",
    domains=("Art", "Clipart", "Product", "Real_World"),
    classes=65,
    images=15588,
    source="Office-Home (Venkateswara et al., 2017; https://www.hemanthdv.org/officeHomeDataset"
    ".html: Art/, Clipart/, Product/, Real_World/)",
)
OFFICE = {s.name: s for s in (OFFICE_31, OFFICE_HOME)}


def _layout(spec: OfficeSpec) -> str:
    d = spec.domains[0]
    example = (
        "amazon/images/back_pack/frame_0001.jpg"
        if spec is OFFICE_31
        else "Art/Alarm_Clock/00001.jpg"
    )
    return (
        f"    <root>/{example} ...   the images of the domains {', '.join(spec.domains)}\n"
        f"    <lists>/{d}_train.txt, {d}_val.txt, {d}_test.txt, ... one per domain and split,\n"
        f"        lines '<path relative to root> <class id 0..{spec.classes - 1}>'\n"
        f"    (lists defaults to root; the standard lists are LibMTL's "
        f"examples/office/data_txt/{spec.name}/)"
    )


def read_list(
    path: Path, classes: int, root: Path, *, check_files: bool = True
) -> list[tuple[str, int]]:
    """The ``(relative image path, class id)`` lines of one split list, validated."""
    entries: list[tuple[str, int]] = []
    with open(path, encoding="utf-8") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line:
                continue
            image, sep, label = line.rpartition(" ")
            where = f"{path}, line {number}"
            if not sep or not image.strip():
                raise ValueError(f"{where}: expected '<image path> <class id>', got {line!r}")
            try:
                cls = int(label)
            except ValueError:
                raise ValueError(f"{where}: class id {label!r} is not an integer") from None
            if not 0 <= cls < classes:
                raise ValueError(f"{where}: class id {cls} is outside 0..{classes - 1}")
            image = image.strip()
            if os.path.isabs(image) or ".." in Path(image).parts:
                raise ValueError(f"{where}: image path {image!r} must be relative to the root")
            if check_files and not (root / image).is_file():
                raise DatasetNotFoundError(
                    f"{where} names {image}, but {root / image} does not exist; the images go "
                    f"under the data root {root}"
                )
            entries.append((image, cls))
    if not entries:
        raise ValueError(f"{path} lists no images")
    return entries


class OfficeDomain(Dataset[tuple[Tensor, Tensor]]):
    """One domain's split: ``(image (3, S, S) float32 normalised, class id int64)``, indexed by
    ``(index, seed)`` or an int (no augmentation: the seed is ignored)."""

    def __init__(
        self,
        spec: OfficeSpec,
        domain: str,
        split: str,
        root: str | os.PathLike[str] | None,
        lists: str | os.PathLike[str] | None = None,
        *,
        image_size: int = 224,
        limit: int | None = None,
    ) -> None:
        if domain not in spec.domains:
            raise ValueError(f"{spec.name} has the domains {spec.domains}, not {domain!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
        self.spec, self.domain, self.split = spec, domain, split
        self.root = data_root(spec.name, root)
        self.lists = Path(str(lists)).expanduser() if lists not in (None, "") else self.root
        hint = (
            f"Expected layout:\n{_layout(spec)}\nObtain the images from {spec.source} and put "
            f"them there, or point [data] root (or ${{MTLVISION_DATA}}/{spec.name}) at them."
        )
        if not self.root.is_dir():
            raise DatasetNotFoundError(
                f"{spec.name}: the data folder {self.root} does not exist "
                f"({where_hint(spec.name, root)}). {hint}"
            )
        list_path = self.lists / f"{domain}_{split}.txt"
        if not list_path.is_file():
            raise DatasetNotFoundError(
                f"{spec.name}: the split list {list_path} does not exist. {hint}"
            )
        self.entries = read_list(list_path, spec.classes, self.root)
        if limit is not None:
            self.entries = self.entries[:limit]
        from torchvision import transforms

        self.image_size = int(image_size)
        self.transform = transforms.Compose(
            [
                transforms.Resize((self.image_size, self.image_size)),
                transforms.ToTensor(),
                transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
            ]
        )

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, key: tuple[int, Any] | int) -> tuple[Tensor, Tensor]:
        index = key[0] if isinstance(key, tuple) else key
        from PIL import Image, UnidentifiedImageError

        image, label = self.entries[index]
        path = self.root / image
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB")
        except (OSError, UnidentifiedImageError) as e:
            raise ValueError(f"{self.spec.name}: cannot decode {path} as an image ({e})") from e
        return self.transform(rgb), torch.tensor(label, dtype=torch.int64)


def office_splits(
    spec: OfficeSpec,
    root: str | os.PathLike[str] | None,
    lists: str | os.PathLike[str] | None = None,
    *,
    image_size: int = 224,
    limits: Sequence[int | None] = (None, None, None),
) -> tuple[dict[str, OfficeDomain], ...]:
    """(train, val, test): each ``{domain: OfficeDomain}``."""
    return tuple(
        {
            d: OfficeDomain(spec, d, split, root, lists, image_size=image_size, limit=limit)
            for d in spec.domains
        }
        for split, limit in zip(SPLITS, limits, strict=True)
    )
