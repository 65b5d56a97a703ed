"""HARD (Nix, Burg & Sinz, 2023): augmentors, the game between augmentor and student, resume, outputs."""

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
import yaml
from torch.nn.parallel import DistributedDataParallel

from softdistill.augment.learned import AffineAugmentor, VAEAugmentor, affine_matrices
from softdistill.augment.vae import ConvVAE
from softdistill.checkpoint import load_checkpoint, save_checkpoint
from softdistill.config import ConfigError, recipe_from_dict
from softdistill.data.shifts import rotate, translate
from softdistill.runtime import shutdown_distributed
from softdistill.losses import kd_loss, teacher_student_divergence
from softdistill.methods.hard import GRID_FILE, HardKD
from softdistill.models import build_model
from softdistill.runner import run_recipe
from softdistill.soft_labels import CachedTeacher, Dependency, FrozenTeacher
from softdistill.types import Batch, InputSpec, MethodContext

MEAN, STD = (0.3,), (0.4,)


def images(n=4, size=12, channels=1, seed=0):
    """Normalised images whose pixels lie in [0, 1]."""
    pixels = torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))
    return (pixels - MEAN[0]) / STD[0], pixels


def affine(**bounds):
    torch.manual_seed(0)
    return AffineAugmentor(1, MEAN, STD, **bounds)


def force_units(augmentor, units):
    """Make the augmentor's head output ``units`` (before tanh: atanh) for every sample."""
    last = augmentor.head[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.atanh(torch.as_tensor(units, dtype=torch.float32).clamp(-1 + 1e-7, 1 - 1e-7)))


# ---------------------------------------------------------------- the affine augmentor
def test_affine_augmentor_starts_as_the_identity():
    x, _ = images(size=12)
    aug = affine()
    torch.testing.assert_close(aug(x), x, atol=1e-5, rtol=0)
    assert aug.magnitude().item() == 0.0
    rect = torch.randn(3, 2, 10, 14)
    torch.testing.assert_close(AffineAugmentor(2, (0.1, 0.2), (1.0, 2.0))(rect), rect, atol=1e-5, rtol=0)


def test_affine_augmentor_respects_its_bounds_at_extreme_outputs():
    aug = affine(translate=3.0, rotate=20.0, scale=0.25, shear=0.3)
    x, _ = images(n=16)
    with torch.no_grad():
        for layer in aug.head:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.normal_(0, 1e3)
                layer.bias.normal_(0, 1e3)
    aug(x)
    p = aug.last_parameters
    assert p["translate"].abs().max() <= 3.0 and p["rotate"].abs().max() <= 20.0
    assert p["scale"].min() >= 1 / 1.25 - 1e-6 and p["scale"].max() <= 1.25 + 1e-6 and p["shear"].abs().max() <= 0.3
    force_units(aug, [1.0, -1.0, 1.0, -1.0, 1.0])  # every output at its bound
    aug(x)
    p = aug.last_parameters
    torch.testing.assert_close(p["translate"][0], torch.tensor([3.0, -3.0]))
    assert p["rotate"][0].item() == pytest.approx(20.0) and p["scale"][0].item() == pytest.approx(1 / 1.25)
    assert p["shear"][0].item() == pytest.approx(0.3)
    zero_bounds = affine(translate=0.0, rotate=0.0, scale=0.0, shear=0.0)
    force_units(zero_bounds, [1.0] * 5)
    torch.testing.assert_close(zero_bounds(x), x, atol=1e-5, rtol=0)  # a zero bound switches a component off


@pytest.mark.parametrize("dx,dy", [(2, 0), (0, 3), (-1, 2)])
def test_affine_translation_moves_content_by_whole_pixels_with_black_borders(dx, dy):
    aug = affine(translate=4.0, rotate=0.0, scale=0.0, shear=0.0)
    force_units(aug, [dx / 4, dy / 4, 0, 0, 0])
    x, pixels = images()
    moved = aug.to_unit_range(aug(x))
    torch.testing.assert_close(moved, translate(pixels, dx, dy), atol=1e-5, rtol=0)


