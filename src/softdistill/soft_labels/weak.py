"""Weak supervision as soft labels with controlled quality indicators (Yuan et al., NeurIPS 2023).

Each builder turns the true labels of a training set into a table of soft labels (N x K) and
measures what it built: the unreliability ``Delta_k`` and ambiguity ``gamma_k`` of
:mod:`softdistill.metrics.soft_labels` at the builder's k.

- :func:`partial_labels`: a candidate set of exactly k classes per sample, the soft label uniform
  over it.  The true class is left out with probability ``unreliability``; the ``ambiguity`` is the
  probability that the class's *confusing class* ``c(a) = (a + 1) mod K`` is in the set.
- :func:`noisy_labels`: one-hot plus non-negative noise, renormalised.
- :func:`incomplete_labels` then :func:`pseudo_labels`: a labelled fraction (one-hot; every other
  row empty = no supervision), then rounds of soft pseudo-labels from the current model.

:class:`WeakTable` is the soft-label source ``soft_labels: {source: weak, kind: ...}``: it builds the
table from the training labels (or reads a soft-label file) when the run starts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from softdistill.metrics.soft_labels import ambiguity_degree, soft_label_indicators, unreliability_degree
from softdistill.soft_labels.base import Dependency, SourceConfig, SourceSetup, register_source
from softdistill.soft_labels.table import SoftLabelTable, load_soft_labels, rows_for_split

__all__ = ["WeakLabels", "partial_labels", "noisy_labels", "incomplete_labels", "pseudo_labels",
           "partial_ambiguity_range", "WeakConfig", "WeakTable"]


@dataclass
class WeakLabels:
    """A built soft-label table and what was measured on it.

    ``unreliability`` / ``ambiguity`` are measured at ``k`` over the ``supervised`` rows (rows
    with probability mass; all rows except the unlabelled part of incomplete supervision).
    """

    kind: str
    soft_labels: Tensor
    labels: Tensor
    k: int
    unreliability: float
    ambiguity: float
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def supervised(self) -> Tensor:
        return self.soft_labels.sum(dim=1) > 0

    def indicators(self, ks: Iterable[int] = range(1, 6)) -> list[dict[str, Any]]:
        rows = self.supervised
        return soft_label_indicators(self.soft_labels[rows], self.labels[rows], ks)

    def report(self) -> dict[str, Any]:
        return {"kind": self.kind, "k": self.k, "unreliability": self.unreliability, "ambiguity": self.ambiguity,
                "condition": self.unreliability + self.ambiguity < 1.0,
                "supervised_share": self.supervised.float().mean().item(), "samples": len(self.labels),
                "params": self.params}


def _measure(kind: str, soft: Tensor, labels: Tensor, k: int, params: dict[str, Any]) -> WeakLabels:
    rows = soft.sum(dim=1) > 0
    if not bool(rows.any()):
        raise ValueError(f"{kind}: the table supervises no sample")
    delta = unreliability_degree(soft[rows], labels[rows], k)
    gamma = ambiguity_degree(soft[rows], labels[rows], k)
    return WeakLabels(kind, soft, labels, k, delta, gamma, params)


def _check_labels(labels: Tensor, num_classes: int, least: int = 2) -> Tensor:
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.numel() == 0 or labels.dtype.is_floating_point:
        raise ValueError(f"labels must be a non-empty 1-D integer tensor, got {labels.dtype} {tuple(labels.shape)}")
    if num_classes < least:
        raise ValueError(f"needs at least {least} classes, got {num_classes}")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes})")
    return labels.long().cpu()


def partial_ambiguity_range(num_classes: int, k: int, unreliability: float) -> tuple[float, float]:
    """The ambiguities :func:`partial_labels` can produce for (K, k, Delta).

    Each set holds ``k - 1 + [true class left out]`` wrong classes, on average ``k - 1 + Delta``;
    spread evenly over the K - 1 wrong classes that is the least ambiguity.  The most is 1 (the
    confusing class always in the set), or Delta for k = 1 (a wrong class only replaces the truth).
    """
    low = (k - 1 + unreliability) / (num_classes - 1)
    high = unreliability if k == 1 else 1.0
    return low, high


def partial_labels(labels: Tensor, num_classes: int, *, k: int = 2, unreliability: float = 0.0,
                   ambiguity: float | None = None, seed: int = 0) -> WeakLabels:
    """Candidate sets of exactly ``k`` classes, soft label uniform (1/k) over the set.

    Per sample of class a: with probability ``unreliability`` the true class is left out (k wrong
    classes), else it is in (k - 1 wrong classes).  The wrong classes are drawn without
    replacement with inclusion probability ``q`` for the confusing class ``c(a) = (a + 1) mod K``
    and an equal share of the rest for every other wrong class, by systematic sampling in a random
    class order (exact set size, exact inclusion probabilities).  ``q = ambiguity`` (k >= 2) or
    ``ambiguity / unreliability`` on the sets without the truth (k = 1), so that
    ``P(c(a) in S | y = a) = ambiguity``, the largest such probability as long as ``ambiguity`` is
    at least the least value (see :func:`partial_ambiguity_range`); ``None`` asks for that least
    value (no confusing class).  Top_k of these soft labels is exactly the candidate set, so the
    measured indicators are those of the sets, up to sampling error.
    """
    labels = _check_labels(labels, num_classes, least=3)
    n, classes = labels.shape[0], num_classes
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= classes - 1:
        raise ValueError(f"k (candidate-set size) must lie in [1, {classes - 1}], got {k!r}")
    if not 0.0 <= unreliability <= 1.0:
        raise ValueError(f"unreliability must lie in [0, 1], got {unreliability}")
    low, high = partial_ambiguity_range(classes, k, unreliability)
    gamma = low if ambiguity is None else float(ambiguity)
    if not low - 1e-9 <= gamma <= high + 1e-9:
        raise ValueError(f"ambiguity {gamma} is out of reach for K = {classes}, k = {k}, unreliability = "
                         f"{unreliability}: it must lie in [{low:.4f}, {high:.4f}]")
    gen = torch.Generator().manual_seed(seed)
    excluded = torch.rand(n, generator=gen, dtype=torch.float64) < unreliability
    wrong_slots = (k - 1 + excluded.long()).double()  # m_i
    if k >= 2:
        q = torch.full((n,), gamma, dtype=torch.float64)
    else:
        q = torch.where(excluded, gamma / max(unreliability, 1e-12), 0.0).double()
    q = torch.minimum(q, wrong_slots)
    rows = torch.arange(n)
    confusing = (labels + 1) % classes
    pi = ((wrong_slots - q) / (classes - 2)).view(-1, 1).expand(n, classes).clone()
    pi[rows, confusing] = q
    pi[rows, labels] = 0.0
    if float(pi.max()) > 1.0 + 1e-9:
        raise ValueError(f"ambiguity {gamma} with k = {k} asks a class to be in a set more than always")
    # systematic sampling in a random class order: points u, u + 1, ..., u + m - 1 on the cumulative sum
    order = torch.rand(n, classes, generator=gen).argsort(dim=1)
    pi_ordered = pi.gather(1, order)
    cum = pi_ordered.cumsum(dim=1)
    cum = cum * (wrong_slots / cum[:, -1].clamp_min(1e-12)).view(-1, 1)  # exact total m_i
    cum[wrong_slots == 0] = 0.0
    u = torch.rand(n, 1, generator=gen, dtype=torch.float64)
    count = torch.ceil(cum - u - 1e-12).clamp_min(0)
    before = torch.cat((torch.zeros(n, 1, dtype=torch.float64), count[:, :-1]), dim=1)
    chosen_ordered = (count - before) > 0
    chosen = torch.zeros(n, classes, dtype=torch.bool).scatter_(1, order, chosen_ordered)
    chosen[rows[~excluded], labels[~excluded]] = True
    sizes = chosen.sum(dim=1)
    if not bool((sizes == k).all()):  # pragma: no cover - guards the sampler
        raise RuntimeError(f"partial label sampler produced set sizes {sizes.unique().tolist()}, expected {k}")
    soft = chosen.float() / k
    params = {"k": k, "unreliability": unreliability, "ambiguity": gamma, "requested_ambiguity": ambiguity,
              "seed": seed, "confusing_class": "(a + 1) mod K"}
    return _measure("partial", soft, labels, k, params)


def noisy_labels(labels: Tensor, num_classes: int, *, scale: float, k: int = 1, seed: int = 0) -> WeakLabels:
    """Additive noise: ``d = (onehot(y) + scale * |z|) / sum``, ``z ~ N(0, I_K)`` per sample.

    The half-normal noise keeps every entry non-negative; the true class wins unless some wrong
    class draws ``scale * |z_j| > 1 + scale * |z_y|``.  Indicators are measured at ``k``.
    """
    labels = _check_labels(labels, num_classes)
    if not scale >= 0:
        raise ValueError(f"scale must be >= 0, got {scale}")
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(labels.shape[0], num_classes, generator=gen).abs() * scale
    soft = torch.nn.functional.one_hot(labels, num_classes).float() + noise
    soft = soft / soft.sum(dim=1, keepdim=True)
    return _measure("noise", soft, labels, k, {"scale": scale, "seed": seed, "noise": "half-normal"})


def incomplete_labels(labels: Tensor, num_classes: int, *, labelled_fraction: float, seed: int = 0) -> WeakLabels:
    """Round 0 of incomplete supervision: ``labelled_fraction`` of each class keeps its one-hot label
    (at least one sample per present class, chosen at random); every other row is all zero (no
    supervision; the ``soft-label`` method leaves such rows out).  Indicators are measured on the
    labelled rows (0 and 0)."""
    labels = _check_labels(labels, num_classes)
    if not 0.0 < labelled_fraction <= 1.0:
        raise ValueError(f"labelled_fraction must lie in (0, 1], got {labelled_fraction}")
    gen = torch.Generator().manual_seed(seed)
    labelled = torch.zeros(labels.shape[0], dtype=torch.bool)
    for c in labels.unique().tolist():
        members = (labels == c).nonzero().squeeze(1)
        take = max(1, round(labelled_fraction * len(members)))
        labelled[members[torch.randperm(len(members), generator=gen)[:take]]] = True
    soft = torch.nn.functional.one_hot(labels, num_classes).float() * labelled.view(-1, 1)
    return _measure("incomplete", soft, labels, 1, {"labelled_fraction": labelled_fraction, "seed": seed, "round": 0})


def pseudo_labels(base: WeakLabels, model_probs: Tensor, *, round: int, k: int = 1) -> WeakLabels:
    """The next round of incomplete supervision: labelled rows of ``base`` keep their one-hot label,
    every unlabelled row takes the current model's soft prediction (``model_probs``, N x K, rows in
    the same order).  Indicators are measured over every row at ``k``."""
    if model_probs.shape != base.soft_labels.shape:
        raise ValueError(f"model_probs must be {tuple(base.soft_labels.shape)}, got {tuple(model_probs.shape)}")
    labelled = base.soft_labels.sum(dim=1, keepdim=True) > 0
    soft = torch.where(labelled, base.soft_labels, model_probs.detach().float().cpu())
    params = {**base.params, "round": round}
    return _measure("incomplete", soft, base.labels, k, params)


class WeakConfig(SourceConfig):
    """Weak supervision as soft labels, built from the training labels and looked up by sample id.

    For methods that learn from soft labels (use ``soft-label``); see docs/methods.md,
    "Weak supervision as soft labels".
    """

    source: Literal["weak"] = "weak"
    kind: Literal["partial", "noise", "incomplete", "file"] = Field(
        ..., description="partial labels | additive noise | incomplete supervision (round 0) | a soft-label file")
    k: int = Field(2, ge=1, description="partial: candidate-set size; others: the k the indicators are reported at")
    unreliability: float = Field(0.0, ge=0, le=1, description="partial: share of candidate sets without the true class")
    ambiguity: float | None = Field(None, ge=0, le=1, description="partial: P(confusing class in the set); "
                                                                  "None = the least possible")
    scale: float = Field(0.5, ge=0, description="noise: d = onehot + scale * |N(0, I)|, renormalised")
    labelled_fraction: float = Field(0.1, gt=0, le=1, description="incomplete: share of each class that keeps its label")
    path: str | None = Field(None, description="file: a soft-label file (relative to the recipe's folder)")
    seed: int | None = Field(None, description="seed of the draw; None = the run seed")

    @model_validator(mode="after")
    def _path_for_file(self) -> "WeakConfig":
        if (self.kind == "file") != (self.path is not None):
            raise ValueError("soft_labels.path is needed for kind: file and only there")
        return self

    def dependencies(self) -> list[Dependency]:
        return [Dependency("soft_labels.path", self.path, "file")] if self.path is not None else []


@register_source
class WeakTable(SoftLabelTable):
    """The table a ``weak`` section describes, with the report of what was built (``report()``)."""

    Config = WeakConfig

    def __init__(self, built: WeakLabels, sample_ids: Tensor) -> None:
        super().__init__(built.soft_labels, sample_ids)
        self.built_report = built.report()

    def report(self) -> dict[str, Any]:
        return self.built_report

    @classmethod
    def build(cls, config: WeakConfig, setup: SourceSetup) -> "WeakTable":
        """Draw the table (seed: the section's own ``seed`` or else the run seed) or read the file."""
        train, num_classes = setup.data.train, setup.data.num_classes
        labels = train.labels.cpu()
        seed = config.seed if config.seed is not None else setup.seed
        kind = config.kind
        if kind == "partial":
            built = partial_labels(labels, num_classes, k=config.k, unreliability=config.unreliability,
                                   ambiguity=config.ambiguity, seed=seed)
        elif kind == "noise":
            built = noisy_labels(labels, num_classes, scale=config.scale, k=config.k, seed=seed)
        elif kind == "incomplete":
            built = incomplete_labels(labels, num_classes, labelled_fraction=config.labelled_fraction, seed=seed)
        else:
            path = setup.product(config.dependencies()[0])
            blob = load_soft_labels(path)
            if blob["soft_labels"].shape[1] != num_classes:
                raise ValueError(f"soft_labels.path {path}: {blob['soft_labels'].shape[1]} classes, the data has "
                                 f"{num_classes}")
            soft, file_labels = rows_for_split(blob, train)
            built = _measure("file", soft, file_labels, config.k, {"path": str(path), **blob["meta"]})
        return cls(built, train.ids)
