"""Office-31 / Office-Home: image folders plus {domain}_{train,val,test}.txt lists."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlvision.data import (
    OFFICE_31,
    OFFICE_HOME,
    DatasetNotFoundError,
    MultiInputLoader,
    OfficeDomain,
    office_splits,
    read_list,
)
from mtlvision.data.office import IMAGENET_MEAN, IMAGENET_STD

from .conftest import OFFICE_LISTS, write_office


def test_missing_root_says_where_and_what(data_env: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as e:
        OfficeDomain(OFFICE_31, "amazon", "train", None)
    msg = str(e.value)
    assert str(data_env / "office-31") in msg
    for part in ("amazon_train.txt", "amazon/images/", "0..30", "gatech", "data_txt/office-31"):
        assert part in msg, part


def test_missing_list_is_named(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"Art_val\.txt does not exist") as e:
        OfficeDomain(OFFICE_HOME, "Art", "val", tmp_path / "imgs", tmp_path / "lists")
    assert "hemanthdv" in str(e.value) and "0..64" in str(e.value)


def test_missing_image_names_the_list_line(tmp_path: Path) -> None:
    write_office(tmp_path, "office-31")
    lines = (tmp_path / "dslr_test.txt").read_text().splitlines()
    (tmp_path / lines[1].rsplit(" ", 1)[0]).unlink()
    with pytest.raises(DatasetNotFoundError, match=r"dslr_test\.txt, line 2 names"):
        OfficeDomain(OFFICE_31, "dslr", "test", tmp_path)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("amazon/x.jpg 31", r"class id 31 is outside 0\.\.30"),
        ("amazon/x.jpg -1", r"class id -1 is outside"),
        ("amazon/x.jpg three", r"class id 'three' is not an integer"),
        ("amazon/x.jpg", r"expected '<image path> <class id>'"),
        ("../secret.jpg 3", r"must be relative to the root"),
    ],
)
def test_malformed_lines(tmp_path: Path, line: str, problem: str) -> None:
    (tmp_path / "amazon").mkdir()
    (tmp_path / "amazon" / "x.jpg").write_bytes(b"")
    lst = tmp_path / "amazon_train.txt"
    lst.write_text(f"amazon/x.jpg 0\n{line}\n")
    with pytest.raises(
        ValueError, match=rf"amazon_train\.txt, line 2: .*{problem}|line 2.*{problem}"
    ):
        read_list(lst, 31, tmp_path)


def test_paths_with_spaces_and_blank_lines(tmp_path: Path) -> None:
    (tmp_path / "a b").mkdir()
    (tmp_path / "a b" / "c d.jpg").write_bytes(b"")
    lst = tmp_path / "l.txt"
    lst.write_text("a b/c d.jpg 4\n\n")
    assert read_list(lst, 31, tmp_path) == [("a b/c d.jpg", 4)]


def test_decodes_resizes_and_normalises(tmp_path: Path) -> None:
    """A one-colour image stays one colour when resized: every pixel of channel c is
    (colour_c / 255 − mean_c) / std_c (by hand from ImageNet's mean and std)."""
    from PIL import Image

    written = write_office(tmp_path, "office-31", per_list=2)
    data = OfficeDomain(OFFICE_31, "webcam", "val", tmp_path, image_size=8)
    assert len(data) == 2
    path, label = written["webcam_val.txt"][1]
    colour = np.asarray(Image.open(tmp_path / path).convert("RGB"))[3, 3]  # JPEG-decoded value
    image, target = data[(1, 12345)]
    assert image.shape == (3, 8, 8) and target.dtype == torch.int64 and int(target) == label
    for c in range(3):
        expected = (colour[c] / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert torch.allclose(image[c], torch.full((8, 8), float(expected)), atol=0.02)


def test_grey_images_become_rgb(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "dslr" / "images").mkdir(parents=True)
    Image.new("L", (9, 7), 200).save(tmp_path / "dslr" / "images" / "g.png")
    for split in ("train", "val", "test"):
        (tmp_path / f"dslr_{split}.txt").write_text("dslr/images/g.png 5\n")
    image, label = OfficeDomain(OFFICE_31, "dslr", "train", tmp_path, image_size=4)[0]
    assert image.shape == (3, 4, 4) and int(label) == 5


def test_undecodable_image_is_named(tmp_path: Path) -> None:
    write_office(tmp_path, "office-31", per_list=1)
    path, _ = (tmp_path / "amazon_train.txt").read_text().split()
    (tmp_path / path).write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"cannot decode .*\.jpg as an image"):
        OfficeDomain(OFFICE_31, "amazon", "train", tmp_path)[0]


@pytest.mark.skipif(not OFFICE_LISTS.is_dir(), reason="../shared/data/formats/office not here")
@pytest.mark.parametrize(
    ("spec", "total"), [(OFFICE_31, 4110), (OFFICE_HOME, 15588)], ids=["office-31", "office-home"]
)
def test_the_real_split_lists(spec, total: int) -> None:  # type: ignore[no-untyped-def]
    """The published lists (LibMTL's data_txt): every line parses, the published image
    counts, each domain split roughly 60/20/20 (DSLR: 58/18/24), every class in every
    domain's training list."""
    folder = OFFICE_LISTS / spec.name
    seen = 0
    for domain in spec.domains:
        sizes = {}
        for split in ("train", "val", "test"):
            entries = read_list(
                folder / f"{domain}_{split}.txt", spec.classes, folder, check_files=False
            )
            sizes[split] = len(entries)
            assert all(path.startswith(f"{domain}/") for path, _ in entries)
            if split == "train":
                assert set(Counter(c for _, c in entries)) == set(range(spec.classes))
        n = sum(sizes.values())
        seen += n
        assert 0.55 < sizes["train"] / n < 0.65
        assert 0.15 < sizes["val"] / n < 0.25 and 0.15 < sizes["test"] / n < 0.25
    assert seen == total


@pytest.mark.skipif(not OFFICE_LISTS.is_dir(), reason="../shared/data/formats/office not here")
def test_reads_a_fixture_built_from_the_real_lists(tmp_path: Path) -> None:
    written = write_office(
        tmp_path / "img", "office-home", per_list=2, lists=OFFICE_LISTS / "office-home"
    )
    train, val, test = office_splits(OFFICE_HOME, tmp_path / "img", image_size=16)
    assert list(train) == ["Art", "Clipart", "Product", "Real_World"]
    assert all(len(d) == 2 for part in (train, val, test) for d in part.values())
    assert test["Real_World"].entries == written["Real_World_test.txt"]
    x, y = test["Real_World"][0]
    assert x.shape == (3, 16, 16) and int(y) == written["Real_World_test.txt"][0][1]


class _Sized(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Sample k is (k, k): lets the tests see which samples a batch holds."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key):  # type: ignore[no-untyped-def]
        k = key[0] if isinstance(key, tuple) else key
        return torch.tensor(float(k)), torch.tensor(k)


def test_multi_input_training_epoch() -> None:
    """LibMTL's multi-input epoch: max_t ⌊n_t / b⌋ steps, each with b samples of every task;
    the largest task sees each sample at most once, a smaller one cycles through permutations."""
    sets = {"big": _Sized(23), "small": _Sized(7)}
    loader = MultiInputLoader(sets, 4, shuffle=True)
    assert len(loader) == 5
    torch.manual_seed(0)
    batches = list(loader)
    assert len(batches) == 5
    big = torch.cat([y["big"] for _, y in batches]).tolist()
    small = torch.cat([y["small"] for _, y in batches]).tolist()
    assert all(len(x["big"]) == 4 and len(x["small"]) == 4 for x, _ in batches)
    assert len(set(big)) == 20
    assert sorted(small[:7]) == list(range(7)) and sorted(small[7:14]) == list(range(7))
    for x, y in batches:
        assert torch.equal(x["big"], y["big"].float())


def test_multi_input_epoch_replays() -> None:
    sets = {"a": _Sized(10), "b": _Sized(3)}
    loader = MultiInputLoader(sets, 2, shuffle=True)
    torch.manual_seed(3)
    first = []
    for _, y in loader:
        first.append(y)
        torch.rand(100)  # training's own draws between batches
    torch.manual_seed(3)
    again = [y for _, y in loader]
    assert all(torch.equal(a[t], b[t]) for a, b in zip(first, again, strict=True) for t in a)


def test_multi_input_evaluation_sees_every_sample_once() -> None:
    sets = {"a": _Sized(10), "b": _Sized(3), "c": _Sized(5)}
    loader = MultiInputLoader(sets, 4, shuffle=False)
    assert len(loader) == 3  # min(ceil(10 / 4), 3)
    batches = [y for _, y in loader]
    for task, data in sets.items():
        got = torch.cat([y[task] for y in batches]).tolist()
        assert got == list(range(len(data)))
    assert all(len(y[t]) >= 1 for y in batches for t in sets)


def test_multi_input_errors() -> None:
    with pytest.raises(ValueError, match="larger than every task's training set"):
        MultiInputLoader({"a": _Sized(3), "b": _Sized(2)}, 4, shuffle=True)
    with pytest.raises(ValueError, match=r"tasks \['b'\] have no samples"):
        MultiInputLoader({"a": _Sized(3), "b": _Sized(0)}, 2)
