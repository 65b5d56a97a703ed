"""``softdistill inspect``: a report on the quality of soft labels: of a teacher, a soft-label file, a
store, any recipe's soft-label source (a plugin's too), or several teachers and their ensemble.

The soft labels are read through the registered sources (a checkpoint is a ``teacher`` source, a
recipe's ``soft_labels`` section is built by :func:`~softdistill.build.build_source`), the store
reader (:class:`~softdistill.store.Store`, every stored view) and the soft-label file reader
(:func:`~softdistill.soft_labels.table.load_soft_labels`).  An ensemble's members are reported
beside it, each with its indicators and whether they judge it able to teach.

The report folder holds ``report.md`` (tables), ``report.json`` (every number) and PNG figures:

- ``reliability.png``: reliability diagram (accuracy against confidence, equal-width bins) and the
  confidence histogram, with the ECE;
- ``entropy.png``: the entropy of the soft labels, for correct and wrong top-1 separately (overlaid);
- ``indicators.png``: unreliability Delta_k, ambiguity gamma_k and their sum for k = 1..5, with the
  sufficient condition Delta_k + gamma_k < 1 (Yuan et al., NeurIPS 2023);
- ``ambiguity.png``: ``P(j in Top_k | y = a)`` for k = 1 and 2, the matrices whose largest
  off-diagonal entry is the ambiguity;
- ``mixup.png`` (sources of soft labels of new images, e.g. teachers): order concordance and top-2
  hit rates on mixed samples ``lam x_a + (1 - lam) x_b``, ``lam ~ Beta(1, 1)``, against lam; for
  mixed views (a store's or a recipe's), the same on those views and their soft labels.

With a student checkpoint: teacher-student top-1 agreement and the share of WSL regularization
samples (teacher less sure of the truth than the student; :func:`regularization_stats`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from softdistill.atomic import save_figure_atomic, write_text_atomic
from softdistill.build import build_source, load_data, make_loaders
from softdistill.checkpoint import FORMAT as CHECKPOINT_FORMAT
from softdistill.checkpoint import (CheckpointError, CheckpointMeta, UnreadableTorchFile, load_checkpoint,
                                    model_from_checkpoint, torch_load_plain)
from softdistill.compatibility import ONLINE
from softdistill.config import ConfigError, LabelRecipe, Recipe, check_dependencies, load_recipe
from softdistill.data.config import DataConfig
from softdistill.data.loader import BatchLoader, BatchTransform
from softdistill.data.prepare import DataBundle, prepare_data
from softdistill.data.samples import TensorSet
from softdistill.data.views import ViewPlan
from softdistill.runner import resolve_dependencies
from softdistill.runtime.distributed import DistContext, resolve_device
from softdistill.engine.predict import predict
from softdistill.runtime.progress import tracked
from softdistill.metrics.bias_variance import regularization_stats
from softdistill.metrics.ordering import order_concordance, top2_hit_rate
from softdistill.metrics.soft_labels import (ambiguity_matrix, calibration_bins, expected_calibration_error,
                                            soft_label_indicators)
from softdistill.models import build_model
from softdistill.store import Store
from softdistill.soft_labels.base import SoftLabelSource
from softdistill.soft_labels.ensemble import Ensemble
from softdistill.soft_labels.table import SOFT_LABEL_FORMAT, load_soft_labels, rows_for_split
from softdistill.types import Batch

__all__ = ["InspectResult", "inspect_soft_labels", "REPORT_FILES"]

REPORT_FILES = ("report.md", "report.json", "reliability.png", "entropy.png", "indicators.png", "ambiguity.png")
SPLITS = ("train", "val", "test")


@dataclass
class InspectResult:
    output_dir: Path
    summary: dict[str, Any]
    files: list[str]


# ------------------------------------------------------------------------------------------ loading

@dataclass
class _Member:
    """One member of an ensemble: what names it and its soft labels (probabilities) of the ensemble's rows."""

    name: str
    probs: Tensor


@dataclass
class _Source:
    kind: str  # "checkpoint", "file", "store", "recipe" or "sources" (several given at once)
    path: Path
    probs: Tensor  # N x K (rows of a file may be all zero: no supervision)
    labels: Tensor
    class_names: tuple[str, ...]
    images: TensorSet | None  # the rows' images, when the rows are the plain images of a split
    model: nn.Module | None  # soft labels of new (normalised) images: a source that serves them
    normalization: dict[str, list[float]] | None  # of the images ``model`` takes
    data: dict[str, Any]  # name, split, val_size, per_class, split_seed
    logits: Tensor | None
    model_name: str | None = None
    members: list[_Member] = field(default_factory=list)
    mixed_rows: dict[str, Any] | None = None  # order diagnostics of rows that are mixed views


def _split(bundle: DataBundle, split: str, what: str) -> TensorSet:
    chosen = {"train": bundle.train, "val": bundle.val, "test": bundle.test}[split]
    if chosen is None:
        raise ValueError(f"{what}: the data set has no validation split (val_size = 0)")
    if not isinstance(chosen, TensorSet):
        raise ValueError(f"{what}: the report mixes and reruns the split's images in memory, and the recipe streams "
                         "its data (data.loader); inspect a model trained on data held in memory")
    return chosen


def _logits(model: nn.Module, images: TensorSet, normalization: dict[str, list[float]], device: torch.device,
            batch_size: int, what: str, quiet: bool) -> Tensor:
    loader = BatchLoader(images.to(device), batch_size, BatchTransform(normalization["mean"], normalization["std"]))
    _say(f"{what} on {len(images)} images", quiet)
    return predict(model.to(device), tracked(loader, len(loader), what, quiet=quiet, unit="batch")).logits.cpu()


def _say(stage: str, quiet: bool) -> None:
    """One line per stage of the report, so that a long one is seen to be under way."""
    if not quiet:
        print(f"[softdistill] inspect: {stage}", flush=True)