def test_affine_rotation_by_90_degrees_is_rot90_counter_clockwise():
    aug = affine(translate=0.0, rotate=90.0, scale=0.0, shear=0.0)
    force_units(aug, [0, 0, 1.0, 0, 0])
    x, pixels = images(size=12)
    turned = aug.to_unit_range(aug(x))
    torch.testing.assert_close(turned, torch.rot90(pixels, 1, dims=(2, 3)), atol=1e-4, rtol=0)
    torch.testing.assert_close(turned, rotate(pixels, 90.0), atol=1e-4, rtol=0)


def test_strength_scales_the_transform_per_sample():
    aug = affine(translate=4.0, rotate=0.0, scale=0.0, shear=0.0)
    force_units(aug, [1.0, 0.0, 0, 0, 0])
    x, pixels = images(n=3)
    moved = aug.to_unit_range(aug(x, strength=torch.tensor([0.0, 0.5, 1.0])))
    torch.testing.assert_close(aug.last_parameters["translate"][:, 0], torch.tensor([0.0, 2.0, 4.0]))
    for i, dx in enumerate((0, 2, 4)):
        torch.testing.assert_close(moved[i:i + 1], translate(pixels[i:i + 1], dx, 0), atol=1e-5, rtol=0)


def test_affine_matrices_compose_scale_about_the_centre():
    theta = affine_matrices(torch.zeros(1, 2), torch.zeros(1), torch.tensor([2.0]), torch.zeros(1), 8, 8)
    torch.testing.assert_close(theta, torch.tensor([[[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]]))  # samples half as far out


# ---------------------------------------------------------------- the VAE augmentor
def vae_augmentor(output="residual", bound=0.5):
    torch.manual_seed(0)
    vae = ConvVAE(1, 12, latent_dim=4, width=4)
    return VAEAugmentor(vae, MEAN, STD, bound=bound, output=output, noise_dim=3, width=8)


def test_vae_augmentor_residual_is_the_identity_at_zero_and_bounded():
    aug = vae_augmentor()
    x, _ = images()
    torch.testing.assert_close(aug(x), x, atol=1e-5, rtol=0)
    with torch.no_grad():
        aug.perturbation[-1].bias.fill_(1e4)
    out = aug.to_unit_range(aug(x))
    assert out.min() >= 0 and out.max() <= 1
    assert aug.statistics()["aug_latent_shift"].item() == pytest.approx(0.5 * 2.0, rel=1e-5)  # |(0.5,)*4| = 1
    decoded = vae_augmentor(output="decoded")
    mu, _ = decoded.vae.encode(decoded.to_unit_range(x))
    torch.testing.assert_close(decoded.to_unit_range(decoded(x)), decoded.vae.decode(mu), atol=1e-5, rtol=0)


def test_vae_augmentor_trains_its_perturbation_never_the_vae():
    aug = vae_augmentor()
    x, _ = images()
    (aug(x) ** 2).sum().backward()
    assert all(p.grad is None for p in aug.vae.parameters())
    assert aug.perturbation[-1].weight.grad is not None and aug.perturbation[-1].weight.grad.abs().sum() > 0
    assert set(aug.learned_state()) == {k for k in aug.state_dict() if k.startswith("perturbation.")}
    aug.train()
    assert not aug.vae.training


# ---------------------------------------------------------------- the game
def divergence_test_parts(student_name="cnn-small", **config):
    torch.manual_seed(0)
    teacher = FrozenTeacher(build_model("cnn-small", 10, 1, 12))
    student = build_model(student_name, 10, 1, 12)
    cfg = HardKD.Config(**config)
    context = MethodContext(InputSpec(1, 12, MEAN, STD))
    return HardKD(cfg, student, 10, teacher, context), teacher, student


def batch(n=16):
    x, _ = images(n=n)
    return Batch(x=x, y=torch.arange(n) % 10, sample_id=torch.arange(n), view=torch.zeros(n, dtype=torch.long))


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_augmentor_step_changes_only_the_augmentor():
    method, teacher, student = divergence_test_parts(augmentor_lr=0.05)
    method.train()
    teacher_before, student_before, aug_before = snapshot(teacher), snapshot(student), snapshot(method.augmentor)
    b = batch()
    method._augmentor_steps(b.x, b.y)
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())
    assert all(torch.equal(student_before[k], v) for k, v in student.state_dict().items())  # BN statistics too
    assert all(p.grad is None for p in (*teacher.parameters(), *student.parameters()))
    assert any(not torch.equal(aug_before[k], v) for k, v in method.augmentor.state_dict().items())
    assert student.training  # its mode is restored


