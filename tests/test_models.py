"""Tests for softdistill.models: shapes, parameter counts, determinism, errors, gradients."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

from softdistill.models import available_models, build_model, count_parameters, register_model
from softdistill.models import registry
from softdistill.models.external import replace_first_conv

SHAPES = [(1, 28), (3, 32), (1, 8)]  # (in_channels, image_size)
# Large models are only checked on the smallest input to keep the file fast.
BIG = {"resnet110", "resnet8x4", "resnet32x4", "resnet18", "resnet34", "mobilenetv2",
       "wrn-16-4", "wrn-28-2", "wrn-40-2"}  # fmt: skip


@pytest.mark.parametrize("name", available_models())
def test_output_shape(name: str) -> None:
    shapes = [(1, 8)] if name in BIG else SHAPES
    for in_channels, size in shapes:
        model = build_model(name, num_classes=7, in_channels=in_channels, image_size=size)
        out = model(torch.randn(2, in_channels, size, size))
        assert out.shape == (2, 7), (name, in_channels, size)
        assert out.dtype == torch.float32


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet20", "wrn-16-2"])
def test_large_image_size(name: str) -> None:
    model = build_model(name, num_classes=5, in_channels=3, image_size=64)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)


def test_available_models() -> None:
    names = available_models()
    assert names == sorted(names)
    expected = {"mlp", "mlp-512", "mlp-1024", "cnn", "cnn-small", "resnet8", "resnet14", "resnet20",
                "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4", "resnet32x4", "wrn-16-2",
                "wrn-28-2", "wrn-40-2", "resnet18", "resnet34", "mobilenetv2", "vgg8", "vgg13"}  # fmt: skip
    assert expected <= set(names)


@pytest.mark.parametrize(
    ("name", "num_classes", "in_channels", "expected"),
    [
        # CIFAR-100 counts reported by CRD (Tian et al. 2020); resnet8 is 83.9k, which CRD rounds to 0.08M
        ("resnet8", 100, 3, 0.084e6),
        ("resnet20", 100, 3, 0.28e6),
        ("resnet56", 100, 3, 0.86e6),
        ("resnet110", 100, 3, 1.74e6),
        ("resnet8x4", 100, 3, 1.23e6),
        ("resnet32x4", 100, 3, 7.43e6),
        ("wrn-40-2", 100, 3, 2.26e6),
        ("wrn-16-2", 100, 3, 0.70e6),
        ("wrn-40-1", 100, 3, 0.57e6),
        ("resnet18", 100, 3, 11.22e6),
        ("mobilenetv2", 100, 3, 2.35e6),
        ("vgg8", 100, 3, 3.96e6),
        ("vgg13", 100, 3, 9.46e6),
        ("resnet8", 10, 3, 78e3),
        ("wrn-28-2", 10, 3, 1.47e6),  # Zagoruyko & Komodakis 2016, CIFAR-10
        ("cnn", 10, 1, 0.29e6),
        ("mlp", 10, 1, 269_322),  # 784*256+256 + 256*256+256 + 256*10+10
    ],
)
def test_parameter_counts(name: str, num_classes: int, in_channels: int, expected: float) -> None:
    image_size = 28 if in_channels == 1 else 32
    n = count_parameters(build_model(name, num_classes, in_channels, image_size))
    assert n == pytest.approx(expected, rel=0.03), n


def test_cnn_small_is_small() -> None:
    assert 30_000 <= count_parameters(build_model("cnn-small", 10, 1, 28)) <= 60_000


def test_mlp_width_and_no_spatial_layers() -> None:
    model = build_model("mlp-512", 10, 1, 28)
    assert count_parameters(model) == 784 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10
    assert not any(isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.BatchNorm1d)) for m in model.modules())
    with pytest.raises(ValueError, match="features per sample"):
        model(torch.randn(2, 1, 32, 32))


def test_count_parameters() -> None:
    assert count_parameters(nn.Linear(3, 4)) == 16


@pytest.mark.parametrize("name", ["mlp", "cnn-small", "resnet8", "wrn-16-2", "mobilenetv2"])
def test_deterministic_init(name: str) -> None:
    x = torch.randn(2, 3, 16, 16)
    outputs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        model = build_model(name, 10, 3, 16).eval()
        with torch.no_grad():
            outputs.append(model(x))
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.equal(outputs[0], outputs[2])


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet20", "wrn-16-2", "mobilenetv2"])
def test_gradients_reach_every_parameter(name: str) -> None:
    model = build_model(name, 10, 3, 16)
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


def test_unknown_name_suggests_close_match() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet2O'") as info:
        build_model("resnet2O", 10)
    message = str(info.value)
    assert "did you mean 'resnet20' or" in message
    assert "mobilenetv2" in message and "wrn-D-W" in message and "timm:NAME" in message


@pytest.mark.parametrize("name", ["wrn-30-2", "wrn-4-2", "wrn-29-2"])
def test_wrn_bad_depth(name: str) -> None:
    with pytest.raises(ValueError, match=r"\(D - 4\) divisible by 6"):
        build_model(name, 10)


@pytest.mark.parametrize(
    ("name", "match"),
    [("wrn-28", "pattern 'wrn-D-W'"), ("wrn-28-0", "widen factor"), ("mlp-big", "pattern 'mlp-H'"),
     ("mlp-0", "hidden width")],
)  # fmt: skip
def test_malformed_pattern_names(name: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_model(name, 10)


@pytest.mark.parametrize(
    "kwargs",
    [{"num_classes": 1}, {"num_classes": 2.5}, {"num_classes": True}, {"num_classes": 10, "in_channels": 0},
     {"num_classes": 10, "image_size": 0}],
)  # fmt: skip
def test_bad_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must be an integer"):
        build_model("resnet8", **kwargs)  # type: ignore[arg-type]


def block_package(package: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every import of ``package`` fail, even where it is installed and an earlier test imported
    it or one of its modules (a None entry in sys.modules fails the import of that very name)."""
    for module in [package, *(m for m in sys.modules if m.startswith(package + "."))]:
        monkeypatch.setitem(sys.modules, module, None)