@torch.no_grad()
def _mixed_logits(model: nn.Module, images: TensorSet, normalization: dict[str, list[float]], partner: Tensor,
                  lam: Tensor, device: torch.device, batch_size: int, what: str, quiet: bool,
                  source: bool = False) -> Tensor:
    """Logits on ``lam * x_a + (1 - lam) * x_b`` (normalised inputs: mixing commutes with the affine map); a soft-label
    ``source`` is given the mixed views as a :class:`~softdistill.types.Batch` (labels, partner's labels, lambda)."""
    model = model.to(device).eval()
    transform = BatchTransform(normalization["mean"], normalization["std"])
    out = []
    starts = range(0, len(images), batch_size)
    _say(f"{what} on {len(images)} mixed images", quiet)
    with torch.inference_mode():
        for start in tracked(starts, len(starts), what, quiet=quiet, unit="batch"):
            a = torch.arange(start, min(start + batch_size, len(images)))
            x_a = transform(images.images[a].to(device))
            x_b = transform(images.images[partner[a]].to(device))
            w = lam[a].to(device).view(-1, 1, 1, 1)
            x = w * x_a + (1 - w) * x_b
            if source:
                labels = images.labels.to(device)
                x = Batch(x=x, y=labels[a.to(device)], y_b=labels[partner[a].to(device)], lam=w.view(-1))
            out.append(model(x).float().cpu())
    return torch.cat(out)


def _prepare(spec: dict[str, Any], root: str | None) -> DataBundle:
    """The splits a saved data section (or a soft-label file's ``data`` entry) describes."""
    return prepare_data(DataConfig.saved({k: v for k, v in spec.items() if k in DataConfig.model_fields}, root=root))


#: keys of a saved data section that do not decide which images a split holds and how they look
VIEW_KEYS = ("augment", "views", "view_seed", "replay", "ood", "batch_size", "drop_last")


def _read(path: Path) -> tuple[str, dict[str, Any]]:
    """Whether ``path`` is a ``checkpoint`` or a soft-label ``file``, and its plain contents (read once)."""
    if not path.is_file():
        raise ValueError(f"no file at {path}")
    try:
        blob = torch_load_plain(path)
    except UnreadableTorchFile as exc:
        raise CheckpointError(f"cannot read {path}: not a softdistill checkpoint or soft-label file ({exc})") from None
    if isinstance(blob, dict) and blob.get("format") == CHECKPOINT_FORMAT:
        return "checkpoint", blob
    if isinstance(blob, dict) and (blob.get("format") == SOFT_LABEL_FORMAT or "labels" in blob):
        return "file", blob
    raise CheckpointError(f"{path} is neither a softdistill checkpoint ({CHECKPOINT_FORMAT}) nor a soft-label file "
                          f"({SOFT_LABEL_FORMAT}; see softdistill.soft_labels.table)")


def _section(path: Path, kind: str, blob: dict[str, Any], data: str | None) -> tuple[dict, dict, str | None]:
    """The soft_labels section that reads the checkpoint or soft-label file at ``path`` (a ``teacher``; a ``weak``
    table of the file), the data section of the images it labels (``data`` names another data set) and the name
    of its model."""
    if kind == "checkpoint":
        meta = CheckpointMeta.of(blob, path)
        saved = {k: v for k, v in meta.config["data"].items() if k not in VIEW_KEYS}
        other = data is not None and data != saved["name"]
        if other:
            saved = {"name": data, "val_size": saved.get("val_size", 0.1), "split_seed": saved.get("split_seed", 0)}
        section = {"source": "teacher", "checkpoint": str(path.resolve()), "allow_other_data": other}
        return section, saved, meta.model.name if meta.model is not None else "?"
    spec = blob.get("data")
    if not spec or spec.get("split", "train") != "train":
        raise ValueError(f"{path}: a soft-label file joins several sources when its 'data' entry names the training "
                         "split of a data set (the rows of other files cannot be matched to the same samples)")
    saved = {k: v for k, v in spec.items() if k in DataConfig.model_fields}
    return {"source": "weak", "kind": "file", "path": str(path.resolve()), "k": 1}, saved, None


def _file_source(path: Path, root: str | None) -> _Source:
    """The rows of a soft-label file, read by the one reader of such files (and, when its ``data`` entry names
    them, matched to the samples of that split by sample id)."""
    table = load_soft_labels(path)
    spec = table["data"]
    images = None
    names = tuple(table["class_names"] or [str(i) for i in range(table["soft_labels"].shape[1])])
    soft, labels = table["soft_labels"], table["labels"]
    if spec:
        bundle = _prepare(spec, root)
        images = _split(bundle, spec.get("split", "train"), str(path))
        try:
            soft, labels = rows_for_split(table, images)
        except ValueError as exc:
            raise ValueError(f"{exc} (the split its 'data' entry names: {spec})") from None
        names = bundle.class_names if not table["class_names"] else names
    return _Source("file", path, soft, labels, names, images, None, None, dict(spec or {}), None)


def _member_name(index: int, section: Any) -> str:
    """How the report names member ``index`` of an ensemble: its source and the settings that are not defaults."""
    settings = section.model_dump(mode="json", exclude_defaults=True)
    settings.pop("source", None)
    said = ", ".join(f"{key}: {value}" for key, value in settings.items() if not isinstance(value, (list, dict)))
    return f"members[{index}] ({section.source}{': ' + said if said else ''})"


