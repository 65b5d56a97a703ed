"""The convolutional VAE of HARD: its loss, shapes, training on digits, run folders, checkpoints, CLI."""

import json
import math

import pytest
import torch

from softdistill.augment import ConvVAE, load_vae, vae_loss
from softdistill.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from softdistill.cli import main
from softdistill.config import ConfigError
from softdistill.data.prepare import prepare_data
from softdistill.runs import RunStateError
from softdistill.experiments import packaged_recipes
from softdistill.config import load_recipe
from softdistill.runner import product_of, run_recipe
from softdistill.soft_labels import Dependency

TINY = packaged_recipes("hard") / "vae-tiny.yaml"


@pytest.fixture(scope="module", autouse=True)
def _keep_thread_count():
    threads = torch.get_num_threads()  # the tiny recipe sets train.threads = 1 for the whole process
    yield
    torch.set_num_threads(threads)


def tiny_recipe(tmp_path, *overrides):
    return load_recipe(TINY, [f"output_dir={tmp_path / 'runs'}", "train.device=cpu", *overrides])


def test_vae_loss_equals_hand_computation():
    logits = torch.tensor([[[[0.5, -1.0]]], [[[2.0, 0.0]]]])  # 2 images of 1 x 1 x 2 pixels
    x = torch.tensor([[[[0.2, 1.0]]], [[[0.0, 0.7]]]])
    mu = torch.tensor([[0.5, -1.0], [0.0, 2.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)], [math.log(0.25), 0.0]])

    def bce(t, v):
        s = 1 / (1 + math.exp(-t))
        return -(v * math.log(s) + (1 - v) * math.log(1 - s))

    def kl(m, lv):
        return 0.5 * (m * m + math.exp(lv) - 1 - lv)

    recon = ((bce(0.5, 0.2) + bce(-1.0, 1.0)) + (bce(2.0, 0.0) + bce(0.0, 0.7))) / 2
    kl_mean = ((kl(0.5, 0.0) + kl(-1.0, math.log(4.0))) + (kl(0.0, math.log(0.25)) + kl(2.0, 0.0))) / 2
    total, r, k = vae_loss(logits, x, mu, logvar, beta=0.5)
    assert r.item() == pytest.approx(recon, rel=1e-6)
    assert k.item() == pytest.approx(kl_mean, rel=1e-6)
    assert total.item() == pytest.approx(recon + 0.5 * kl_mean, rel=1e-6)


def test_kl_vanishes_at_the_prior():
    logits, x = torch.randn(3, 1, 4, 4), torch.rand(3, 1, 4, 4)
    total, recon, kl = vae_loss(logits, x, torch.zeros(3, 5), torch.zeros(3, 5), beta=10.0)
    assert kl.item() == 0.0 and total.item() == recon.item()


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [8, 28, 32])
def test_decoder_returns_the_input_shape(size, channels):
    model = ConvVAE(channels, size, latent_dim=6, width=4)
    x = torch.rand(2, channels, size, size)
    logits, mu, logvar = model(x)
    assert logits.shape == x.shape and mu.shape == logvar.shape == (2, 6)
    assert model.decode(mu).shape == x.shape
    assert model.config == {"in_channels": channels, "image_size": size, "latent_dim": 6, "width": 4}


def test_image_size_must_be_divisible_by_4():
    with pytest.raises(ValueError, match="divisible by 4"):
        ConvVAE(1, 30)
    with pytest.raises(ValueError, match="encodes N x 1 x 8 x 8 images"):
        ConvVAE(1, 8).encode(torch.rand(2, 1, 12, 12))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    recipe = tiny_recipe(tmp_path_factory.mktemp("vae"))
    return recipe, run_recipe(recipe, quiet=True)


