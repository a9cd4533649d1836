"""Fixtures in the real formats, written by the tests: LibMTL's .npy layout (NYUv2,
Cityscapes), Office image folders with split lists, MNIST idx files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
OFFICE_LISTS = SHARED / "formats" / "office"
MNIST_DIR = SHARED / "mnist"


def write_dense(
    root: Path,
    *,
    classes: int,
    size: tuple[int, int],
    counts: tuple[int, int] = (3, 2),
    normals: bool = True,
    seed: int = 0,
    label_dir: str = "label",
    label_dtype: str = "float32",
) -> dict[str, dict[str, list[np.ndarray]]]:
    """Random scenes in LibMTL's layout; returns what was written, split -> folder -> arrays."""
    rng = np.random.default_rng(seed)
    h, w = size
    written: dict[str, dict[str, list[np.ndarray]]] = {}
    for split, n in zip(("train", "val"), counts, strict=True):
        folders = {"image": [], label_dir: [], "depth": []} | ({"normal": []} if normals else {})
        for i in range(n):
            image = rng.random((h, w, 3), dtype=np.float32)
            label = rng.integers(-1, classes, (h, w)).astype(label_dtype)
            depth = (rng.random((h, w, 1), dtype=np.float32) * 5 + 0.5) * (
                rng.random((h, w, 1)) > 0.2
            )
            arrays = {"image": image, label_dir: label, "depth": depth.astype(np.float32)}
            if normals:
                n_ = rng.normal(size=(h, w, 3)).astype(np.float32)
                n_ /= np.linalg.norm(n_, axis=-1, keepdims=True)
                n_ *= rng.random((h, w, 1)) > 0.1  # some pixels without a normal
                arrays["normal"] = n_.astype(np.float32)
            for folder, array in arrays.items():
                path = root / split / folder
                path.mkdir(parents=True, exist_ok=True)
                np.save(path / f"{i}.npy", array)
                folders[folder].append(array)
        written[split] = folders
    return written


def write_office(
    root: Path,
    dataset: str,
    *,
    per_list: int = 3,
    lists: Path | None = None,
    size: tuple[int, int] = (20, 14),
    seed: int = 0,
) -> dict[str, list[tuple[str, int]]]:
    """Images and split lists in Office's layout. With ``lists`` (a folder of the real lists)
    the first ``per_list`` entries of each real list are used (their real paths and labels);
    else made-up entries. Images are JPEGs of one random colour each."""
    from PIL import Image

    from mtlvision.data.office import OFFICE

    spec = OFFICE[dataset]
    rng = np.random.default_rng(seed)
    out: dict[str, list[tuple[str, int]]] = {}
    root.mkdir(parents=True, exist_ok=True)
    for domain in spec.domains:
        for split in ("train", "val", "test"):
            name = f"{domain}_{split}.txt"
            if lists is not None:
                lines = (lists / name).read_text().splitlines()[:per_list]
                entries = [(p, int(c)) for p, c in (ln.rsplit(" ", 1) for ln in lines)]
            else:
                entries = [
                    (f"{domain}/images/class_{k}/{split}_{k}.jpg", int(rng.integers(spec.classes)))
                    for k in range(per_list)
                ]
            for path, _ in entries:
                file = root / path
                file.parent.mkdir(parents=True, exist_ok=True)
                colour = tuple(int(v) for v in rng.integers(0, 256, 3))
                Image.new("RGB", size, colour).save(file, quality=95)
            (root / name).write_text("".join(f"{p} {c}\n" for p, c in entries))
            out[name] = entries
    return out


def idx_bytes(array: np.ndarray) -> bytes:
    """MNIST's idx format (uint8 data): magic 2049 (1-d) or 2051 (3-d), big-endian sizes."""
    magic = {1: 2049, 3: 2051}[array.ndim]
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(
    root: Path,
    *,
    n_train: int = 60,
    n_test: int = 30,
    train_format: str = "idx",
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MNIST-format files with random digits; ``train_format`` "idx" (gzip) or "npz"."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    data = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        data[split] = (images, labels)
        prefix = "t10k" if split == "test" else "train"
        if split == "train" and train_format == "npz":
            np.savez(root / "mnist_train_first10k_uint8.npz", images=images, labels=labels)
            continue
        (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
        (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    return data


def params_of(source: object) -> set[int]:
    if hasattr(source, "parameters"):
        return {id(p) for p in source.parameters()}  # type: ignore[attr-defined]
    return {id(p) for p in source}  # type: ignore[attr-defined]


def check_partition(model: object) -> None:
    """shared ∪ task parameters = all parameters, pairwise disjoint."""
    shared = params_of(model.shared_parameters())  # type: ignore[attr-defined]
    tasks = [params_of(v) for v in model.task_parameters().values()]  # type: ignore[attr-defined]
    everything = {id(p) for p in model.parameters()}  # type: ignore[attr-defined]
    assert shared and all(tasks)
    union: set[int] = set(shared)
    for t in tasks:
        assert not (union & t)
        union |= t
    assert union == everything


@pytest.fixture
def data_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$MTLVISION_DATA pointing at an empty folder."""
    base = tmp_path / "data"
    base.mkdir()
    monkeypatch.setenv("MTLVISION_DATA", str(base))
    return base