def _collect(source: SoftLabelSource, batches: Any, total: int, quiet: bool) -> dict[str, Any]:
    """The source's logits of every batch (and, for an ensemble, each member's), with the labels (and for mixed
    views the partner's label and lambda), on the CPU."""
    members = list(source.members) if isinstance(source, Ensemble) else []
    found: dict[str, list[Tensor]] = {"logits": [], "labels": [], "labels_b": [], "lam": []}
    by_member: list[list[Tensor]] = [[] for _ in members]
    was_training = source.training
    source.train(False)
    try:
        with torch.inference_mode():
            for batch in tracked(batches, total, "soft labels", quiet=quiet, unit="batch"):
                if members:
                    each = [member(batch).float() for member in members]
                    logits = source.combined(each, batch.y)
                    for rows, member_logits in zip(by_member, each):
                        rows.append(member_logits.cpu())
                else:
                    logits = source(batch).float()
                found["logits"].append(logits.cpu())
                found["labels"].append(batch.y.cpu())
                if batch.is_mixed:
                    found["labels_b"].append(batch.y_b.cpu())
                    found["lam"].append(batch.lam.cpu())
    finally:
        source.train(was_training)
    out = {key: torch.cat(rows) if rows else None for key, rows in found.items()}
    out["members"] = [torch.cat(rows) for rows in by_member]
    return out


def _recipe_source(recipe: Recipe | LabelRecipe, path: Path, kind: str, split: str, device: torch.device,
                   quiet: bool, model_name: str | None = None, member_names: list[str] | None = None) -> _Source:
    """The soft labels of ``recipe``'s source (built by :func:`~softdistill.build.build_source`, its dependencies
    made first) of the ``split``: of the training split, every view of the recipe's plan (each a row, the plain
    images when the plan does not augment); of another split, the plain images (a source of new images only)."""
    if getattr(recipe, "soft_labels", None) is None:
        raise ValueError(f"{path}: the recipe has no soft_labels section to inspect")
    section = recipe.soft_labels
    serves = section.serves()
    if split != "train" and ONLINE not in serves:
        raise ValueError(f"{path}: soft_labels.source {section.source!r} holds soft labels of the training samples "
                         f"only (not of new images), so it has none for the {split} split; inspect --split train")
    ctx = DistContext(device=device)
    products = resolve_dependencies(recipe, quiet)
    data = load_data(recipe)
    images = _split(data, split, str(path))
    plan = recipe.view_plan
    loaders = make_loaders(recipe, data, ctx, BatchTransform(data.mean, data.std), plan)
    student = None
    if isinstance(recipe, Recipe):  # a source may be made of the student (as a run builds it: before its source)
        torch.manual_seed(recipe.seed)
        student = build_model(recipe.student, data.num_classes, data.in_channels, data.image_size).to(device)
    _say(f"building soft_labels.source {section.source!r}", quiet)
    source = build_source(recipe, data, ctx, loaders.views, products, student)
    assert source is not None
    size = recipe.data.eval_batch_size
    if split == "train":
        views = plan.distinct_views or 1  # a fresh view every epoch: its first
        batches: Any = (batch for view in range(views) for batch in loaders.views.in_order(view))
        total = views * math.ceil(len(data.train) / size)
    else:
        batches, total = loaders.evals[split], math.ceil(len(images) / size)
    _say(f"soft labels of {len(images)} {split} images" + (f" x {views} views" if split == "train" and views > 1
                                                             else ""), quiet)
    found = _collect(source, batches, total, quiet)
    plain = not plan.definition()
    normalization = {"mean": list(data.mean), "std": list(data.std)}
    # an ensemble's soft labels are its members' probabilities averaged at its temperature: read every row at it
    t = source.temperature if isinstance(source, Ensemble) else 1.0
    spec = {**recipe.data.split_identity(), "split": split, **({"temperature": t} if t != 1.0 else {})}
    names = member_names or [_member_name(i, m) for i, m in enumerate(getattr(section, "members", []))]
    mixed = None
    if found["lam"] is not None:
        views_said = f"{views} per sample" if split == "train" else "one per sample"
        mixed = _mixed_summary({"teacher": found["logits"]}, found["labels"], found["labels_b"], found["lam"], plan,
                               f"The {len(found['labels'])} {plan.mix} views of the recipe's plan ({views_said})")
    return _Source(kind, path, torch.softmax(found["logits"] / t, dim=1), found["labels"], data.class_names,
                   images if plain else None, source if ONLINE in serves and plain else None, normalization, spec,
                   found["logits"], model_name,
                   [_Member(name, torch.softmax(logits / t, dim=1)) for name, logits in zip(names, found["members"])],
                   mixed)


def _read_sources(paths: list[Path], data: str | None, split: str, root: str | None, device: torch.device,
                  batch_size: int, quiet: bool, overrides: Sequence[str]) -> _Source:
    """The soft labels of one checkpoint, soft-label file, store or recipe (with dotted ``overrides``), or of
    several checkpoints and soft-label files (of the training split) and their ensemble (the mean of their
    probabilities)."""
    if len(paths) == 1 and paths[0].is_dir():
        _say(f"reading the soft labels of the store {paths[0]}", quiet)
        return _store_source(paths[0])
    if len(paths) == 1 and paths[0].suffix in (".yaml", ".yml"):
        recipe = load_recipe(paths[0], [*overrides, f"train.device={device}", f"data.eval_batch_size={batch_size}"]
                             + ([f"data.root={root}"] if root else []))
        return _recipe_source(recipe, paths[0], "recipe", split, device, quiet)
    if overrides:
        raise ValueError("-o overrides a recipe's values: give one recipe to inspect")
    if len(paths) > 1 and any(p.is_dir() or p.suffix in (".yaml", ".yml") for p in paths):
        raise ValueError("several sources are checkpoints or soft-label files; stores and recipes join an ensemble "
                         "through a recipe: soft_labels: {source: ensemble, members: [{source: store, path: ...}, "
                         "...]} (docs/inspect.md)")
    read = [(path, *_read(path)) for path in paths]
    if len(read) == 1 and read[0][1] == "file":
        return _file_source(paths[0], root)
    sections = [_section(path, kind, blob, data) for path, kind, blob in read]
    _, data_section, model_name = sections[0]
    soft_labels = (sections[0][0] if len(sections) == 1 else
                   {"source": "ensemble", "members": [section for section, _, _ in sections]})
    raw = {"kind": "label", "name": "inspect", "soft_labels": soft_labels, "train": {"device": str(device)},
           "data": {**data_section, "eval_batch_size": batch_size, **({"root": root} if root else {})}}
    try:
        recipe = LabelRecipe.from_dict(raw, recipe_file="inspect")
        check_dependencies(recipe)
    except ConfigError as exc:
        raise ValueError(str(exc).replace("invalid label recipe in inspect", "the sources do not fit together")) \
            from None
    if len(paths) == 1:
        return _recipe_source(recipe, paths[0], "checkpoint", split, device, quiet, model_name)
    return _recipe_source(recipe, paths[0], "sources", split, device, quiet,
                          member_names=[str(path) for path in paths])


