"""NYUv2 / Cityscapes in LibMTL's .npy layout: the promised errors, reading fixtures,
augmentation, and batch loading that replays after a resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mtlvision.data import CITYSCAPES, NYUV2, BatchLoader, DatasetNotFoundError, DenseScenes
from mtlvision.data.dense import SCALES, augment_scene

from .conftest import write_dense

SMALL = (12, 16)


def test_missing_root_says_where_and_what(data_env: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as e:
        DenseScenes(NYUV2, None, "train")
    msg = str(e.value)
    assert str(data_env / "nyuv2") in msg and "$MTLVISION_DATA/nyuv2" in msg
    for part in ("train/image", "train/label", "train/depth", "train/normal", "val/", "288, 384",
                 "0..12", "dropbox.com", "lorenmt/mtan"):  # fmt: skip
        assert part in msg, part


def test_missing_cityscapes_mentions_its_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as e:  # DatasetNotFoundError is a FileNotFoundError
        DenseScenes(CITYSCAPES, tmp_path / "nowhere", "val")
    msg = str(e.value)
    assert "128, 256" in msg and "0..6" in msg and "normal" not in msg and "label_7" in msg
    assert "the [data] root option" in msg


def test_missing_folder_is_named(tmp_path: Path) -> None:
    write_dense(tmp_path, classes=13, size=SMALL, normals=False)
    with pytest.raises(DatasetNotFoundError, match=r"train[/\\]normal does not exist"):
        DenseScenes(NYUV2, tmp_path, "train", size=SMALL)


def test_reads_the_fixture(tmp_path: Path) -> None:
    written = write_dense(tmp_path, classes=13, size=SMALL, counts=(3, 2))
    train = DenseScenes(NYUV2, tmp_path, "train", size=SMALL)
    val = DenseScenes(NYUV2, tmp_path, "val", size=SMALL)
    assert (len(train), len(val)) == (3, 2)
    for i in range(3):
        image, targets = train[(i, None)]
        ref = written["train"]
        assert image.shape == (3, *SMALL) and image.dtype == torch.float32
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), ref["image"][i])
        assert targets["segmentation"].dtype == torch.int64
        np.testing.assert_array_equal(targets["segmentation"].numpy(), ref["label"][i])
        np.testing.assert_array_equal(targets["depth"][0].numpy(), ref["depth"][i][..., 0])
        np.testing.assert_array_equal(targets["normal"].permute(1, 2, 0).numpy(), ref["normal"][i])
    image, _ = val[1]  # a plain int index works too
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), written["val"]["image"][1])


def test_cityscapes_label_dir_and_2d_depth(tmp_path: Path) -> None:
    write_dense(
        tmp_path, classes=7, size=SMALL, normals=False, label_dir="label_7", label_dtype="int64"
    )
    np.save(tmp_path / "train" / "depth" / "0.npy", np.ones(SMALL, np.float32))  # (H, W) too
    data = DenseScenes(CITYSCAPES, tmp_path, "train", size=SMALL, label_dir="label_7")
    _, targets = data[0]
    assert set(targets) == {"segmentation", "depth"}
    assert targets["depth"].shape == (1, *SMALL) and float(targets["depth"].min()) == 1.0


def test_indices_select_images(tmp_path: Path) -> None:
    written = write_dense(tmp_path, classes=13, size=SMALL, counts=(3, 2))
    data = DenseScenes(NYUV2, tmp_path, "train", size=SMALL, indices=[2])
    assert len(data) == 1
    np.testing.assert_array_equal(data[0][0].permute(1, 2, 0).numpy(), written["train"]["image"][2])
    with pytest.raises(ValueError, match=r"out of range 0\.\.2"):
        DenseScenes(NYUV2, tmp_path, "train", size=SMALL, indices=[3])


def test_numbering_gap_is_an_error(tmp_path: Path) -> None:
    write_dense(tmp_path, classes=13, size=SMALL, counts=(3, 2))
    (tmp_path / "train" / "depth" / "1.npy").unlink()
    with pytest.raises(ValueError, match=r"depth must hold 0\.npy \.\. 2\.npy.*missing \[1\]"):
        DenseScenes(NYUV2, tmp_path, "train", size=SMALL)


def test_bad_label_values_name_the_file(tmp_path: Path) -> None:
    write_dense(tmp_path, classes=13, size=SMALL)
    bad = np.zeros(SMALL, np.float32)
    bad[0, 0], bad[0, 1] = 13, 2.5
    np.save(tmp_path / "train" / "label" / "1.npy", bad)
    data = DenseScenes(NYUV2, tmp_path, "train", size=SMALL)
    data[0]  # fine
    with pytest.raises(ValueError, match=r"label[/\\]1\.npy has label values \[2\.5, 13\.0\]"):
        data[1]


def test_wrong_shape_names_the_file_and_the_expected_shape(tmp_path: Path) -> None:
    write_dense(tmp_path, classes=13, size=SMALL)
    with pytest.raises(
        ValueError, match=r"image[/\\]0\.npy has shape \(12, 16, 3\), expected \(288, 384, 3\)"
    ):
        DenseScenes(NYUV2, tmp_path, "train")[0]  # the released size by default


def test_non_finite_values_are_an_error(tmp_path: Path) -> None:
    write_dense(tmp_path, classes=13, size=SMALL)
    depth = np.ones((*SMALL, 1), np.float32)
    depth[3, 3] = np.nan
    np.save(tmp_path / "val" / "depth" / "0.npy", depth)
    with pytest.raises(ValueError, match=r"depth[/\\]0\.npy has NaN"):
        DenseScenes(NYUV2, tmp_path, "val", size=SMALL)[0]


def _ramp_scene(h: int = 24, w: int = 40) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    image = torch.arange(w, dtype=torch.float32).expand(3, h, w).clone()  # value = column
    targets = {
        "segmentation": torch.arange(w).expand(h, w).clone() % 13,
        "depth": torch.full((1, h, w), 2.0),
        "normal": torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand(3, h, w).clone(),
    }
    return image, targets


@pytest.mark.parametrize("seed", range(12))
def test_augmentation_scale_crop_and_flip(seed: int) -> None:
    """By hand: a crop of width w = int(W/s) resized back with align_corners=True turns the
    column ramp 0..W-1 into a ramp of slope (w-1)/(W-1); depth 2 becomes 2/s; a flip reverses
    the ramp and turns the normal (1, 0, 0) into (-1, 0, 0)."""
    image, targets = _ramp_scene()
    w_full = image.shape[-1]
    out, t = augment_scene(image, targets, torch.Generator().manual_seed(seed))
    depth = float(t["depth"][0, 0, 0])
    scale = 2.0 / depth
    assert min(abs(scale - s) for s in SCALES) < 1e-6
    assert torch.all(t["depth"] == depth)  # nearest: no mixing
    row = out[0, 0]
    w = int(w_full / scale)
    flipped = bool(row[-1] < row[0])
    step = (w - 1) / (w_full - 1) * (-1 if flipped else 1)
    expected = row[0] + step * torch.arange(w_full, dtype=torch.float32)
    torch.testing.assert_close(row, expected, atol=1e-4, rtol=0)  # every column, not just ends
    assert torch.allclose(t["normal"][0], torch.full_like(t["normal"][0], -1.0 if flipped else 1.0))
    assert torch.all(t["normal"][1:] == 0)
    # labels stay labels of the crop (nearest), integral and within the original values
    assert t["segmentation"].dtype == torch.int64
    assert set(t["segmentation"].unique().tolist()) <= set(
        targets["segmentation"].unique().tolist()
    )


def test_augmentation_draws_every_choice_and_is_seeded() -> None:
    image, targets = _ramp_scene()
    seen = set()
    for seed in range(60):
        out, t = augment_scene(image, targets, torch.Generator().manual_seed(seed))
        seen.add((round(2.0 / float(t["depth"][0, 0, 0]), 3), bool(out[0, 0, -1] < out[0, 0, 0])))
    assert seen == {(s, f) for s in SCALES for f in (False, True)}
    a = augment_scene(image, targets, torch.Generator().manual_seed(7))
    b = augment_scene(image, targets, torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and all(torch.equal(a[1][k], b[1][k]) for k in a[1])


def test_augment_only_with_a_seed(tmp_path: Path) -> None:
    written = write_dense(tmp_path, classes=13, size=SMALL)
    data = DenseScenes(NYUV2, tmp_path, "train", size=SMALL, augment=True)
    plain = data[(0, None)][0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(plain, written["train"]["image"][0])
    changed = [
        not np.array_equal(data[(0, s)][0].permute(1, 2, 0).numpy(), plain) for s in range(8)
    ]
    assert any(changed)


def _batches(loader: BatchLoader, interleave: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for x, y in loader:
        out.append((x, y["depth"]))
        if interleave:  # training draws from the same RNG (dropout) between batches
            torch.rand(1000)
    return out


def test_batch_loader_depends_only_on_the_epoch_start_state(tmp_path: Path) -> None:
    write_dense(tmp_path, classes=13, size=SMALL, counts=(7, 2))
    data = DenseScenes(NYUV2, tmp_path, "train", size=SMALL, augment=True)
    loader = BatchLoader(data, 3, shuffle=True, drop_last=True, augment=True)
    assert len(loader) == 2
    torch.manual_seed(0)
    first = _batches(loader, interleave=True)
    torch.manual_seed(0)
    again = _batches(loader, interleave=False)
    assert len(first) == 2 and all(x.shape == (3, 3, *SMALL) for x, _ in first)
    for (x1, d1), (x2, d2) in zip(first, again, strict=True):
        assert torch.equal(x1, x2) and torch.equal(d1, d2)
    torch.manual_seed(1)
    other = _batches(loader, interleave=False)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, other, strict=True))


def test_eval_loader_keeps_order_and_the_last_batch(tmp_path: Path) -> None:
    written = write_dense(tmp_path, classes=13, size=SMALL, counts=(5, 2))
    data = DenseScenes(NYUV2, tmp_path, "train", size=SMALL)
    batches = list(BatchLoader(data, 2))
    assert [len(x) for x, _ in batches] == [2, 2, 1]
    stacked = torch.cat([x for x, _ in batches]).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(stacked, np.stack(written["train"]["image"]))


def test_batch_loader_with_worker_processes(tmp_path: Path) -> None:
    write_dense(tmp_path, classes=13, size=SMALL, counts=(4, 2))
    data = DenseScenes(NYUV2, tmp_path, "train", size=SMALL)
    single = [x for x, _ in BatchLoader(data, 2)]
    workers = [x for x, _ in BatchLoader(data, 2, workers=2)]
    assert all(torch.equal(a, b) for a, b in zip(single, workers, strict=True))
