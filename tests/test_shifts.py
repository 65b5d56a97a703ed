"""Out-of-domain shifts: the image transforms, OOD set specs and sets, the canvas, and eval --ood."""

import json

import pytest
import torch

from softdistill.cli import main
from softdistill.config import ConfigError, recipe_from_dict
from softdistill.data import (OODSpec, TensorSet, gaussian_blur, gaussian_noise, ood_set, ood_sets, parse_ood_spec,
                              prepare_data, rotate, translate)
from softdistill.evaluation import evaluate_checkpoint
from softdistill.runner import run_recipe


def dot(h=8, w=8, row=2, col=3):
    """A 1 x 1 x h x w black image with one bright pixel."""
    x = torch.zeros(1, 1, h, w)
    x[0, 0, row, col] = 1.0
    return x


def bright_pixels(x):
    return [tuple(p) for p in (x[0, 0] > 0.5).nonzero().tolist()]


# ---------------------------------------------------------------------------------------- translate

def test_translate_moves_a_pixel_right_and_down_by_exactly_k():
    assert bright_pixels(translate(dot(), 3, 0)) == [(2, 6)]
    assert bright_pixels(translate(dot(), 0, 3)) == [(5, 3)]
    assert bright_pixels(translate(dot(), -3, -2)) == [(0, 0)]
    assert translate(dot(), 3, 0).sum() == 1.0  # exact: no interpolation


def test_translate_is_roll_with_a_zeroed_band():
    x = torch.rand(2, 3, 7, 9)
    k = 3
    right, down = translate(x, k, 0), translate(x, 0, k)
    assert torch.equal(right[..., k:], torch.roll(x, k, dims=3)[..., k:]) and (right[..., :k] == 0).all()
    assert torch.equal(down[..., k:, :], torch.roll(x, k, dims=2)[..., k:, :]) and (down[..., :k, :] == 0).all()
    left_up = translate(x, -2, -1)
    assert torch.equal(left_up[..., :-1, :-2], x[..., 1:, 2:])
    assert (left_up[..., -1, :] == 0).all() and (left_up[..., -2:] == 0).all()


def test_translate_per_sample_shifts_and_shifts_beyond_the_image():
    x = torch.rand(3, 1, 6, 6)
    dx, dy = torch.tensor([0, 1, -2]), torch.tensor([1, 0, 4])
    moved = translate(x, dx, dy)
    for i in range(3):
        assert torch.equal(moved[i:i + 1], translate(x[i:i + 1], int(dx[i]), int(dy[i])))
    assert (translate(x, 6, 0) == 0).all() and (translate(x, 0, -20) == 0).all()
    with pytest.raises(TypeError, match="integer"):
        translate(x, 1.5, 0)


# ------------------------------------------------------------------------------------------- rotate

def test_rotate_zero_and_full_turn_are_the_identity():
    x = torch.rand(2, 3, 10, 10)
    torch.testing.assert_close(rotate(x, 0.0), x)
    torch.testing.assert_close(rotate(x, 360.0), x, atol=1e-4, rtol=0)


def test_rotate_90_turns_counter_clockwise_on_screen():
    # pixel centres of a square image are symmetric about its centre (align_corners=False), so a
    # quarter turn maps them onto each other: (row r, col c) -> (row W-1-c, col r)
    out = rotate(dot(6, 6, row=1, col=4), 90.0)
    assert bright_pixels(out) == [(1, 1)]  # top right -> top left
    assert out[0, 0, 1, 1].item() == pytest.approx(1.0, abs=1e-5)
    x = torch.rand(2, 1, 6, 6)
    torch.testing.assert_close(rotate(x, 90.0), torch.rot90(x, 1, dims=(2, 3)), atol=1e-5, rtol=0)
    per_sample = rotate(x, torch.tensor([90.0, -90.0]))
    torch.testing.assert_close(per_sample[1], torch.rot90(x[1], -1, dims=(1, 2)), atol=1e-5, rtol=0)
    # a non-square image turns in pixel units (no shear): 1.5 px right of and 0.5 px above the
    # centre (1.5, 3.5) of a 4 x 8 image goes to 1.5 px above and 0.5 px left of it
    assert bright_pixels(rotate(dot(4, 8, row=1, col=5), 90.0)) == [(0, 3)]