# ------------------------------------------------------------------------------------------ numbers

def _entropy(probs: Tensor) -> Tensor:
    p = probs.double()
    return -(p * p.clamp_min(1e-300).log()).sum(dim=1)


def _basic(probs: Tensor, labels: Tensor, n_bins: int) -> dict[str, Any]:
    top1 = probs.argmax(dim=1) if probs.shape[1] else labels
    p_true = probs.gather(1, labels.view(-1, 1)).squeeze(1).double()
    bins = calibration_bins(probs, labels, n_bins)
    ece = expected_calibration_error(probs, labels, n_bins)
    ent = _entropy(probs)
    return {
        "samples": int(len(labels)),
        "accuracy": 100.0 * (top1 == labels).double().mean().item(),
        "nll": (-p_true.clamp_min(1e-12).log()).mean().item(),
        "nll_floor_hits": int((p_true < 1e-12).sum()),
        "ece": ece,
        "mean_confidence": probs.max(dim=1).values.double().mean().item(),
        "mean_entropy": ent.mean().item(),
        "max_entropy": math.log(probs.shape[1]),
        "bins": {k: [None if math.isnan(v) else v for v in t.tolist()] for k, t in bins.items()},
        "_entropy": ent,
        "_correct": top1 == labels,
    }


def _order_diagnostics(logits: dict[str, Tensor], labels_a: Tensor, labels_b: Tensor, lam: Tensor,
                       lam_bins: int = 10) -> dict[str, Any]:
    """Order concordance and top-2 hit rates of each model's logits on mixed samples, overall and by lam."""
    result: dict[str, Any] = {}
    edges = np.linspace(0.0, 1.0, lam_bins + 1)
    which = np.clip(np.digitize(lam.numpy(), edges[1:-1]), 0, lam_bins - 1)
    for name, model_logits in logits.items():
        row = {"order_concordance": float(order_concordance(model_logits, labels_a, labels_b, lam)),
               "top2_hit_either": float(top2_hit_rate(model_logits, labels_a, labels_b)),
               "top2_hit_both": float(top2_hit_rate(model_logits, labels_a, labels_b, both=True))}
        per_bin: dict[str, list[float | None]] = {k: [] for k in row}
        for b in range(lam_bins):
            sel = torch.from_numpy(which == b)
            if int(sel.sum()) == 0:
                for k in per_bin:
                    per_bin[k].append(None)
                continue
            args = (model_logits[sel], labels_a[sel], labels_b[sel])
            conc = float(order_concordance(*args, lam[sel]))
            per_bin["order_concordance"].append(None if math.isnan(conc) else conc)
            per_bin["top2_hit_either"].append(float(top2_hit_rate(*args)))
            per_bin["top2_hit_both"].append(float(top2_hit_rate(*args, both=True)))
        row["by_lam"] = per_bin
        result[name] = row
    result["lam_bin_centers"] = ((edges[:-1] + edges[1:]) / 2).tolist()
    return result


def _mixup(source: _Source, student: tuple[nn.Module, dict] | None, device: torch.device, batch_size: int,
           seed: int, quiet: bool, alpha: float = 1.0) -> dict[str, Any]:
    """The teacher's (and student's) order diagnostics on one mixup view of every sample of the split:
    the views of a mixing plan (:class:`~softdistill.data.views.ViewPlan`), partner and λ a pure function of
    (seed, sample id)."""
    assert source.images is not None and source.model is not None and source.normalization is not None
    n = len(source.images)
    plan = ViewPlan(mix="mixup", mix_alpha=alpha, seed=seed, views=1)
    rows = torch.arange(n)
    mixing = plan.mixing(source.images.ids, torch.zeros(n, dtype=torch.long), rows, n,
                         tuple(source.images.images.shape[-2:]))
    partner, lam = mixing.partner, mixing.lam
    labels_a, labels_b = source.labels, source.labels[partner]
    models = {"teacher": (source.model, source.normalization)}
    if student is not None:
        models["student"] = student
    logits = {name: _mixed_logits(model, source.images, norm, partner, lam, device, batch_size, name, quiet,
                                  source=name == "teacher")
              for name, (model, norm) in models.items()}
    what = (f"{n} mixed samples λ·x_a + (1 − λ)·x_b of the split, one mixup view of each sample (partner and λ a "
            "function of the sample id)")
    return _mixed_summary(logits, labels_a, labels_b, lam, plan, what)


def _mixed_summary(logits: dict[str, Tensor], labels: Tensor, labels_b: Tensor, lam: Tensor, plan: ViewPlan,
                   what: str) -> dict[str, Any]:
    """The order diagnostics of each model's soft labels (``logits``) of the mixed views ``what`` describes, of
    ``plan``."""
    what += f", λ ~ Beta({plan.mix_alpha:g}, {plan.mix_alpha:g}) per view, view seed {plan.seed}"
    return {"alpha": plan.mix_alpha, "samples": len(labels), "seed": plan.seed,
            "same_class_pairs": int((labels == labels_b).sum()), "what": what,
            **_order_diagnostics(logits, labels, labels_b, lam)}


