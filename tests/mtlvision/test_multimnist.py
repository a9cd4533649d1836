"""MNIST's idx files and MultiMNIST as Sener & Koltun (2018) build it."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from mtlvision.data import DatasetNotFoundError, load_mnist, make_multimnist, overlay, read_idx
from mtlvision.data.multimnist import MNIST_MEAN, MNIST_STD

from .conftest import MNIST_DIR, idx_bytes, write_mnist


def test_read_idx_plain_and_gzip(tmp_path: Path) -> None:
    images = np.arange(2 * 28 * 28, dtype=np.int64).reshape(2, 28, 28) % 256
    (tmp_path / "a").write_bytes(idx_bytes(images))
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(images)))
    for name in ("a", "a.gz"):
        got = read_idx(tmp_path / name)
        assert got.dtype == np.uint8 and got.shape == (2, 28, 28)
        np.testing.assert_array_equal(got, images)


def test_read_idx_errors(tmp_path: Path) -> None:
    labels = np.array([1, 2, 3])
    good = idx_bytes(labels)
    (tmp_path / "bad_magic").write_bytes(b"\x00\x00\x08\x02" + good[4:])
    with pytest.raises(ValueError, match="magic number 2050"):
        read_idx(tmp_path / "bad_magic")
    (tmp_path / "short").write_bytes(good[:-1])
    with pytest.raises(ValueError, match=r"header says \[3\] = 3 bytes of data, the file has 2"):
        read_idx(tmp_path / "short")
    (tmp_path / "broken.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match=r"cannot read .*broken\.gz"):
        read_idx(tmp_path / "broken.gz")


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="../shared/data/mnist not here")
def test_the_real_mnist_files() -> None:
    """The published test labels begin 7 2 1 0 4 1 4 9 5 9 (LeCun et al.'s files)."""
    mnist = load_mnist(MNIST_DIR)
    test_x, test_y = mnist["test"]
    assert test_x.shape == (10000, 28, 28) and test_y[:10].tolist() == [
        7,
        2,
        1,
        0,
        4,
        1,
        4,
        9,
        5,
        9,
    ]
    train_x, train_y = mnist["train"]
    assert train_x.shape == (10000, 28, 28) and sorted(set(train_y.tolist())) == list(range(10))


def test_missing_files_say_where_and_what(data_env: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as e:
        load_mnist(None)
    msg = str(e.value)
    assert str(data_env / "mnist") in msg
    for part in (
        "t10k-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "mnist_train_first10k_uint8.npz",
    ):
        assert part in msg
    (data_env / "mnist").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no t10k-images"):
        load_mnist(None)


def test_images_without_labels_is_an_error(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"train-images-idx3-ubyte\.gz is there but not"):
        load_mnist(tmp_path)


def test_label_count_must_match(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(5))))
    with pytest.raises(ValueError, match="has 5 labels for the 30 images"):
        load_mnist(tmp_path)


@pytest.mark.parametrize("fmt", ["idx", "npz"])
def test_reads_the_fixture(tmp_path: Path, fmt: str) -> None:
    data = write_mnist(tmp_path, train_format=fmt)
    got = load_mnist(tmp_path)
    for split in ("train", "test"):
        np.testing.assert_array_equal(got[split][0], data[split][0])
        np.testing.assert_array_equal(got[split][1], data[split][1])


def test_overlay_is_sener_and_koltuns_image() -> None:
    """Reference written out independently: a 36×36 canvas, left at (0, 0), right at (6, 6),
    the brighter pixel where they overlap, then PIL's nearest-neighbour resize to 28×28."""
    from PIL import Image

    rng = np.random.default_rng(1)
    left = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    right = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    got = overlay(left, right)
    assert got.shape == (4, 28, 28) and got.dtype == np.uint8
    for k in range(4):
        canvas = np.zeros((36, 36), np.uint8)
        for i in range(36):
            for j in range(36):
                a = left[k, i, j] if i < 28 and j < 28 else 0
                b = right[k, i - 6, j - 6] if 6 <= i < 34 and 6 <= j < 34 else 0
                canvas[i, j] = max(a, b)
        ref = np.asarray(Image.fromarray(canvas).resize((28, 28), Image.NEAREST))
        np.testing.assert_array_equal(got[k], ref)


def test_multimnist_pairs_labels_and_images(tmp_path: Path) -> None:
    mnist = {"train": write_mnist(tmp_path)["train"], "test": load_mnist(tmp_path)["test"]}
    train, val, test = make_multimnist(mnist, seed=3, val_size=10, train_size=40)
    assert (len(train), len(val), len(test)) == (40, 10, 30)
    images, labels = mnist["train"]
    for part in (train, val):
        np.testing.assert_array_equal(part.left.numpy(), labels[part.source_left])
        np.testing.assert_array_equal(part.right.numpy(), labels[part.source_right])
        pixels = overlay(images[part.source_left], images[part.source_right]) / 255.0
        expected = (pixels - MNIST_MEAN) / MNIST_STD
        np.testing.assert_allclose(part.images[:, 0].numpy(), expected, atol=1e-6)
        assert set(part.source_right) <= set(part.source_left)  # partners from the same split
    assert not set(train.source_left) & set(val.source_left)
    _, test_labels = mnist["test"]
    np.testing.assert_array_equal(test.source_left, np.arange(30))
    np.testing.assert_array_equal(test.right.numpy(), test_labels[test.source_right])
    assert test.images.shape == (30, 1, 28, 28)


def test_multimnist_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    mnist = load_mnist(tmp_path)
    a = make_multimnist(mnist, seed=5, val_size=10)
    b = make_multimnist(mnist, seed=5, val_size=10)
    c = make_multimnist(mnist, seed=6, val_size=10)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.images.numpy(), y.images.numpy())
        assert np.array_equal(x.source_right, y.source_right)
    assert not np.array_equal(a[0].source_left, c[0].source_left)


def test_multimnist_size_errors(tmp_path: Path) -> None:
    mnist = {"train": write_mnist(tmp_path)["train"], "test": load_mnist(tmp_path)["test"]}
    with pytest.raises(ValueError, match=r"val_size must be in 1\.\.59"):
        make_multimnist(mnist, val_size=60)
    with pytest.raises(ValueError, match="train_size 51 is more than the 50 training images"):
        make_multimnist(mnist, val_size=10, train_size=51)
    with pytest.raises(ValueError, match="test_size 31"):
        make_multimnist(mnist, val_size=10, test_size=31)