def test_student_step_changes_only_the_student():
    method, teacher, student = divergence_test_parts()
    method.start_epoch(1, 2)
    method.train()
    out = method(batch())
    assert set(out.losses) == {"ce", "kd", "kd_aug"}
    aug_after_its_step = snapshot(method.augmentor)
    sum(out.losses.values()).backward()
    assert all(p.grad is None for p in method.augmentor.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    trained = {id(p) for p in method.trainable_parameters()}
    assert trained == {id(p) for p in student.parameters()}
    assert all(torch.equal(aug_after_its_step[k], v) for k, v in method.augmentor.state_dict().items())


def test_kd_terms_weigh_clean_and_augmented_samples_by_their_count():
    method, teacher, student = divergence_test_parts(alpha=0.8, augmented_share=0.25)
    method.start_epoch(1, 2)
    method.eval()
    b = batch(16)
    torch.manual_seed(3)
    out = method(b)
    with torch.no_grad():
        clean = kd_loss(student(b.x), teacher(b), 4.0)
    torch.testing.assert_close(out.losses["kd"], 0.8 * 16 / 20 * clean)
    torch.testing.assert_close(out.losses["ce"], 0.2 * F.cross_entropy(student(b.x), b.y))
    assert out.metrics["aug_teacher_acc"].numel() == 1 and "adv_divergence" in out.metrics


def test_an_augmentor_step_ascends_the_disagreement():
    """First order: a small step along the objective's gradient raises the teacher-student divergence
    (teacher CE off), for the same batch and the same noise."""
    method, teacher, student = divergence_test_parts(student_name="mlp", augmentor_lr=1e-4, teacher_ce_weight=0.0)
    b = batch(32)
    with torch.no_grad():  # leave the identity, so that every layer of the augmentor has a gradient
        method.augmentor.head[-1].weight.normal_(0, 0.1)

    def disagreement():
        torch.manual_seed(5)  # the noise the augmentor step draws
        with torch.no_grad():
            x = method.augmentor(b.x)
            return teacher_student_divergence(student(x), teacher(x), 4.0).item()

    before = disagreement()
    torch.manual_seed(5)
    first = method._augmentor_steps(b.x, b.y)
    assert first["adv_divergence"].item() == pytest.approx(before, rel=1e-5)
    assert disagreement() > before


def test_warmup_epochs_train_on_clean_samples_only():
    method, _, _ = divergence_test_parts(warmup_epochs=1)
    method.start_epoch(1, 3)
    assert set(method(batch()).losses) == {"ce", "kd"}
    method.start_epoch(2, 3)
    assert "kd_aug" in method(batch()).losses
    from softdistill.types import RecipeFacts  # a run of one epoch is refused when its recipe loads

    assert "leaves no epoch for the augmentor" in method.config.problems(RecipeFacts(epochs=1))[0]


def test_divergence_flows_into_both_arguments_and_equals_kd_loss():
    s = torch.randn(5, 4, requires_grad=True)
    t = torch.randn(5, 4, requires_grad=True)
    value = teacher_student_divergence(s, t, 3.0)
    torch.testing.assert_close(value, kd_loss(s, t, 3.0))
    value.backward()
    assert t.grad is not None and t.grad.abs().sum() > 0


def test_hard_refuses_a_cached_teacher_and_a_vae_without_path():
    """Compatibility is decided when the recipe loads: HARD needs the teacher online, differentiable in its input."""
    raw = {"name": "x", "student": "mlp", "epochs": 1, "method": {"name": "hard"}}
    for source in ({"source": "cache", "recipe": "t.yaml"}, {"source": "weak", "kind": "noise"}):
        name = source["source"]
        message = (f"method 'hard' needs gradients of the soft labels with respect to the input, which "
                   f"soft_labels.source '{name}' cannot serve; use source: teacher")
        with pytest.raises(ConfigError, match=message):
            recipe_from_dict({**raw, "soft_labels": source})
    assert recipe_from_dict({**raw, "soft_labels": {"source": "teacher", "recipe": "t.yaml"}}).method.name == "hard"
    assert HardKD.uses_soft_labels and not HardKD.mixed_views
    assert CachedTeacher.serves.isdisjoint(HardKD.source_needs) and HardKD.source_needs <= FrozenTeacher.serves
    with pytest.raises(ValueError, match="needs vae.path"):
        HardKD.Config(augmentor="vae")


def test_hard_refuses_a_vae_trained_on_other_images(tmp_path):
    vae = ConvVAE(1, 8, latent_dim=4, width=4)
    save_checkpoint({"kind": "vae", "vae": vae.config, "state_dict": vae.state_dict(),
                     "data": {"name": "digits", "in_channels": 1, "image_size": 8},
                     "normalization": {"mean": [0.0], "std": [1.0]}, "config": {}}, tmp_path / "vae.pt")
    asked = []

    def resolve(dependency):
        asked.append(dependency)
        return tmp_path / dependency.path

    context = MethodContext(InputSpec(1, 12, MEAN, STD), resolve_artifact=resolve)
    config = HardKD.Config(augmentor="vae", vae={"path": "vae.pt"})
    teacher = FrozenTeacher(build_model("cnn-small", 10, 1, 12))
    with pytest.raises(ValueError, match="trained on 1-channel 8x8 images, the data has 1-channel 12x12"):
        HardKD(config, build_model("mlp", 10, 1, 12), 10, teacher, context)
    assert asked == [Dependency("method.vae.path", "vae.pt", "vae")]


# ---------------------------------------------------------------- through recipes
def write_teacher(tmp_path):
    teacher = {"name": "t", "student": "cnn-small", "epochs": 1, "data": {"name": "synthetic", "val_size": 100,
               "batch_size": 50}, "optim": {"name": "sgd", "lr": 0.05}, "output_dir": str(tmp_path / "runs"),
               "train": {"device": "cpu"}}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(teacher))