def _store_source(path: Path) -> _Source:
    """The soft labels of every stored (sample, view) of a store (rows ordered by sample, then view), read by the
    store reader, and for a store of mixed views the order diagnostics of its teacher on them."""
    store = Store(path)
    m, plan = store.manifest, store.plan
    n, views = len(store), store.views
    logits = store.all_logits().reshape(n * views, -1)
    labels = store.labels.repeat_interleave(views)
    # a store labelled by an ensemble holds T log p of its probabilities averaged at T: read it at T
    t = ((m["teacher"]["soft_labels"] or {}).get("combine") or {}).get("temperature") or 1.0
    spec = {**{k: m["data"].get(k) for k in ("name", "val_size", "per_class", "split_seed")}, "split": "train",
            **({"temperature": t} if t != 1.0 else {})}
    teacher = m["teacher"].get("model") or {}
    mixed = None
    if plan.mixes:
        rows = torch.arange(n).repeat_interleave(views)
        view_ids = torch.arange(views).repeat(n)
        mixing = plan.mixing(store.sample_ids[rows], view_ids, rows, n, tuple(m["data"]["image_shape"][1:]))
        mixed = _mixed_summary({"teacher": logits}, labels, store.labels[mixing.partner], mixing.lam, plan,
                               f"The {n * views} stored {plan.mix} views ({views} per sample) the teacher labelled")
    return _Source("store", path, torch.softmax(logits / t, dim=1), labels, tuple(m["data"]["class_names"]), None, None,
                   None, spec, logits, teacher.get("name"), mixed_rows=mixed)


# ------------------------------------------------------------------------------------------ figures

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
                         "axes.spines.top": False, "axes.spines.right": False, "savefig.dpi": 150,
                         "figure.dpi": 150})
    return plt


BLUE, ORANGE, GREEN, GREY, RED = "#2f6f9f", "#d9822b", "#3b8f5a", "#8c8c8c", "#b03a2e"


def _plot_reliability(basic: dict[str, Any], path: Path, title: str) -> None:
    plt = _pyplot()
    bins = basic["bins"]
    edges = np.array(bins["edges"])
    width = edges[1] - edges[0]
    centers = edges[:-1] + width / 2
    acc = np.array([np.nan if v is None else v for v in bins["accuracy"]])
    conf = np.array([np.nan if v is None else v for v in bins["confidence"]])
    count = np.array(bins["count"])
    fig, (ax, axh) = plt.subplots(2, 1, figsize=(4.2, 4.8), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    filled = count > 0
    ax.bar(centers[filled], acc[filled], width=width * 0.95, color=BLUE, edgecolor="white", linewidth=0.5,
           label="accuracy")
    gap_low = np.minimum(acc, conf)
    ax.bar(centers[filled], np.abs(conf - acc)[filled], bottom=gap_low[filled], width=width * 0.95,
           facecolor="none", hatch="////", edgecolor=RED, linewidth=0.8, label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], ls="--", color=GREY, lw=1, label="perfect calibration")
    ax.set_ylim(0, 1)
    ax.set_xlim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE = {100 * basic['ece']:.2f}%  (top-1 accuracy {basic['accuracy']:.2f}%)")
    ax.legend(loc="upper left", frameon=False)
    axh.bar(centers, count / count.sum(), width=width * 0.95, color=GREY)
    axh.set_yscale("log")
    axh.set_xlabel("confidence (top-1 probability)")
    axh.set_ylabel("share")
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)


def _plot_entropy(basic: dict[str, Any], path: Path, title: str) -> None:
    plt = _pyplot()
    ent = basic["_entropy"].numpy()
    correct = basic["_correct"].numpy()
    top = basic["max_entropy"]
    edges = np.linspace(0.0, top, 41)
    fig, ax = plt.subplots(figsize=(4.8, 3.0))
    ax.hist(ent[correct], bins=edges, color=BLUE, alpha=0.65, label=f"top-1 correct ({correct.mean() * 100:.1f}%)")
    ax.hist(ent[~correct], bins=edges, color=ORANGE, alpha=0.65, label=f"top-1 wrong ({(~correct).mean() * 100:.1f}%)")
    ax.set_yscale("log")
    ax.axvline(top, color=GREY, ls="--", lw=1)
    ax.text(top * 0.985, ax.get_ylim()[1], "log K", color=GREY, ha="right", va="top", fontsize=7)
    ax.set_xlim(0, top * 1.02)
    ax.set_xlabel("entropy of the soft label (nats)")
    ax.set_ylabel("samples")
    ax.set_title(f"{title}: mean entropy {basic['mean_entropy']:.3f} nats")
    ax.legend(framealpha=0.9, edgecolor="none")
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)


def _plot_indicators(indicators: list[dict[str, Any]], path: Path, title: str) -> None:
    plt = _pyplot()
    ks = [r["k"] for r in indicators]
    fig, ax = plt.subplots(figsize=(5.8, 3.2))
    ax.axhspan(1.0, 2.05, color=RED, alpha=0.06, lw=0)
    ax.axhline(1.0, color=RED, lw=1, ls="--")
    ax.text(ks[-1] + 0.2, 1.02, r"$\Delta_k + \gamma_k \geq 1$: sufficient condition fails", color=RED, ha="right",
            va="bottom", fontsize=7)
    ax.plot(ks, [r["unreliability"] for r in indicators], "o-", color=BLUE, label=r"unreliability $\Delta_k$")
    ax.plot(ks, [r["ambiguity"] for r in indicators], "s-", color=ORANGE, label=r"ambiguity $\gamma_k$")
    ax.plot(ks, [r["sum"] for r in indicators], "^-", color=GREEN, label=r"$\Delta_k + \gamma_k$")
    ax.set_xticks(ks)
    ax.set_xlabel("k")
    ax.set_ylim(0, max(1.15, max(r["sum"] for r in indicators) + 0.1))
    ax.set_ylabel("share of samples")
    ax.set_title(title)
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)


