"""Pinned loss curves (torchtune's habit): every registered method's loss terms and diagnostics over
the first steps of a tiny seeded run, stored in ``tests/pinned_losses.json``.

A refactor that moves any method's numbers fails here.  The recipe of each method is derived from
what the method declares (soft labels from an online teacher when it learns from them, mixed views
when it learns from mixed ones, crop-and-flip views otherwise, two of them per step when it learns from
two), so a new method is picked up
without being listed; a method without pinned values fails with the command that pins them:

    SOFTDISTILL_PIN=1 python -m pytest tests/test_pinned_losses.py

(run once, on an unchanged tree, then review and commit the JSON).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from softdistill.config import recipe_from_dict
from softdistill.methods import method_class, method_names
from softdistill.runner import run_recipe

PINNED = Path(__file__).with_name("pinned_losses.json")
PIN = os.environ.get("SOFTDISTILL_PIN") == "1"
# Variants worth pinning beyond a method's defaults: its other named modes.
VARIANTS: dict[str, dict[str, dict]] = {
    "ida": {"kd-i-replace": {"correction": "replace"}, "kd-i-add": {"correction": "add"},
            "kd-p": {"order_penalty": 2.0}},
    "tfkd-reg": {"reference": {"mode": "reference", "multiplier": 50.0}},
    "ls": {"others": {"convention": "others"}},
    "wsl": {"label-free": {"label_free": True}},
    "soft-label": {"soft-ce": {"loss": "soft_ce", "temperature": 2.0}},
    "dkd": {"standardized": {"standardize": True, "temperature": 2.0, "alpha": 9.0, "beta": 72.0}},
    "dist": {"paper": {"tau_squared": False, "temperature": 4.0}},
    "uskd": {"probability-rank": {"rank_with_log_probs": False}},
    "ctkd": {"standardized": {"standardize": True}},
    "mlkd": {"standardized": {"standardize": True, "temperature": 2.0, "kd_weight": 9.0},
             "strong-select": {"strong_views": "strong", "confidence_masks": "select"}},
}


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _base(tmp_path: Path, name: str) -> dict:
    return {"name": name, "seed": 3, "student": "mlp", "epochs": 2,
            "data": {"name": "digits", "val_size": 200, "per_class": 10, "batch_size": 25},
            "optim": {"name": "sgd", "lr": 0.1}, "schedule": {"name": "cosine"},
            "output_dir": str(tmp_path / "runs"), "train": {"device": "cpu", "threads": 1}}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, one_thread) -> Path:
    tmp = tmp_path_factory.mktemp("pinned-teacher")
    raw = _base(tmp, "teacher")
    raw.update(epochs=8, student="cnn-small")
    raw["optim"]["lr"] = 0.1
    raw["data"].update(per_class=None, batch_size=128)
    recipe = recipe_from_dict(raw)
    run_recipe(recipe, quiet=True)
    return recipe.run_dir / "best.pt"


def _cases() -> list[tuple[str, str, dict]]:
    cases = []
    for name in method_names():
        cases.append((name, "default", {}))
        cases += [(name, variant, settings) for variant, settings in VARIANTS.get(name, {}).items()]
    return cases


def _recipe(tmp_path: Path, method: str, settings: dict, teacher: Path) -> dict:
    cls = method_class(method)
    raw = _base(tmp_path, f"pin-{method}")
    raw["method"] = {"name": method, **settings}
    raw["data"]["augment"] = {"mix": "mixup"} if cls.mixed_views else {"crop_padding": 1, "hflip": True}
    if cls.views_per_step != 1:
        raw["data"]["views_per_step"] = cls.views_per_step  # the crop-and-flip plan's next view of each sample
    if cls.uses_soft_labels:
        raw["soft_labels"] = {"source": "teacher", "checkpoint": str(teacher)}
    return raw


def _curve(run_dir: Path) -> list[dict[str, float]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k.startswith("train/") or k in ("test/loss", "test/acc")}
            for r in records]


@pytest.mark.parametrize("method,variant,settings", _cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_the_first_steps_of_every_method_give_their_pinned_losses(method, variant, settings, teacher, tmp_path,
                                                                   one_thread):
    recipe = recipe_from_dict(_recipe(tmp_path, method, settings, teacher))
    run_recipe(recipe, quiet=True)
    curve = _curve(recipe.run_dir)
    key = f"{method}/{variant}"
    pinned = json.loads(PINNED.read_text()) if PINNED.is_file() else {}
    if PIN:
        pinned[key] = curve
        PINNED.write_text(json.dumps(pinned, indent=1, sort_keys=True) + "\n")
        return
    assert key in pinned, (f"method {key} has no pinned losses: pin them with SOFTDISTILL_PIN=1 python -m pytest "
                           f"{Path(__file__).name} on an unchanged tree, then review and commit {PINNED.name}")
    expected = pinned[key]
    assert [sorted(r) for r in curve] == [sorted(r) for r in expected], "the logged terms changed"
    for got, want in zip(curve, expected):
        for name in want:
            assert got[name] == pytest.approx(want[name], rel=1e-6, abs=1e-9), f"{key}: {name} moved"
