"""Mid-epoch checkpoints: a run killed at any step and resumed ends bit-identical to an uninterrupted one."""

import os

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from softdistill.checkpoint import load_checkpoint, save_checkpoint
from softdistill.config import recipe_from_dict
from softdistill.runs import RunStateError
from softdistill.models import registry
from softdistill.runner import run_recipe
from test_stream import write_folder


def dropout_mlp(num_classes, in_channels, image_size):
    """A student with dropout: model-side randomness that a resume must replay from the saved RNG state."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, 16), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(16, num_classes))


@pytest.fixture(autouse=True)
def dropout_model(monkeypatch):
    monkeypatch.setitem(registry.models.entries, "dropout-mlp", dropout_mlp)


def synthetic(folder, **train):
    return recipe_from_dict({"name": "steps", "student": "dropout-mlp", "epochs": 2, "seed": 3,
                             "data": {"name": "synthetic", "val_size": 100, "batch_size": 50,
                                      "augment": {"crop_padding": 1, "hflip": True}},
                             "output_dir": str(folder / "runs"), "train": {"device": "cpu", **train}})


def streamed(folder, root, **train):
    return recipe_from_dict({"name": "steps-stream", "student": "dropout-mlp", "epochs": 2, "seed": 3,
                             "data": {"name": "imagefolder", "root": str(root), "image_size": 8, "val_size": 3,
                                      "batch_size": 4, "eval_batch_size": 4, "loader": "stream", "workers": 1,
                                      "eval_resize": 9, "augment": {"resized_crop": [0.3, 1], "hflip": True}},
                             "output_dir": str(folder / "runs"), "train": {"device": "cpu", **train}})


def same_run(a, b):
    first, second = (load_checkpoint(r.run_dir / "last.pt") for r in (a, b))
    assert all(torch.equal(first["state_dict"][k], second["state_dict"][k]) for k in first["state_dict"])
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in first["history"]] == \
           [{k: v for k, v in r.items() if k not in drop} for r in second["history"]]


# 10 steps an epoch, a checkpoint every 4 steps: killed at step 5 resumes from epoch 1's step 4, at step 13
# from epoch 2's step 2 (global step 12)
@pytest.mark.parametrize("kill_at, epochs_done, step", [(5, 0, 4), (13, 1, 2)])
def test_a_run_killed_mid_epoch_resumes_bit_identically(tmp_path, run_until_step, kill_at, epochs_done, step):
    full = synthetic(tmp_path / "full")
    run_recipe(full, quiet=True)
    cut = synthetic(tmp_path / "cut", checkpoint_every=4)
    run_until_step(cut, kill_at)
    saved = load_checkpoint(cut.run_dir / "last.pt")
    assert saved["step"]["step"] == step and saved["epoch"] == epochs_done
    run_recipe(cut, resume=True, quiet=True)
    same_run(full, cut)


def test_a_streamed_run_killed_mid_epoch_resumes_bit_identically(tmp_path, run_until_step):
    root = write_folder(tmp_path / "folder")
    full = streamed(tmp_path / "full", root)
    run_recipe(full, quiet=True)
    cut = streamed(tmp_path / "cut", root, checkpoint_every=1)
    run_until_step(cut, 4)  # 3 steps an epoch: killed in epoch 2, after its first step
    assert load_checkpoint(cut.run_dir / "last.pt")["step"]["step"] == 1
    run_recipe(cut, resume=True, quiet=True)
    same_run(full, cut)


def test_a_mid_epoch_resume_needs_the_saved_rng_state(tmp_path, run_until_step, monkeypatch):
    """Reseeding at the epoch's start instead of restoring the saved state would change the dropout masks."""
    full = synthetic(tmp_path / "full")
    run_recipe(full, quiet=True)
    cut = synthetic(tmp_path / "cut", checkpoint_every=4)
    run_until_step(cut, 5)
    monkeypatch.setattr("softdistill.engine.trainer.set_rng_state", lambda state: None)
    run_recipe(cut, resume=True, quiet=True)
    a, b = (load_checkpoint(r.run_dir / "last.pt")["state_dict"] for r in (full, cut))
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_a_mid_epoch_checkpoint_resumes_only_with_as_many_processes(tmp_path, run_until_step):
    cut = synthetic(tmp_path, checkpoint_every=4)
    run_until_step(cut, 5)
    path = cut.run_dir / "last.pt"
    payload = load_checkpoint(path)
    payload["step"]["ranks"] *= 2
    save_checkpoint(payload, path)
    with pytest.raises(RunStateError, match="written in the middle of epoch 1 by 2 process"):
        run_recipe(cut, resume=True, quiet=True)


def _ddp_worker(rank, port, folder, checkpoint_every, kill_at, resume):
    """One of two ranks training ``synthetic(folder)``; with ``kill_at``, interrupted as that step begins."""
    from softdistill.runtime import shutdown_distributed
    from softdistill.engine.optim import LRSchedule

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    registry.models.entries["dropout-mlp"] = dropout_mlp
    original = LRSchedule.lr_at

    def lr_at(self, at):
        if at == kill_at:
            raise KeyboardInterrupt
        return original(self, at)

    LRSchedule.lr_at = lr_at
    try:
        run_recipe(synthetic(folder, checkpoint_every=checkpoint_every), resume=resume, quiet=True)
    except KeyboardInterrupt:
        pass
    finally:
        shutdown_distributed()


def test_a_ddp_run_killed_mid_epoch_resumes_bit_identically(tmp_path, free_port):
    def run(folder, checkpoint_every=0, kill_at=-1, resume=False, port=free_port):
        mp.start_processes(_ddp_worker, args=(port, folder, checkpoint_every, kill_at, resume), nprocs=2, join=True,
                           start_method="spawn")

    run(tmp_path / "full")
    run(tmp_path / "cut", checkpoint_every=3, kill_at=14, port=free_port + 1)
    cut = synthetic(tmp_path / "cut")
    saved = load_checkpoint(cut.run_dir / "last.pt")
    assert saved["epoch"] == 1 and saved["step"]["step"] == 2 and len(saved["step"]["ranks"]) == 2
    run(tmp_path / "cut", checkpoint_every=3, resume=True, port=free_port + 2)
    same_run(synthetic(tmp_path / "full"), cut)