def _plot_ambiguity(matrices: dict[int, Tensor], class_names: tuple[str, ...], path: Path, title: str) -> None:
    plt = _pyplot()
    ks = sorted(matrices)
    classes = len(class_names)
    size = min(3.2 + 0.16 * classes, 6.5)
    fig, axes = plt.subplots(1, len(ks), figsize=(size * len(ks) + 1.0, size + 0.4), squeeze=False,
                             sharey=True, constrained_layout=True)
    short = [n if len(n) <= 10 else n[:9] + "." for n in class_names]
    image = None
    for ax, k in zip(axes[0], ks):
        m = matrices[k].numpy()
        image = ax.imshow(m, vmin=0, vmax=1, cmap="Blues")
        off = m.copy()
        np.fill_diagonal(off, -1)
        a, j = np.unravel_index(np.nanargmax(np.nan_to_num(off, nan=-1)), off.shape)
        ax.add_patch(plt.Rectangle((j - 0.5, a - 0.5), 1, 1, fill=False, edgecolor=RED, lw=1.5))
        if classes <= 12:
            for (r, c), v in np.ndenumerate(m):
                if not np.isnan(v) and v >= 0.005:
                    ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if v > 0.6 else "black")
        ax.set_title(f"k = {k}: ambiguity $\\gamma_{k}$ = {off[a, j]:.3f} (boxed)")
        if classes <= 20:
            ax.set_xticks(range(classes), short, rotation=60, ha="right", fontsize=7)
            ax.set_yticks(range(classes), short, fontsize=7)
        ax.set_xlabel("class j in the top-k")
    axes[0][0].set_ylabel("true class a")
    fig.suptitle(f"P(j in Top$_k$ | y = a): {title}")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
    save_figure_atomic(fig, path)
    plt.close(fig)