def hard_recipe(tmp_path, name="h", **method):
    raw = {"name": name, "student": "mlp", "epochs": 3, "seed": 1, "soft_labels": {"source": "teacher", "recipe": "t.yaml"},
           "data": {"name": "synthetic", "val_size": 100, "batch_size": 50, "ood": ["shift:0", "rotate:30"]},
           "method": {"name": "hard", "warmup_epochs": 1, "visualize_points": 2, **method},
           "optim": {"name": "sgd", "lr": 0.05}, "output_dir": str(tmp_path / "runs"), "train": {"device": "cpu"}}
    return recipe_from_dict(raw, recipe_file=str(tmp_path / f"{name}.yaml"))


def test_hard_run_resumes_exactly_and_writes_the_grid(tmp_path, run_until_interrupted):
    write_teacher(tmp_path)
    full = hard_recipe(tmp_path, "full")
    summary = run_recipe(full, quiet=True)
    assert summary["final_acc"]["shift0"] == summary["test_acc_last"]  # a zero shift is the test set itself
    assert set(summary["final_acc"]) == {"shift0", "rotate30"}
    assert (full.run_dir / "report" / GRID_FILE).stat().st_size > 1000
    records = [json.loads(line) for line in (full.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "train/kd_aug" not in records[0] and "train/kd_aug" in records[1] and "train/aug_shift_px" in records[2]
    assert [r["epoch"] for r in records if "final/rotate30/acc" in r] == [3]  # final sets: after the last epoch only

    cut = hard_recipe(tmp_path, "cut")
    run_until_interrupted(cut, epoch=3)
    run_recipe(cut, resume=True, quiet=True)
    a, b = load_checkpoint(full.run_dir / "last.pt"), load_checkpoint(cut.run_dir / "last.pt")
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for key, value in a["method_state"]["augmentor"].items():
        assert torch.equal(value, b["method_state"]["augmentor"][key]), key
    assert [s["epoch"] for s in b["method_state"]["snapshots"]] == [2, 3]
    # the grid's labels: the true class of each sample, the teacher's and the student's prediction at each epoch
    labels, snapshots = a["method_state"]["visual_labels"], a["method_state"]["snapshots"]
    assert labels.shape == (len(a["method_state"]["visual_clean"]),) and labels.dtype == torch.long
    assert all(s["teacher"].shape == s["student"].shape == labels.shape for s in snapshots)
    assert torch.equal(labels, b["method_state"]["visual_labels"])


def test_hard_under_bf16_autocast_follows_the_float32_run(tmp_path):
    write_teacher(tmp_path)
    fp32 = hard_recipe(tmp_path, "fp32")
    bf16 = hard_recipe(tmp_path, "bf16")
    bf16.train.amp = "bf16"
    for recipe in (fp32, bf16):
        run_recipe(recipe, quiet=True)
    losses = {r.name: [json.loads(line)["train/loss"] for line in (r.run_dir / "metrics.jsonl").read_text().splitlines()]
              for r in (fp32, bf16)}
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.02)  # the same game, at bf16 precision
    state = load_checkpoint(bf16.run_dir / "last.pt")["method_state"]["augmentor"]
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())


