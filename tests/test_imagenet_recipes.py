"""The shipped ImageNet recipes run end to end, shrunk by overrides, on a fake ImageNet folder and its shards;
the ImageNet ResNets are torchvision's architecture."""

import json

import numpy as np
import pytest
import torch

from softdistill.config import load_recipe
from softdistill.data.shards import ShardLimit, pack_imagefolder
from softdistill.experiments import packaged_recipes
from softdistill.models import build_model, count_parameters
from softdistill.models import resnet_imagenet
from softdistill.runner import run_recipe

Image = pytest.importorskip("PIL.Image")

# what makes an ImageNet recipe a test: one epoch of 16-pixel crops in small batches, in this process
TINY = ["epochs=1", "data.image_size=16", "data.eval_resize=18", "data.batch_size=8", "data.eval_batch_size=16",
        "data.workers=0", "train.device=cpu", "train.checkpoint_every=2"]


def fake_imagenet(root, classes=10, train=3, val=1):
    """JPEGs of varied sizes in ImageNet's layout: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for k in range(classes):
            folder = root / split / f"n{k:08d}"
            folder.mkdir(parents=True)
            for i in range(count):
                h, w = 20 + 3 * i, 24 + 2 * k
                pixels = (rng.integers(0, 100, (h, w, 3)) + 15 * k).clip(0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"n{k:08d}_{i}.JPEG", quality=90)
    return root


def run(name, tmp_path, root, *overrides):
    recipe = load_recipe(packaged_recipes("imagenet") / name,
                         TINY + [f"data.root={root}", f"output_dir={tmp_path / 'runs'}", *overrides])
    summary = run_recipe(recipe, quiet=True)
    return recipe, summary


def test_the_imagenet_recipes_run_on_a_fake_imagenet_folder_and_its_shards(tmp_path):
    root = fake_imagenet(tmp_path / "imagenet")
    teacher, summary = run("resnet34-teacher.yaml", tmp_path, root)
    assert {"test_acc_last", "test_top5"} <= set(summary)  # 10 classes: top-5 is reported
    best = teacher.run_dir / "best.pt"
    _, wsl = run("wsl-resnet34-resnet18.yaml", tmp_path, root, "soft_labels.recipe=null",
                 f"soft_labels.checkpoint={best}")
    assert 0 <= wsl["test_top5"] <= 100
    baseline, _ = run("resnet18-baseline.yaml", tmp_path, root)
    run("tfkd-self-resnet18.yaml", tmp_path, root, "soft_labels.recipe=null",
        f"soft_labels.checkpoint={baseline.run_dir / 'last.pt'}")
    run("tfkd-reg-resnet18.yaml", tmp_path, root)
    shards = tmp_path / "shards"
    pack_imagefolder(root, shards, ShardLimit(images=7), quiet=True)
    on_shards, _ = run("resnet18-baseline-shards.yaml", tmp_path, shards)
    # the same samples, pixels and views: the run on shards trains the weights of the run on the folder
    a = torch.load(baseline.run_dir / "last.pt", weights_only=False)["state_dict"]
    b = torch.load(on_shards.run_dir / "last.pt", weights_only=False)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    metrics = [json.loads(line) for line in (on_shards.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("test/top5" in m for m in metrics)


def test_our_imagenet_resnets_have_torchvisions_size_and_run_without_it(monkeypatch):
    monkeypatch.setattr(resnet_imagenet, "torchvision_installed", lambda: False)
    # torchvision's published parameter counts of resnet18 and resnet34 (1000 classes)
    assert count_parameters(build_model("resnet18-imagenet", 1000, 3, 224)) == 11_689_512
    assert count_parameters(build_model("resnet34-imagenet", 1000, 3, 224)) == 21_797_672
    model = build_model("resnet18-imagenet", 7, 1, 64)
    assert isinstance(model, resnet_imagenet.ImageNetResNet) and model(torch.zeros(2, 1, 64, 64)).shape == (2, 7)


def test_with_torchvision_the_builder_gives_its_resnet_and_ours_is_the_same_network():
    models = pytest.importorskip("torchvision.models")
    for depth in (18, 34):
        built = build_model(f"resnet{depth}-imagenet", 10, 3, 64)
        assert isinstance(built, models.ResNet)
        torch.manual_seed(0)
        theirs = getattr(models, f"resnet{depth}")(weights=None, num_classes=10).eval()
        torch.manual_seed(0)
        ours = resnet_imagenet.ImageNetResNet(resnet_imagenet.LAYOUTS[depth], 10).eval()
        a, b = theirs.state_dict(), ours.state_dict()
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)  # names, shapes, initial weights
        x = torch.randn(2, 3, 64, 64)
        assert torch.equal(theirs(x), ours(x))