@pytest.mark.parametrize("imported_before", [False, True], ids=["fresh", "imported-before"])
@pytest.mark.parametrize(("name", "extra"), [("timm:resnet18", "timm"), ("torchvision:resnet18", "vision")])
def test_external_package_missing(name: str, extra: str, imported_before: bool,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    package = name.split(":")[0]
    if imported_before:  # what tests/test_imagenet_recipes.py leaves behind where torchvision is installed
        for module in (package, f"{package}.models"):
            monkeypatch.setitem(sys.modules, module, types.ModuleType(module))
    block_package(package, monkeypatch)
    hint = f"model '{name}' needs .*pip install 'softdistill\\[{extra}\\]'"
    with pytest.raises(ImportError, match=hint):
        build_model(name, 10)


def test_external_bad_source_or_name() -> None:
    with pytest.raises(ValueError, match="unknown model source 'keras'"):
        build_model("keras:resnet50", 10)
    with pytest.raises(ValueError, match="missing model name"):
        build_model("timm:", 10)


def test_replace_first_conv() -> None:
    model = build_model("resnet20", 10, in_channels=3)
    replace_first_conv(model, 1, "resnet20")
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)
    with pytest.raises(ValueError, match="no Conv2d"):
        replace_first_conv(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), 1, "linear")


def test_register_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry.models, "entries", dict(registry.models.entries))

    @register_model("tiny-linear")
    def tiny(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, num_classes))

    assert "tiny-linear" in available_models()
    assert build_model("tiny-linear", 4, 1, 8)(torch.randn(2, 1, 8, 8)).shape == (2, 4)
    for bad, match in [("tiny-linear", "already registered"), ("wrn-16-8", "pattern 'wrn-D-W'"),
                       ("hub:x", "may not contain ':'"), ("", "non-empty")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            register_model(bad)