def test_hard_recipe_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'translate'"):
        recipe_from_dict({"name": "x", "student": "mlp", "epochs": 1, "soft_labels": {"source": "teacher", "recipe": "t.yaml"},
                          "method": {"name": "hard", "affine": {"translat": 3}}})


# ---------------------------------------------------------------- several processes
def _ddp_hard_worker(rank, port, tmp):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=2)
        method, _, _ = divergence_test_parts(augmentor_lr=0.05)  # the same initial augmentor on both ranks
        method.wrap(DistributedDataParallel)  # as the trainer does: student and augmentor, DDP averages gradients
        assert isinstance(method.augmentor, DistributedDataParallel)
        assert not isinstance(method.plain_augmentor, DistributedDataParallel)
        start = torch.nn.utils.parameters_to_vector(method.plain_augmentor.parameters()).detach().clone()
        x, _ = images(n=8, seed=10 + rank)  # each rank its own samples
        for _ in range(3):
            method._augmentor_steps(x, torch.arange(8))
        mine = torch.nn.utils.parameters_to_vector(method.plain_augmentor.parameters()).detach()
        both = [torch.zeros_like(mine) for _ in range(2)]
        dist.all_gather(both, mine)
        assert torch.equal(both[0], both[1]), "the ranks' augmentors drifted apart"
        assert not torch.equal(mine, start)
        run_recipe(hard_recipe(tmp, "ddp"), quiet=True)  # the whole game under DDP
    finally:
        shutdown_distributed()


def test_two_processes_keep_one_augmentor_and_run_the_game(tmp_path, free_port):
    write_teacher(tmp_path)
    run_recipe(hard_recipe(tmp_path, "single"), quiet=True)  # also trains the teacher, before the ranks need it
    mp.start_processes(_ddp_hard_worker, args=(free_port, tmp_path), nprocs=2, join=True, start_method="spawn")
    summary = json.loads((tmp_path / "runs" / "ddp" / "seed1" / "summary.json").read_text())
    assert summary["finished"] and set(summary["final_acc"]) == {"shift0", "rotate30"}
    assert (tmp_path / "runs" / "ddp" / "seed1" / "report" / GRID_FILE).is_file()
