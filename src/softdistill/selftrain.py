"""Incomplete supervision in rounds: train on the labelled part, pseudo-label the rest, retrain.

Round 0 is a recipe with ``soft_labels: {source: weak, kind: incomplete, labelled_fraction: f}`` (one-hot rows for the
labelled part, empty rows elsewhere) and the ``soft-label`` method.  After round r, the final
student of round r predicts every training image; its soft predictions replace the empty rows
(labelled rows keep their labels, :func:`softdistill.soft_labels.weak.pseudo_labels`), the table is
written to ``RUN_DIR_r/pseudo_labels.pt`` (a soft-label file) and round r + 1 trains a fresh
student on it (``soft_labels: {source: weak, kind: file, path: ...}``).  Runs are named ``NAME-rR``.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from softdistill.config import ConfigError, Recipe, recipe_from_dict
from softdistill.data.loader import BatchLoader, BatchTransform
from softdistill.engine.predict import predict
from softdistill.build import load_data
from softdistill.runner import run_recipe
from softdistill.runs import check_same_recipe, run_dir_state
from softdistill.soft_labels import load_teacher
from softdistill.soft_labels.table import save_soft_labels
from softdistill.soft_labels.weak import incomplete_labels, pseudo_labels

__all__ = ["self_training"]


def _model_probs(checkpoint, data, temperature: float) -> torch.Tensor:
    model = load_teacher(checkpoint, data.num_classes, data.in_channels, data.mean, data.std)
    logits = predict(model, BatchLoader(data.train, 1024, BatchTransform(data.mean, data.std))).logits
    return torch.softmax(logits / temperature, dim=1)


def self_training(recipe: Recipe, rounds: int, *, select: str = "last", temperature: float = 1.0,
                  quiet: bool = True) -> list[dict[str, Any]]:
    """Run round 0 (``recipe``) and ``rounds`` pseudo-label rounds; finished rounds are reused.

    Returns one record per round: the run summary and the measured indicators (``unreliability``,
    ``ambiguity`` at k = 1, over every row with supervision) of the table that round trained on.
    ``select`` names the checkpoint that pseudo-labels (``last`` by default: choosing ``best`` would
    use the labelled validation set, which incomplete supervision may not have).
    """
    weak = recipe.soft_labels
    if weak is None or weak.source != "weak" or weak.kind != "incomplete":
        raise ConfigError("self_training needs a recipe with soft_labels: {source: weak, kind: incomplete, ...}")
    data = load_data(recipe)
    seed = weak.seed if weak.seed is not None else recipe.seed
    base = incomplete_labels(data.train.labels, data.num_classes, labelled_fraction=weak.labelled_fraction, seed=seed)
    raw = recipe.to_dict()
    spec = {"name": recipe.data.name, "split": "train", "val_size": recipe.data.val_size,
            "per_class": recipe.data.per_class, "split_seed": recipe.data.split_seed}
    records = []
    table = base
    current = recipe_from_dict({**raw, "name": f"{recipe.name}-r0"}, recipe_file=recipe.recipe_file)
    for r in range(rounds + 1):
        check_same_recipe(current)
        state = run_dir_state(current.run_dir)
        summary = (run_recipe(current, resume=(state == "partial"), quiet=quiet) if state != "finished"
                   else json.loads((current.run_dir / "summary.json").read_text()))
        records.append({"round": r, "name": current.name, "seed": current.seed, "summary": summary,
                        "unreliability": table.unreliability, "ambiguity": table.ambiguity,
                        "supervised_share": table.supervised.float().mean().item()})
        if r == rounds:
            break
        probs = _model_probs(current.run_dir / f"{select}.pt", data, temperature)
        table = pseudo_labels(base, probs, round=r + 1)
        path = current.run_dir / "pseudo_labels.pt"
        save_soft_labels(path, table.soft_labels, table.labels, sample_ids=data.train.ids, data=spec,
                         class_names=list(data.class_names), meta=table.report())
        file_source = {"source": "weak", "kind": "file", "path": str(path.resolve()), "k": 1}
        current = recipe_from_dict({**raw, "name": f"{recipe.name}-r{r + 1}", "soft_labels": file_source},
                                   recipe_file=recipe.recipe_file)
    return records
