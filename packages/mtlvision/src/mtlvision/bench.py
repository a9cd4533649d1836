"""Problem builders for ``mtlbench`` specs (``problem = "mtlvision.bench:<builder>"``).

``nyuv2_problem`` / ``cityscapes_problem`` — ``[data]`` options:
    ``root``: the data set folder (default ``$MTLVISION_DATA/nyuv2`` or ``…/cityscapes``, else
    ``~/.cache/mtlvision/<name>``; layout in :mod:`mtlvision.data.dense`);
    ``label_dir`` (``"label"``); ``augment`` (false; LibMTL's ``--aug``: scale-crop and flip);
    ``val_size``: 0 — validate on the released test split, as LibMTL and the paper's tables
    do (model selection then sees the test split); N — hold out N training images (seeded
    by ``seed``) for validation instead;
    ``train_size`` / ``test_size``: keep the first that many images (quick runs);
    ``image_size``: ``[H, W]`` every file must have (default the released size);
    ``workers``: DataLoader processes (0).
  ``[model]``: ``arch`` (``hps`` — the paper's DeepLabV3+; ``mtan``, ``cross_stitch``,
  ``segnet``), ``backbone`` (``resnet50``), ``dilated`` (true: output stride 8, the paper's;
  false: the plain ResNet, e.g. a small ``resnet18`` variant), ``pretrained`` (path of a
  torchvision ResNet state dict; empty: random initialisation).

``office_problem`` — ``[data]``: ``dataset`` (``"office-31"`` or ``"office-home"``), ``root``,
``lists`` (folder of the split lists; default ``root``), ``image_size`` (224), ``workers``,
``train_size`` / ``val_size`` / ``test_size`` (per domain, quick runs). ``[model]``:
``backbone`` (``resnet18``), ``hidden`` (512), ``pretrained``.

``multimnist_problem`` — ``[data]``: ``root`` (MNIST's files; default
``$MTLVISION_DATA/mnist``), ``seed`` (0; the pairing and the split), ``val_size`` (1,000),
``train_size``, ``test_size``. ``[model]``: none (Sener & Koltun's MultiLeNet).

Metrics, in the units of the paper's tables: segmentation ``miou``, ``pixacc`` (%); depth
``abs_err``, ``rel_err``; normal ``mean``, ``median`` (degrees), ``within_11_25``,
``within_22_5``, ``within_30`` (%); classification ``acc`` (%).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from mtltrain.data import TensorLoader
from mtltrain.problem import Problem
from mtltrain.trainer import Task

from .data._common import optional_int, options, positive_int
from .data.dense import CITYSCAPES, NYUV2, DenseScenes, DenseSpec
from .data.loaders import BatchLoader, MultiInputLoader
from .data.multimnist import MultiMNIST, load_mnist, make_multimnist
from .data.office import OFFICE, office_splits
from .losses import classification_loss, depth_loss, normal_loss, segmentation_loss
from .metrics import Accuracy, DepthError, MeanIoU, NormalAngle, PixelAccuracy
from .models.classify import MultiLeNet, ResNetHPS
from .models.dense import build_dense_model, count_parameters

__all__ = [
    "cityscapes_problem",
    "dense_tasks",
    "multimnist_problem",
    "nyuv2_problem",
    "office_problem",
]

_DENSE_DATA: dict[str, Any] = {
    "root": None,
    "label_dir": "label",
    "augment": False,
    "val_size": 0,
    "train_size": None,
    "test_size": None,
    "image_size": None,
    "seed": 0,
    "workers": 0,
}
_DENSE_MODEL: dict[str, Any] = {
    "arch": "hps",
    "backbone": "resnet50",
    "pretrained": None,
    "dilated": True,
}
_OUT = {"depth": 1, "normal": 3}  # output channels; segmentation: the classes


def dense_tasks(spec: DenseSpec) -> list[Task]:
    """The tasks of NYUv2 or Cityscapes with the paper's metrics and LibMTL's losses."""
    c = spec.classes
    tasks = [
        Task("segmentation", segmentation_loss, {"miou": MeanIoU(c), "pixacc": PixelAccuracy(c)}),
        Task("depth", depth_loss, {"abs_err": DepthError("abs"), "rel_err": DepthError("rel")}),
    ]
    if "normal" in spec.tasks:
        tasks.append(
            Task(
                "normal",
                normal_loss,
                {
                    "mean": NormalAngle("mean"),
                    "median": NormalAngle("median"),
                    "within_11_25": NormalAngle("within", 11.25),
                    "within_22_5": NormalAngle("within", 22.5),
                    "within_30": NormalAngle("within", 30.0),
                },
            )
        )
    return tasks


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{what} must be true or false, not {value!r}")
    return value


def _dense_problem(spec: DenseSpec, data: Mapping[str, Any], model: Mapping[str, Any]) -> Problem:
    d = options(data, _DENSE_DATA, "data")
    m = options(model, _DENSE_MODEL, "model")
    augment = _bool(d["augment"], "[data] augment")
    val_size = positive_int(d["val_size"], "[data] val_size", allow_zero=True)
    train_size = optional_int(d["train_size"], "[data] train_size")
    test_size = optional_int(d["test_size"], "[data] test_size")
    workers = positive_int(d["workers"], "[data] workers", allow_zero=True)
    seed = positive_int(d["seed"], "[data] seed", allow_zero=True)
    size: tuple[int, int] | None = None
    if d["image_size"] not in (None, ""):
        hw = [int(v) for v in d["image_size"]]
        if len(hw) != 2 or min(hw) < 1:
            raise ValueError(f"[data] image_size must be [height, width], not {d['image_size']!r}")
        size = (hw[0], hw[1])
    scenes = functools.partial(
        DenseScenes, spec, d["root"], label_dir=str(d["label_dir"]), size=size
    )
    n = scenes("train").available
    if val_size:
        if val_size >= n:
            raise ValueError(f"[data] val_size {val_size} leaves no training image of {n}")
        order = np.random.default_rng(seed).permutation(n)
        val_ids: list[int] | None = sorted(int(i) for i in order[:val_size])
        train_ids = sorted(int(i) for i in order[val_size:])
    else:
        val_ids, train_ids = None, list(range(n))
    if train_size is not None:
        train_ids = train_ids[:train_size]
    test_ids = list(range(scenes("val").available))[:test_size] if test_size else None
    train = scenes("train", indices=train_ids, augment=augment)
    test = scenes("val", indices=test_ids)
    val = scenes("train", indices=val_ids) if val_ids else test
    outputs = {t: spec.classes if t == "segmentation" else _OUT[t] for t in spec.tasks}
    arch, backbone = str(m["arch"]), str(m["backbone"])
    pretrained = m["pretrained"] or None
    dilated = _bool(m["dilated"], "[model] dilated")

    def build() -> Any:
        return build_dense_model(
            arch, outputs, backbone=backbone, pretrained=pretrained, dilated=dilated
        )

    def loader(split: DenseScenes, batch_size: int, shuffle: bool) -> BatchLoader:
        return BatchLoader(
            split,
            batch_size,
            shuffle=shuffle,
            drop_last=shuffle,  # LibMTL drops the last, smaller training batch
            augment=shuffle and split.augment,
            workers=workers,
        )

    model_ = build()  # fail now on a bad option or weights file, not in the first run
    info = {
        "dataset": spec.name,
        "root": str(train.root),
        "sizes": {"train": len(train), "val": len(val), "test": len(test)},
        "validation": "held-out training images" if val_ids else "the test split (LibMTL)",
        "augment": augment,
        "image_size": list(size or spec.size),
        "arch": arch,
        "backbone": backbone,
        "dilated": dilated,
        "pretrained": pretrained,
        "parameters": count_parameters(model_),
    }
    del model_
    return Problem(
        tasks=dense_tasks(spec),
        train=train,
        val=val,
        test=test,
        make_model=build,
        loader=loader,
        info=info,
    )


def nyuv2_problem(*, data: Mapping[str, Any], model: Mapping[str, Any]) -> Problem:
    """NYUv2: 13-class segmentation, depth and surface normals (the paper's Table 1)."""
    return _dense_problem(NYUV2, data, model)


def cityscapes_problem(*, data: Mapping[str, Any], model: Mapping[str, Any]) -> Problem:
    """Cityscapes: 7-class segmentation and depth (the paper's Table 2)."""
    return _dense_problem(CITYSCAPES, data, model)


_OFFICE_DATA: dict[str, Any] = {
    "dataset": "office-31",
    "root": None,
    "lists": None,
    "image_size": 224,
    "workers": 0,
    "train_size": None,
    "val_size": None,
    "test_size": None,
}
_OFFICE_MODEL: dict[str, Any] = {"backbone": "resnet18", "hidden": 512, "pretrained": None}


def office_problem(*, data: Mapping[str, Any], model: Mapping[str, Any]) -> Problem:
    """Office-31 (Table 3) or Office-Home (Table 4): every domain is a classification task."""
    d = options(data, _OFFICE_DATA, "data")
    m = options(model, _OFFICE_MODEL, "model")
    if d["dataset"] not in OFFICE:
        raise ValueError(f"[data] dataset must be one of {sorted(OFFICE)}, not {d['dataset']!r}")
    spec = OFFICE[d["dataset"]]
    workers = positive_int(d["workers"], "[data] workers", allow_zero=True)
    image_size = positive_int(d["image_size"], "[data] image_size")
    hidden = positive_int(m["hidden"], "[model] hidden")
    limits = [optional_int(d[f"{s}_size"], f"[data] {s}_size") for s in ("train", "val", "test")]
    train, val, test = office_splits(
        spec, d["root"], d["lists"], image_size=image_size, limits=limits
    )
    classes = dict.fromkeys(spec.domains, spec.classes)
    backbone, pretrained = str(m["backbone"]), m["pretrained"] or None

    def build() -> ResNetHPS:
        return ResNetHPS(classes, backbone=backbone, hidden=hidden, pretrained=pretrained)

    def loader(split: Mapping[str, Any], batch_size: int, shuffle: bool) -> MultiInputLoader:
        return MultiInputLoader(split, batch_size, shuffle=shuffle, workers=workers)

    tasks = [Task(dom, classification_loss, {"acc": Accuracy()}) for dom in spec.domains]
    model_ = build()
    first = next(iter(train.values()))
    info = {
        "dataset": spec.name,
        "root": str(first.root),
        "lists": str(first.lists),
        "sizes": {
            split: {dom: len(ds) for dom, ds in part.items()}
            for split, part in (("train", train), ("val", val), ("test", test))
        },
        "image_size": image_size,
        "backbone": backbone,
        "pretrained": pretrained,
        "parameters": count_parameters(model_),
    }
    del model_
    return Problem(
        tasks=tasks,
        train=train,
        val=val,
        test=test,
        make_model=build,
        loader=loader,
        info=info,
    )


_MNIST_DATA: dict[str, Any] = {
    "root": None,
    "seed": 0,
    "val_size": 1000,
    "train_size": None,
    "test_size": None,
}


def multimnist_problem(*, data: Mapping[str, Any], model: Mapping[str, Any]) -> Problem:
    """MultiMNIST (Sener & Koltun, 2018): classify the left and the right digit."""
    d = options(data, _MNIST_DATA, "data")
    options(model, {}, "model")
    seed = positive_int(d["seed"], "[data] seed", allow_zero=True)
    train, val, test = make_multimnist(
        load_mnist(d["root"]),
        seed=seed,
        val_size=positive_int(d["val_size"], "[data] val_size"),
        train_size=optional_int(d["train_size"], "[data] train_size"),
        test_size=optional_int(d["test_size"], "[data] test_size"),
    )
    tasks = [Task(t, classification_loss, {"acc": Accuracy()}) for t in ("left", "right")]

    def loader(split: MultiMNIST, batch_size: int, shuffle: bool) -> TensorLoader:
        return TensorLoader(split.images, split.targets, batch_size, shuffle=shuffle)

    info = {
        "dataset": "multimnist",
        "seed": seed,
        "sizes": {"train": len(train), "val": len(val), "test": len(test)},
        "parameters": count_parameters(MultiLeNet()),
    }
    return Problem(
        tasks=tasks,
        train=train,
        val=val,
        test=test,
        make_model=MultiLeNet,
        loader=loader,
        info=info,
    )