def _plot_mixup(mix: dict[str, Any], path: Path, title: str) -> None:
    plt = _pyplot()
    centers = mix["lam_bin_centers"]
    fig, axes = plt.subplots(1, 2, figsize=(8.0, 3.0))
    styles = {"teacher": ("-", "o"), "student": ("--", "s")}
    for name in ("teacher", "student"):
        if name not in mix:
            continue
        ls, marker = styles[name]
        row = mix[name]["by_lam"]
        conc = [np.nan if v is None else v for v in row["order_concordance"]]
        axes[0].plot(centers, conc, ls=ls, marker=marker, color=BLUE, label=name)
        axes[1].plot(centers, row["top2_hit_either"], ls=ls, marker=marker, color=GREEN, label=f"{name}: either label")
        axes[1].plot(centers, row["top2_hit_both"], ls=ls, marker=marker, color=ORANGE, label=f"{name}: both labels")
    axes[0].set_ylim(-1.05, 1.05)
    axes[0].axhline(0, color=GREY, lw=0.8)
    axes[0].set_ylabel("order concordance (tau)")
    axes[1].set_ylim(0, 1.02)
    axes[1].set_ylabel("top-2 hit rate")
    for ax in axes:
        ax.set_xlabel(r"mixing weight $\lambda$ of $x_a$")
        ax.legend(frameon=False, fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ report

def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _verdict_line(verdict: dict[str, Any]) -> str:
    """One sentence: where the sufficient condition holds and the widest margin."""
    holds = verdict["condition_holds_at"]
    said = (f"holds at k = {', '.join(map(str, holds))}: the indicators judge these soft labels able to teach"
            if holds else "fails at every k: the indicators do not judge these soft labels able to teach")
    return (f"The sufficient condition {said}; the widest margin 1 − Δ_k − γ_k is {verdict['best_margin']:.4f}, at "
            f"k = {verdict['best_k']}.")


def _members_markdown(s: dict[str, Any]) -> list[str]:
    """The table of the members' numbers and indicators beside the ensemble's."""
    ks = [r["k"] for r in s["indicators"]]
    head = " | ".join(f"Δ_{k} + γ_{k}" for k in ks)
    lines = ["## Members and ensemble", "",
             "Each member's soft labels of the same rows, beside the ensemble's; Δ_k + γ_k < 1 is the sufficient "
             "condition (able to teach when it holds at some k).", "",
             f"| soft labels | top-1 (%) | NLL | ECE (%) | {head} | condition holds at k | able to teach |",
             "|---|---:|---:|---:|" + "---:|" * len(ks) + "---|:---:|"]
    for row in [*s["members"], {"name": "**ensemble**", **s}]:
        b = row["soft_labels"]
        sums = " | ".join(f"{r['sum']:.4f}" for r in row["indicators"])
        holds = ", ".join(map(str, row["condition_holds_at"])) or "none"
        lines.append(f"| {row['name']} | {b['accuracy']:.2f} | {b['nll']:.4f} | {100 * b['ece']:.2f} | {sums} | "
                     f"{holds} | {'yes' if row['able_to_teach'] else 'no'} |")
    return lines + [""]


def _markdown(summary: dict[str, Any], names: tuple[str, ...], files: list[str]) -> str:
    s = summary
    b = s["soft_labels"]
    src = s["source"]
    data_name = s["data"].get("name")
    head = {"checkpoint": f"{src['model']} on {data_name} ({s['data'].get('split')})",
            "sources": f"an ensemble of {len(s.get('members', []))} on {data_name} ({s['data'].get('split')})"
            }.get(src["kind"], f"`{Path(src['path']).name}`")
    lines = [f"# Soft-label report: {head}", ""]
    what = {"checkpoint": f"teacher checkpoint `{src['path']}` ({src['model']})",
            "store": f"store `{src['path']}` (labelled by {src['model']}; every stored view is a row)",
            "file": f"soft-label file `{src['path']}`",
            "recipe": f"the soft_labels section of recipe `{src['path']}` (every view of its plan is a row)",
            "sources": "the mean of the probabilities of " + ", ".join(f"`{p}`" for p in src.get("paths", []))
            }[src["kind"]]
    data = s["data"]
    where = (f"{data.get('name')} / {data.get('split')} split" if data.get("name") else "rows of the file")
    if "temperature" in data:
        what += (f"; an ensemble's probabilities averaged at T = {data['temperature']:g}, so every row (and member) is "
                 f"read at T = {data['temperature']:g}")
    lines += [f"Source: {what}; samples: {where}, {b['samples']} with soft labels"
              + (f" (of {s['rows']} rows; rows without mass carry no supervision and are left out)"
                 if s["rows"] != b["samples"] else "") + ".", ""]
    lines += ["## Summary", "", "| top-1 accuracy (%) | NLL (nats) | ECE (%, 15 bins) | mean confidence | mean entropy (nats) | log K |",
              "|---:|---:|---:|---:|---:|---:|",
              f"| {b['accuracy']:.2f} | {b['nll']:.4f} | {100 * b['ece']:.2f} | {b['mean_confidence']:.4f} | "
              f"{b['mean_entropy']:.4f} | {b['max_entropy']:.4f} |", ""]
    if b["nll_floor_hits"]:
        lines += [f"NLL clamps p(y) at 1e-12: {b['nll_floor_hits']} samples put no mass on their true class.", ""]
    lines += ["## Indicators (Yuan et al., NeurIPS 2023)", "",
              "Unreliability Δ_k = P(y ∉ Top_k(d)); ambiguity γ_k = max over a, j ≠ a of "
              "P(j ∈ Top_k(d) | y = a); the sufficient condition for learning from the soft labels is "
              "Δ_k + γ_k < 1. Ties in Top_k go to the lower class index.", "",
              "| k | unreliability Δ_k | ambiguity γ_k | reached at (a → j) | Δ_k + γ_k | condition holds |",
              "|---:|---:|---:|---|---:|:---:|"]
    for r in s["indicators"]:
        a, j = r["ambiguity_pair"]
        lines.append(f"| {r['k']} | {r['unreliability']:.4f} | {r['ambiguity']:.4f} | {names[a]} → {names[j]} | "
                     f"{r['sum']:.4f} | {'yes' if r['condition'] else 'no'} |")
    lines += ["", _verdict_line(s), ""]
    if "members" in s:
        lines += _members_markdown(s)
    lines += ["", "![indicators](indicators.png)", "", "![ambiguity matrices](ambiguity.png)", "",
              "## Calibration and entropy", "", "![reliability diagram](reliability.png)", "",
              "![entropy histogram](entropy.png)", ""]
    st = s.get("student")
    lines += ["## Teacher and student", ""]
    if st:
        lines += [f"Student checkpoint `{st['path']}` ({st['model']}).", "",
                  "| student top-1 accuracy (%) | teacher-student top-1 agreement (%) | regularization samples (%) | "
                  "WSL weight w: mean | q1 | median | q3 |", "|---:|---:|---:|---:|---:|---:|---:|",
                  f"| {st['accuracy']:.2f} | {st['agreement']:.2f} | {st['reg_share']:.2f} | {st['w_mean']:.4f} | "
                  f"{st['w_q1']:.4f} | {st['w_median']:.4f} | {st['w_q3']:.4f} |", "",
                  "A regularization sample is one where the teacher's cross-entropy on the true label exceeds the "
                  "student's (Zhou et al., ICLR 2021); w = 1 − exp(−CE_s / CE_t).", ""]
    else:
        lines += ["No student given (`--student CKPT` adds top-1 agreement and the regularization-sample share).", ""]
    mix = s.get("mixup")
    lines += ["## Mixed samples", ""]
    if mix and "teacher" in mix:
        lines += [f"{mix['what']} ({mix['same_class_pairs']} same-class pairs). Order concordance: Kendall-tau-style agreement "
                  "with the known order (heavier label > lighter label > every other class), 1 = perfect; top-2 "
                  "hit: one (either) or both original labels among the two largest entries.", "",
                  "| model | order concordance | top-2 hit, either label | top-2 hit, both labels |",
                  "|---|---:|---:|---:|"]
        for name in ("teacher", "student"):
            if name in mix:
                r = mix[name]
                lines.append(f"| {name} | {r['order_concordance']:.4f} | {r['top2_hit_either']:.4f} | "
                             f"{r['top2_hit_both']:.4f} |")
        lines += ["", "![mixup](mixup.png)", ""]
    else:
        lines += [f"Not computed: {mix['skipped'] if mix else 'no images'}.", ""]
    lines += ["---", f"Files: {', '.join(files)}. Every number is also in `report.json`.", ""]
    return "\n".join(lines)


def _verdict(indicators: list[dict[str, Any]]) -> dict[str, Any]:
    """What the indicators judge of a set of soft labels: the k at which the sufficient condition
    Delta_k + gamma_k < 1 holds (able to teach when it holds at one of them) and the k with the widest margin
    1 - Delta_k - gamma_k."""
    best = max(indicators, key=lambda r: 1.0 - r["sum"])
    holds = [r["k"] for r in indicators if r["condition"]]
    return {"condition_holds_at": holds, "able_to_teach": bool(holds), "best_k": best["k"],
            "best_margin": 1.0 - best["sum"]}


def _member_summaries(members: list[_Member], labels: Tensor, keep: Tensor, ks: list[int],
                      n_bins: int) -> list[dict[str, Any]]:
    """Each member's summary numbers, indicators and verdict on the ensemble's rows."""
    found = []
    for member in members:
        probs = member.probs[keep]
        basic = _basic(probs, labels, n_bins)
        indicators = soft_label_indicators(probs, labels, ks)
        found.append({"name": member.name, "soft_labels": {k: v for k, v in basic.items() if not k.startswith("_")},
                      "indicators": indicators, **_verdict(indicators)})
    return found


def inspect_soft_labels(source: str | os.PathLike | Sequence[str | os.PathLike], *, data: str | None = None,
                        split: str = "train", student: str | os.PathLike | None = None,
                        output_dir: str | os.PathLike | None = None, root: str | None = None, device: str = "auto",
                        batch_size: int = 1024, seed: int = 0, n_bins: int = 15, max_k: int = 5,
                        overrides: Sequence[str] = (), quiet: bool = False) -> InspectResult:
    """Write the soft-label report of ``source`` to ``output_dir`` (default: ``SOURCE_FOLDER/inspect-SPLIT``, a
    store's own folder for a store) and return its summary.

    ``source`` is a teacher checkpoint, a soft-label file, a store folder, a recipe (its ``soft_labels``
    section, any source, built as a run builds it), or a list of several checkpoints and soft-label files
    (their ensemble: the mean of their probabilities; each is reported beside it).  A checkpoint is run over
    ``split`` of its data set (``data`` overrides the data set's name), rebuilt from its recipe; a soft-label
    file brings its own rows (``split`` is then the file's); a store's rows are its stored views (the training
    split), with order diagnostics on mixed views; a recipe's rows are the views of its plan (``overrides``:
    dotted ``key=value`` changes of the recipe, e.g. its ``output_dir``).  ``student`` must
    be a checkpoint for the same classes; it is run over the same images.  Unless ``quiet``, each stage says so
    as it starts, with a progress bar over the batches of each model.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    paths = [Path(source)] if isinstance(source, (str, os.PathLike)) else [Path(p) for p in source]
    if not paths:
        raise ValueError("give a source to inspect")
    path = paths[0]
    dev = resolve_device(device)
    if student is not None and path.is_dir():
        raise ValueError(f"{path}: --student is not supported for a store (it holds soft labels, not the images "
                         "of its views); inspect the teacher checkpoint with --student instead")
    src = _read_sources(paths, data, split, root, dev, batch_size, quiet, overrides)
    split = src.data.get("split", split)
    beside = path if src.kind == "store" else path.parent
    out = Path(output_dir) if output_dir is not None else beside / f"inspect-{split}"
    rows = len(src.labels)
    keep = src.probs.sum(dim=1) > 0
    probs, labels = src.probs[keep], src.labels[keep]
    classes = probs.shape[1]
    _say(f"accuracy, calibration and indicators of {len(labels)} soft labels", quiet)
    basic = _basic(probs, labels, n_bins)
    ks = [k for k in range(1, max_k + 1) if k < classes]
    indicators = soft_label_indicators(probs, labels, ks)
    matrices = {k: ambiguity_matrix(probs, labels, k) for k in (1, 2) if k < classes}
    title = f"{src.model_name or path.name} on {src.data.get('name', 'file')} {split}"
    summary: dict[str, Any] = {
        "source": {"kind": src.kind, "path": str(path), "model": src.model_name},
        "data": src.data, "rows": rows, "class_names": list(src.class_names),
        "soft_labels": {k: v for k, v in basic.items() if not k.startswith("_")},
        "indicators": indicators, **_verdict(indicators),
        "ambiguity_matrix": {str(k): [[None if math.isnan(v) else v for v in row] for row in m.tolist()]
                             for k, m in matrices.items()},
    }
    if len(paths) > 1:
        summary["source"]["paths"] = [str(p) for p in paths]
    if src.members:
        summary["members"] = _member_summaries(src.members, labels, keep, ks, n_bins)
    student_pair = None
    if student is not None:
        if src.images is None:
            raise ValueError(f"{path}: --student needs the images of the soft labels' rows, but they are not the plain "
                             "images of a split (a soft-label file without a 'data' entry, or augmented views)")
        payload = load_checkpoint(student)
        student_meta = CheckpointMeta.of(payload, student)
        predicts = student_meta.model.num_classes if student_meta.model is not None else None
        if predicts != classes:
            raise CheckpointError(f"student {student} predicts {predicts} classes, the soft labels have {classes}")
        s_model = model_from_checkpoint(payload, student)
        s_logits = _logits(s_model, src.images, student_meta.normalization.model_dump(), dev, batch_size,
                           f"student {student_meta.model.name}", quiet)[keep]
        t_logits = src.logits[keep] if src.logits is not None else probs.clamp_min(1e-12).log()
        stats = regularization_stats(s_logits, t_logits, labels)
        summary["student"] = {"path": str(student), "model": student_meta.model.name,
                              "accuracy": 100.0 * (s_logits.argmax(1) == labels).double().mean().item(),
                              "agreement": 100.0 * (s_logits.argmax(1) == probs.argmax(1)).double().mean().item(),
                              "reg_share": 100.0 * stats["reg_share"].item(),
                              **{k: stats[k].item() for k in ("w_mean", "w_q1", "w_median", "w_q3")}}
        student_pair = (s_model, student_meta.normalization.model_dump())
    if src.model is not None and src.images is not None:
        summary["mixup"] = _mixup(src, student_pair, dev, batch_size, seed, quiet)
    elif src.mixed_rows is not None:
        summary["mixup"] = src.mixed_rows
    elif src.kind == "store":
        summary["mixup"] = {"skipped": "the store's views are not mixed"}
    elif src.kind == "file":
        summary["mixup"] = {"skipped": "a soft-label table gives no soft labels for new (mixed) images"}
    else:
        summary["mixup"] = {"skipped": "the source gives no soft labels for new (mixed) images, or its rows are "
                                       "augmented views"}

    _say(f"figures and tables into {out}", quiet)
    _plot_reliability(basic, out / "reliability.png", title)
    _plot_entropy(basic, out / "entropy.png", title)
    _plot_indicators(indicators, out / "indicators.png", f"Soft-label indicators: {title}")
    _plot_ambiguity(matrices, src.class_names, out / "ambiguity.png", title)
    files = list(REPORT_FILES)
    if "teacher" in summary["mixup"]:
        _plot_mixup(summary["mixup"], out / "mixup.png", f"Mixed samples: {title}")
        files.append("mixup.png")
    write_text_atomic(out / "report.json", json.dumps(summary, indent=2))
    write_text_atomic(out / "report.md", _markdown(summary, src.class_names, files))
    return InspectResult(out, summary, files)