# ------------------------------------------------------------------------------------ noise and blur

def test_gaussian_noise():
    grey = torch.full((1, 1, 200, 200), 0.5)
    assert torch.equal(gaussian_noise(grey, 0.0, torch.Generator().manual_seed(0)), grey)
    noisy = gaussian_noise(grey, 0.05, torch.Generator().manual_seed(0))
    assert noisy.std().item() == pytest.approx(0.05, rel=0.02)  # 10 sigma from 0 and 1: nothing clipped
    assert torch.equal(noisy, gaussian_noise(grey, 0.05, torch.Generator().manual_seed(0)))
    strong = gaussian_noise(torch.rand(4, 3, 16, 16), 0.5, torch.Generator().manual_seed(1))
    assert strong.min() == 0.0 and strong.max() == 1.0


def test_gaussian_blur():
    constant = torch.full((1, 2, 21, 21), 0.7)
    blurred = gaussian_blur(constant, 1.0)  # radius 3, zero padding
    torch.testing.assert_close(blurred[..., 3:-3, 3:-3], constant[..., 3:-3, 3:-3])
    assert blurred[0, 0, 0, 0] < 0.7  # the black border darkens the corner
    sigma = 2.0
    impulse = gaussian_blur(dot(31, 31, row=15, col=15), sigma)[0, 0]
    assert impulse.sum().item() == pytest.approx(1.0, abs=1e-5)
    rows = impulse.sum(dim=1)
    spread = (rows * (torch.arange(31.0) - 15) ** 2).sum().sqrt().item()
    assert spread == pytest.approx(sigma, rel=0.03)  # truncation at 3 sigma trims the std by ~1.3 %
    assert torch.equal(gaussian_blur(constant, 0.0), constant)


# ---------------------------------------------------------------------------------------- OOD specs

@pytest.mark.parametrize("text, spec, name", [("shift:4", OODSpec("shift", 4.0), "shift4"),
                                              ("rotate:20", OODSpec("rotate", 20.0), "rotate20"),
                                              ("noise:0.2", OODSpec("noise", 0.2), "noise0.2"),
                                              (" blur : 1.0 ", OODSpec("blur", 1.0), "blur1")])
def test_parse_ood_spec(text, spec, name):
    assert parse_ood_spec(text) == spec and spec.name == name


@pytest.mark.parametrize("text, message", [("shift", "form kind:amount, e.g. shift:4, with kind one of shift, rotate, "
                                                     "noise, blur"),
                                           ("shfit:3", "unknown kind 'shfit'; did you mean 'shift'?"),
                                           ("zoom:2", "unknown kind 'zoom' \\(expected the form kind:amount"),
                                           ("noise:lots", "amount 'lots' is not a number"),
                                           ("blur:-1", "finite number >= 0"),
                                           ("shift:1.5", "whole number of pixels")])
def test_parse_ood_spec_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_ood_spec(text)


@pytest.fixture(scope="module")
def test_set():
    return prepare_data("synthetic", val_size=100).test


def test_ood_set_is_seeded_and_keeps_labels(test_set):
    state = torch.get_rng_state()
    shifted = ood_set(test_set, "shift:2", seed=0)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    assert torch.equal(shifted.images, ood_set(test_set, OODSpec("shift", 2), seed=0).images)
    assert not torch.equal(shifted.images, ood_set(test_set, "shift:2", seed=1).images)
    assert not torch.equal(shifted.images, test_set.images)
    assert torch.equal(shifted.labels, test_set.labels) and shifted.images.dtype == torch.uint8
    assert torch.equal(ood_set(test_set, "shift:0").images, test_set.images)


def test_ood_sets_keys_and_duplicates(test_set):
    sets = ood_sets(test_set, ["shift:1", "rotate:15", "noise:0.1", "blur:0.5"], seed=3)
    assert list(sets) == ["shift1", "rotate15", "noise0.1", "blur0.5"]
    assert all(isinstance(s, TensorSet) and len(s) == len(test_set) for s in sets.values())
    assert torch.equal(sets["rotate15"].images, ood_set(test_set, "rotate:15", seed=3).images)
    with pytest.raises(ValueError, match="given more than once: shift4"):
        ood_sets(test_set, ["shift:4", "blur:1", "shift:4.0"])