def test_tiny_recipe_learns_to_reconstruct_digits(tiny_run):
    recipe, summary = tiny_run
    run = recipe.run_dir
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "vae.pt", "summary.json", "reconstructions.png"):
        assert (run / name).is_file(), name
    assert (run / "reconstructions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, recipe.epochs + 1))
    assert records[-1]["train/loss"] < records[0]["train/loss"]
    assert summary["test_nelbo_last"] == pytest.approx(records[-1]["test/recon"] + records[-1]["test/kl"])
    best = min(records, key=lambda r: (r["val/nelbo"], r["epoch"]))  # "best" is the lowest validation negative ELBO
    assert summary["selected_epoch"] == best["epoch"] and load_checkpoint(run / "best.pt")["epoch"] == best["epoch"]
    assert json.loads((run / "summary.json").read_text()) == summary

    model, info = load_vae(run / "vae.pt")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    data = prepare_data("digits", val_size=200)
    assert info.data.model_dump(exclude_none=True) == {"name": "digits", "in_channels": 1, "image_size": 8}
    assert info.normalization.model_dump() == {"mean": list(data.mean), "std": list(data.std)}
    x = data.test.images.float() / 255
    with torch.no_grad():
        vae_error = (model.decode(model.encode(x)[0]) - x).square().mean()
    mean_image_error = (data.train.images.float().div(255).mean(0) - x).square().mean()
    # Observed over seeds 0-3: the mean image's error is 2.6-2.7 times the VAE's (0.073 vs 0.027-0.028).
    assert mean_image_error > 2.0 * vae_error


def test_resume_equals_uninterrupted_run(tmp_path, run_until_interrupted):
    changes = ["epochs=2", "data.augment.crop_padding=1"]
    full = tiny_recipe(tmp_path / "full", *changes)
    run_recipe(full, quiet=True)

    cut = tiny_recipe(tmp_path / "cut", *changes)
    run_until_interrupted(cut, 2)
    assert load_checkpoint(cut.run_dir / "last.pt")["epoch"] == 1

    with pytest.raises(RunStateError, match="holds an unfinished run of this recipe: continue it with --resume"):
        run_recipe(cut, quiet=True)
    summary = run_recipe(cut, resume=True, quiet=True)
    a, b = load_checkpoint(full.run_dir / "vae.pt")["state_dict"], load_checkpoint(cut.run_dir / "vae.pt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert summary["test_nelbo_last"] == json.loads((full.run_dir / "summary.json").read_text())["test_nelbo_last"]


def test_run_folder_rules(tmp_path):
    recipe = tiny_recipe(tmp_path, "epochs=1")
    with pytest.raises(RunStateError, match="nothing to resume: no checkpoint"):
        run_recipe(recipe, resume=True, quiet=True)
    run_recipe(recipe, quiet=True)
    with pytest.raises(RunStateError, match=r"holds a finished run of this recipe \(summary.json\): nothing to train"):
        run_recipe(recipe, quiet=True)
    assert run_recipe(recipe, resume=True, quiet=True) == json.loads((recipe.run_dir / "summary.json").read_text())
    with pytest.raises(RunStateError, match="beta: 1.0 -> 0.5"):
        run_recipe(tiny_recipe(tmp_path, "epochs=1", "beta=0.5"), resume=True, quiet=True)


def test_the_resolver_trains_a_vae_recipe_once_and_refuses_a_stale_run(tmp_path):
    """A recipe that names a VAE recipe gets its vae.pt: trained once, reused, refused when the VAE recipe changed."""
    requester = tiny_recipe(tmp_path, "epochs=1", f"output_dir={tmp_path / 'runs'}")
    needs = Dependency("method.vae.path", str(TINY), "vae")
    path = product_of(requester, needs, quiet=True)
    assert path == tmp_path / "runs" / "digits-vae" / "seed0" / "vae.pt" and path.is_file()
    stamp = path.stat().st_mtime_ns
    assert product_of(requester, needs, quiet=True) == path and path.stat().st_mtime_ns == stamp
    edited = tmp_path / "edited.yaml"
    edited.write_text(TINY.read_text().replace("width: ", "width: 1"))
    with pytest.raises(RunStateError, match="different version of VAE recipe 'digits-vae'"):
        product_of(requester, Dependency("method.vae.path", str(edited), "vae"), quiet=True)
    assert product_of(requester, Dependency("method.vae.path", str(path), "vae")) == path
    with pytest.raises(ConfigError, match=r"method.vae.path: no file .*missing.pt \(paths in a recipe are relative"):
        product_of(requester, Dependency("method.vae.path", str(tmp_path / "missing.pt"), "vae"))


def test_load_vae_rejects_classifier_and_corrupt_files(tmp_path):
    classifier = tmp_path / "best.pt"
    meta = {"normalization": {"mean": [0.0], "std": [1.0]}, "data": {"name": "digits"}, "config": {}}
    save_checkpoint({"model": {"name": "resnet8", "num_classes": 10, "in_channels": 1, "image_size": 28},
                     "state_dict": {}, **meta}, classifier)
    with pytest.raises(CheckpointError, match=r"classifier checkpoint \(model 'resnet8'\), not a VAE; expected"):
        load_vae(classifier)
    corrupt = tmp_path / "vae.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="truncated, corrupt or not a PyTorch file"):
        load_vae(corrupt)
    mismatched = tmp_path / "mismatched.pt"
    save_checkpoint({"kind": "vae", "vae": {"in_channels": 1, "image_size": 8, "latent_dim": 4, "width": 4},
                     "state_dict": ConvVAE(1, 8, latent_dim=4, width=8).state_dict(), **meta}, mismatched)
    with pytest.raises(CheckpointError, match=r"not a usable softdistill checkpoint: normalization: required key"):
        save_checkpoint({"kind": "vae", "vae": {}, "state_dict": {}}, corrupt)
        load_vae(corrupt)
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_vae(mismatched)


def test_cli_train_vae_and_its_errors(tmp_path, capsys):
    args = ["train-vae", str(TINY), "-o", f"output_dir={tmp_path}", "-o", "train.device=cpu", "-o", "epochs=2",
            "--seed", "3", "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "done: test recon" in printed and "negative ELBO" in printed
    assert str(tmp_path / "digits-vae" / "seed3" / "vae.pt") in printed
    assert main(args) == 2
    assert "holds a finished run of this recipe (summary.json): nothing to train" in capsys.readouterr().err
    assert main(["train-vae", str(TINY), "-o", "latent_dims=4"]) == 2
    err = capsys.readouterr().err
    assert "latent_dims: unknown key; did you mean 'latent_dim'?" in err
    assert main(["train", str(TINY)]) == 2  # the wrong command for a VAE recipe says which one is right
    assert f"is a VAE recipe: run it with 'softdistill train-vae {TINY}'" in capsys.readouterr().err


def test_recipe_errors():
    with pytest.raises(ConfigError, match="data.batch_sise: unknown key; did you mean 'batch_size'"):
        load_recipe(TINY, ["data.batch_sise=8"])
    with pytest.raises(ConfigError, match="beta: Input should be greater than or equal to 0"):
        load_recipe(TINY, ["beta=-1"])
    with pytest.raises(ConfigError, match="train.amp and train.keep_epochs are not used"):
        load_recipe(TINY, ["train.amp=bf16"])
