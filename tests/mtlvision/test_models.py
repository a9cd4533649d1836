"""Models: shapes, which parameters are shared, architecture-specific behaviour, weights from
a user's file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtltrain.problem import MultiTaskModel
from mtlvision.models import (
    MTAN,
    CrossStitch,
    DeepLabHPS,
    MultiLeNet,
    ResNetHPS,
    SegNet,
    build_dense_model,
    resnet_trunk,
)

from .conftest import check_partition

NYU = {"segmentation": 13, "depth": 1, "normal": 3}


def _preds(out):  # type: ignore[no-untyped-def]
    return out[1] if isinstance(out, tuple) else out


@pytest.mark.parametrize(
    ("arch", "backbone", "dilated"),
    [("hps", "resnet50", True), ("mtan", "resnet50", True), ("mtan", "resnet18", False),
     ("cross_stitch", "resnet18", False), ("segnet", "resnet50", True)],
)  # fmt: skip
def test_dense_models_predict_every_task_at_input_size(
    arch: str, backbone: str, dilated: bool
) -> None:
    torch.manual_seed(0)
    model = build_dense_model(arch, NYU, backbone=backbone, dilated=dilated)
    assert isinstance(model, MultiTaskModel)
    check_partition(model)
    model.eval()
    with torch.no_grad():
        preds = _preds(model(torch.randn(2, 3, 64, 96)))
    assert {t: tuple(p.shape) for t, p in preds.items()} == {
        t: (2, c, 64, 96) for t, c in NYU.items()
    }


def test_deeplab_encoder_has_output_stride_8_and_2048_channels() -> None:
    model = DeepLabHPS({"segmentation": 7, "depth": 1}).eval()
    with torch.no_grad():
        rep, _ = model(torch.randn(1, 3, 64, 128))
    assert rep.shape == (1, 2048, 8, 16)


def test_mtan_attention_is_task_specific() -> None:
    """Changing one task's attention masks changes only that task's output (LibMTL's
    ``[module] * T`` would share them)."""
    torch.manual_seed(0)
    model = MTAN({"a": 2, "b": 2}, backbone="resnet18", dilated=False).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        for p in model.attention["a"].parameters():
            p.add_(0.5)
        after = model(x)
    assert not torch.allclose(before["a"], after["a"])
    assert torch.equal(before["b"], after["b"])
    assert model.attention["a"][0] is not model.attention["b"][0]


def test_cross_stitch_units() -> None:
    """Initialised as Misra et al. (0.9 / 0.1/(T−1)); with identity units every task's output
    is its own column's (no mixing)."""
    torch.manual_seed(0)
    model = CrossStitch({"a": 2, "b": 1, "c": 3}, backbone="resnet18", dilated=False).eval()
    expected = torch.full((3, 3), 0.05)
    expected.fill_diagonal_(0.9)
    assert torch.allclose(model.units.data, expected.expand(3, 3, 3))
    with torch.no_grad():
        model.units.copy_(torch.eye(3).expand(3, 3, 3))
        x = torch.randn(1, 3, 32, 32)
        out = model(x)
        for t in ("a", "b", "c"):
            alone = model.heads[t](model.columns[t](x))
            alone = torch.nn.functional.interpolate(
                alone, size=(32, 32), mode="bilinear", align_corners=True
            )
            assert torch.allclose(out[t], alone, atol=1e-6)
        model.units[0, 0, 1] = 1.0  # now a's stage 2 also reads b's stage 1
        mixed = model(x)
    assert not torch.allclose(mixed["a"], out["a"]) and torch.equal(mixed["b"], out["b"])


def test_segnet_needs_multiples_of_32() -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        SegNet(NYU)(torch.randn(1, 3, 40, 64))


def test_unknown_arch_and_bad_backbones() -> None:
    with pytest.raises(ValueError, match="arch must be one of"):
        build_dense_model("unet", NYU)
    with pytest.raises(ValueError, match="cannot dilate"):
        DeepLabHPS(NYU, backbone="resnet18")
    with pytest.raises(ValueError, match="backbone must be one of"):
        resnet_trunk("vgg16")
    with pytest.raises(ValueError, match="trained from scratch"):
        build_dense_model("segnet", NYU, pretrained="w.pth")


def test_pretrained_weights_come_from_the_users_file(tmp_path: Path) -> None:
    from torchvision.models import resnet18, resnet34

    torch.manual_seed(1)
    reference = resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    torch.manual_seed(2)
    trunk = resnet_trunk("resnet18", pretrained=path)
    assert torch.equal(trunk.stem[0].weight, reference.conv1.weight)
    assert torch.equal(trunk.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)
    torch.manual_seed(2)
    assert not torch.equal(resnet_trunk("resnet18").stem[0].weight, reference.conv1.weight)
    model = ResNetHPS({"a": 3}, pretrained=path)  # through a model's constructor too
    assert torch.equal(model.encoder[0].layer1[0].conv1.weight, reference.layer1[0].conv1.weight)

    other = tmp_path / "resnet34.pth"
    torch.save(resnet34(weights=None).state_dict(), other)
    with pytest.raises(ValueError, match=r"does not fit a ResNet: missing .*unexpected"):
        resnet_trunk("resnet18", pretrained=other)
    with pytest.raises(FileNotFoundError, match=r"pretrained weights .* do not exist"):
        resnet_trunk("resnet18", pretrained=tmp_path / "none.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ValueError, match="weights_only=True"):
        resnet_trunk("resnet18", pretrained=tmp_path / "junk.pth")


def test_office_model_runs_each_task_on_its_own_images() -> None:
    torch.manual_seed(0)
    model = ResNetHPS({"amazon": 31, "dslr": 31}).eval()
    check_partition(model)
    xa, xd = torch.randn(2, 3, 32, 32), torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = model({"amazon": xa, "dslr": xd})
        assert out["dslr"].shape == (3, 31)
        assert torch.allclose(out["amazon"], model.heads["amazon"](model.encoder(xa)))
        rep, single = model(xa)  # one input for all tasks: also the representation
    assert rep.shape == (2, 512) and torch.allclose(single["amazon"], out["amazon"])
    with pytest.raises(ValueError, match=r"no input images for tasks \['dslr'\]"):
        model({"amazon": xa})


def test_office_hidden_layer_initialisation() -> None:
    torch.manual_seed(0)
    linear = ResNetHPS({"a": 3}).encoder[3]
    assert (
        torch.all(linear.bias == 0.1) and abs(float(linear.weight.detach().std()) - 0.005) < 0.0005
    )


def test_multilenet() -> None:
    model = MultiLeNet()
    check_partition(model)
    rep, out = model(torch.randn(5, 1, 28, 28))
    assert rep.shape == (5, 50) and {t: tuple(v.shape) for t, v in out.items()} == {
        "left": (5, 10),
        "right": (5, 10),
    }