# ------------------------------------------------------------------------------------------- canvas

def test_canvas_centres_the_images_on_black():
    plain = prepare_data("synthetic", val_size=100)
    big = prepare_data("synthetic", val_size=100, canvas=13)  # 8x8 images: margins 2 (top, left) and 3
    assert big.image_size == 13
    for name in ("train", "val", "test"):
        small, wide = getattr(plain, name).images, getattr(big, name).images
        assert wide.shape == (len(small), 1, 13, 13)
        assert torch.equal(wide[..., 2:10, 2:10], small)
        assert wide.sum() == small.sum()  # zeros everywhere else
    assert big.mean[0] == pytest.approx(plain.mean[0] * 64 / 169)  # statistics of the canvas images
    assert torch.equal(prepare_data("synthetic", val_size=100, canvas=8).test.images, plain.test.images)
    with pytest.raises(ValueError, match="canvas 7 is smaller than the 8x8 images"):
        prepare_data("synthetic", val_size=100, canvas=7)


# -------------------------------------------------------------------------------------- recipe keys

def recipe(tmp_path, **data):
    return recipe_from_dict({"name": "syn", "student": "mlp", "epochs": 2, "output_dir": str(tmp_path / "runs"),
                             "data": {"name": "synthetic", "val_size": 100, "batch_size": 50, **data},
                             "train": {"device": "cpu"}})


def test_recipe_checks_ood_and_canvas(tmp_path):
    assert recipe(tmp_path, ood=["shift:4", "blur:1"], canvas=12).data.ood == ["shift:4", "blur:1"]
    with pytest.raises(ConfigError, match=r"data\.ood: .*unknown kind 'shfit'; did you mean 'shift'\?"):
        recipe(tmp_path, ood=["shfit:3"])
    with pytest.raises(ConfigError, match=r"data\.ood: .*given more than once: noise0.2"):
        recipe(tmp_path, ood=["noise:0.2", "noise:.2"])
    with pytest.raises(ConfigError, match=r"data\.canvas"):
        recipe(tmp_path, canvas=2)


# ----------------------------------------------------------------------------------- eval with --ood

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    r = recipe(tmp_path_factory.mktemp("ood"), canvas=12)  # the run and its evaluation both use the canvas
    summary = run_recipe(r, quiet=True)
    return r.run_dir / "best.pt", summary


def test_evaluate_checkpoint_with_ood(checkpoint):
    path, summary = checkpoint
    result = evaluate_checkpoint(path, device="cpu", ood=["shift:0", "shift:3", "noise:0.3"], ood_seed=1)
    assert result["acc"] == pytest.approx(summary["test_acc_selected"])
    assert list(result["ood"]) == ["shift0", "shift3", "noise0.3"]
    assert result["ood"]["shift0"] == {"acc": result["acc"], "loss": result["loss"], "top5": result["top5"]}
    assert result["ood"]["noise0.3"] == evaluate_checkpoint(path, device="cpu", ood=["noise:0.3"], ood_seed=1)["ood"][
        "noise0.3"]
    assert evaluate_checkpoint(path, device="cpu")["ood"] == {}


def test_eval_command_prints_ood_lines(checkpoint, capsys):
    path, _ = checkpoint
    assert main(["eval", str(path), "--device", "cpu", "--ood", "shift:0", "--ood", "blur:1", "--ood-seed", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    in_domain = lines[0].split("accuracy ")[1].split("%")[0]
    assert lines[1].startswith(f"  shift0: accuracy {in_domain}% (in-domain {in_domain}%)")
    assert lines[2].startswith("  blur1: accuracy ") and len(lines) == 3
    assert main(["eval", str(path), "--device", "cpu", "--ood", "rotate:30", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["ood"]["rotate30"]) == {"acc", "loss", "top5"}
    assert main(["eval", str(path), "--ood", "shfit:3"]) == 2
    assert "did you mean 'shift'?" in capsys.readouterr().err
