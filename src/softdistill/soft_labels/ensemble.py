"""Several soft-label sources as one (``source: ensemble``): the members' soft labels combined per sample.

::

    soft_labels:
      source: ensemble
      members:                                   # two or more soft_labels sections of any source
        - {source: teacher, recipe: resnet8.yaml}
        - {source: store, recipe: cnn-views.yaml}
        - {source: cache, recipe: resnet8.yaml, select: epoch_1}
      combine: {average: probabilities, temperature: 4, weights: confidence}

Each member is made and resolved like a source of its own (its recipes trained or labelled once,
named ``soft_labels.members[i]....`` in messages).  With ``z_m`` the B x K logits of member m
and ``w_m`` its weight (per sample, ``sum_m w_m = 1``), the ensemble returns

- ``average: probabilities`` (default): ``p = sum_m w_m softmax(z_m / T)`` at ``temperature`` T
  (default 1), returned as the logits ``T log p`` (so ``softmax(z / T) = p``: a method at the same
  temperature learns from ``p`` itself, and KD's gradient is that of ``sum_m w_m KL_T(z_m, z_s)``,
  the multi-teacher loss);
- ``average: logits``: ``z = sum_m w_m z_m``.

``weights``: ``equal`` (``1 / M``); a list of M non-negative numbers (normalised to sum 1);
``confidence``: CA-MKD (Zhang, Chen, Wang, ICASSP 2022), per sample,
``w_m = (1 - softmax_m(-log p_m(y))) / (M - 1)`` with ``p_m = softmax(z_m)``: a member less sure of
the true label y gets less weight; ``indicators``: per true class a, from the biased-soft-labels
indicators (Yuan et al., NeurIPS 2023) of each member's soft labels of the training split (view 0),
``w_m(a) proportional to max(0, 1 - Delta_k^m(a) - gamma_k^m(a))`` (equal weights for a class no
member keeps clear of the sufficient condition's bound).  The last two read the true labels, so
they serve no new inputs (HARD) nor mixed views.  What an ensemble serves is what all its members
serve (:meth:`EnsembleConfig.serves`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from typing import Any, Literal, Union

import torch
from pydantic import Field, SerializeAsAny, field_validator, model_validator
from torch import Tensor, nn

from softdistill.checkpoint import CheckpointError
from softdistill.compatibility import CAPABILITIES, INPUT_GRAD, MIXED, ONLINE
from softdistill.engine.predict import predict
from softdistill.losses import at_least_float32
from softdistill.metrics.soft_labels import class_indicators
from softdistill.schema import StrictConfig, nested_problems, validate_registry_section
from softdistill.soft_labels.base import (Dependency, SoftLabelSource, SourceConfig, SourceSetup, register_source,
                                          sources)
from softdistill.types import Batch, RecipeFacts

__all__ = ["CombineConfig", "EnsembleConfig", "Ensemble", "indicator_weights"]

MEMBER_EXAMPLE = "{source: teacher, recipe: teacher.yaml}"
#: weights that read the batch's true labels
LABEL_WEIGHTS = ("confidence", "indicators")
#: the lists of members being validated (a YAML alias can nest an ensemble in itself)
_validating: ContextVar[tuple[int, ...]] = ContextVar("validating_ensembles", default=())


class CombineConfig(StrictConfig):
    """``combine:`` of an ensemble: what is averaged, at which temperature, with which weights."""

    average: Literal["probabilities", "logits"] = Field(
        "probabilities", description="probabilities: sum_m w_m softmax(z_m / T), returned as T log p; logits: "
                                     "sum_m w_m z_m")
    temperature: float | None = Field(None, gt=0, description="average: probabilities: the temperature T they are "
                                                              "averaged at (default 1)")
    weights: Union[Literal["equal", "confidence", "indicators"], list[float]] = Field(
        "equal", description="equal | [w_1, ..., w_M] (fixed, normalised) | confidence (CA-MKD, per sample) | "
                             "indicators (per class, from Delta_k and gamma_k)")
    k: int | None = Field(None, ge=1, description="weights: indicators: the k of Delta_k and gamma_k (default 1)")

    @field_validator("weights")
    @classmethod
    def _usable_weights(cls, weights: str | list[float]) -> str | list[float]:
        if isinstance(weights, list):
            if any(not w >= 0 or w == float("inf") for w in weights):
                raise ValueError("fixed weights must be finite and non-negative")
            if not sum(weights) > 0:
                raise ValueError("fixed weights must not sum to zero (they are normalised to sum 1)")
        return weights

    @model_validator(mode="after")
    def _settings_of_the_rule(self) -> "CombineConfig":
        if self.temperature is not None and self.average == "logits":
            raise ValueError("temperature belongs to average: probabilities (logits are averaged as they are)")
        if self.k is not None and self.weights != "indicators":
            raise ValueError("k belongs to weights: indicators")
        return self

    @property
    def reads_labels(self) -> bool:
        """Whether the weights read the batch's true labels."""
        return isinstance(self.weights, str) and self.weights in LABEL_WEIGHTS


@contextmanager
def _validating_members(members: list[Any]) -> Iterator[bool]:
    """Whether ``members`` is already being validated (an ensemble nested in itself); marks it while inside."""
    outer = _validating.get()
    token = _validating.set((*outer, id(members)))
    try:
        yield id(members) in outer
    finally:
        _validating.reset(token)


def _member_field(index: int, field: str) -> str:
    """The dotted key of a member's field ``field`` (``soft_labels.recipe`` -> ``soft_labels.members[1].recipe``)."""
    below = field.removeprefix("soft_labels.") if field.startswith("soft_labels.") else field
    return f"soft_labels.members[{index}].{below}"


class EnsembleConfig(SourceConfig):
    """Two or more soft-label sections (``members``) combined by ``combine`` (see the module docstring)."""

    source: Literal["ensemble"] = "ensemble"
    members: list[SerializeAsAny[SourceConfig]] = Field(..., description="two or more soft_labels sections, each of "
                                                                         "any source")
    combine: CombineConfig = Field(default_factory=CombineConfig)

    @field_validator("members", mode="before")
    @classmethod
    def _members_by_their_sources(cls, raw: Any) -> Any:
        """Each member validated by the schema of the source it names; two or more, none holding the ensemble."""
        if not isinstance(raw, list):
            return raw
        with _validating_members(raw) as nested_in_itself:
            if nested_in_itself:
                raise nested_problems(["members: the ensemble is nested in itself (a YAML alias of a section that "
                                       "holds it): give each member its own section"])
            checked = [member if isinstance(member, SourceConfig)
                       else validate_registry_section(member, f"members[{i}]", sources, MEMBER_EXAMPLE)
                       for i, member in enumerate(raw)]
        problems = [p for entry in checked if not isinstance(entry, SourceConfig) for p in entry[1]]
        if len(raw) < 2:
            problems.append(f"members: an ensemble needs two or more members, got {len(raw)}")
        if problems:
            raise nested_problems(problems)
        return [entry if isinstance(entry, SourceConfig) else entry[0] for entry in checked]

    @model_validator(mode="after")
    def _a_weight_per_member(self) -> "EnsembleConfig":
        weights = self.combine.weights
        if isinstance(weights, list) and len(weights) != len(self.members):
            raise ValueError(f"combine.weights: {len(weights)} weights for {len(self.members)} members")
        return self

    def serves(self) -> frozenset[str]:
        """What every member serves; weights that read the true labels serve no new inputs."""
        shared = frozenset.intersection(*(member.serves() for member in self.members))
        return shared - {ONLINE, INPUT_GRAD} if self.combine.reads_labels else shared

    def why_not(self, capability: str) -> str:
        lacking = [f"soft_labels.members[{i}] ({member.source})" for i, member in enumerate(self.members)
                   if capability not in member.serves()]
        if lacking:
            return f" (its {', '.join(lacking)} cannot)"
        if capability in (ONLINE, INPUT_GRAD) and self.combine.reads_labels:
            return (f" (combine.weights: {self.combine.weights} reads the true labels of a batch, which new inputs do "
                    "not have)")
        return ""

    def member_dependencies(self) -> list[list[tuple[Dependency, Dependency]]]:
        """Per member, (each of its own dependencies, the same under its field in this recipe)."""
        return [[(own, replace(own, field=_member_field(i, own.field))) for own in member.dependencies()]
                for i, member in enumerate(self.members)]

    def dependencies(self) -> list[Dependency]:
        return [named for pairs in self.member_dependencies() for _, named in pairs]

    def dependency_problems(self, dependency: Dependency, needed: Any, recipe: Any) -> list[str]:
        """The checks of the member that names ``dependency`` (its data, its store's views)."""
        for member, pairs in zip(self.members, self.member_dependencies()):
            for own, named in pairs:
                if named == dependency:
                    return member.dependency_problems(own, needed, recipe)
        return []

    def problems(self, facts: RecipeFacts) -> list[str]:
        problems = [f"soft_labels.members[{i}] ({member.source}): {problem}"
                    for i, member in enumerate(self.members) for problem in member.problems(facts)]
        weights = self.combine.weights
        if self.combine.reads_labels and facts.plan is not None and facts.plan.mixes:
            problems.append(f"soft_labels.combine.weights: {weights} weighs each member by the true label of a sample, "
                            f"and {CAPABILITIES[MIXED]} have two; use equal or fixed weights")
        k = self.combine.k
        if k is not None and facts.num_classes is not None and k >= facts.num_classes:
            problems.append(f"soft_labels.combine.k = {k}: the indicators need k below the {facts.num_classes} classes")
        return problems


def indicator_weights(member_probs: Sequence[Tensor], labels: Tensor, k: int) -> Tensor:
    """M x K weights of M members per true class a: ``max(0, 1 - Delta_k^m(a) - gamma_k^m(a))`` normalised over
    the members (equal weights for a class where every member's is 0, or that has no sample), from each
    member's soft labels (probabilities, N x K) of the same N samples of true classes ``labels``."""
    margins = []
    for probs in member_probs:
        unreliability, ambiguity = class_indicators(probs, labels, k)
        margins.append((1.0 - unreliability - ambiguity).clamp_min(0).nan_to_num(0.0))
    margin = torch.stack(margins)
    total = margin.sum(dim=0, keepdim=True)
    return torch.where(total > 0, margin / total.clamp_min(1e-300), 1.0 / len(margins)).float()


def _naming_member(exc: Exception, where: str) -> Exception:
    """``exc`` with ``where`` before its message, of its own type when that type takes a message alone."""
    try:
        return type(exc)(f"{where}: {exc}")
    except TypeError:
        return exc


@register_source
class Ensemble(SoftLabelSource):
    """The members' soft labels combined per sample (see the module docstring); ``forward(batch)`` reads the
    batch's labels for ``confidence`` and ``indicators`` weights, so it needs a :class:`Batch` then."""

    Config = EnsembleConfig
    serves = frozenset(CAPABILITIES)  # at most: what an ensemble serves is what its members share (its section)

    def __init__(self, members: Sequence[SoftLabelSource], combine: CombineConfig,
                 class_weights: Tensor | None = None) -> None:
        """``class_weights``: M x K per-class weights, for ``weights: indicators`` (:func:`indicator_weights`)."""
        super().__init__()
        self.members = nn.ModuleList(members)
        self.combine = combine
        self.temperature = combine.temperature or 1.0
        weights = combine.weights
        fixed = None
        if not combine.reads_labels:
            fixed = torch.tensor(weights if isinstance(weights, list) else [1.0] * len(members), dtype=torch.float32)
            fixed = (fixed / fixed.sum()).view(-1, 1)
        self.register_buffer("fixed_weights", fixed)
        if (class_weights is None) != (weights != "indicators"):
            raise ValueError("class_weights go with weights: indicators, and only there")
        self.register_buffer("class_weights", class_weights)

    @classmethod
    def build(cls, config: EnsembleConfig, setup: SourceSetup) -> "Ensemble":
        """Every member made as its own section would make it (from the products of its own dependencies),
        then, for ``weights: indicators``, each member's soft labels of view 0 of every training sample measured."""
        members = []
        for i, (member, pairs) in enumerate(zip(config.members, config.member_dependencies())):
            member_setup = replace(setup, products={own: setup.product(named) for own, named in pairs})
            try:
                members.append(sources.get(member.source).build(member, member_setup))
            except (ValueError, CheckpointError) as exc:
                raise _naming_member(exc, f"soft_labels.members[{i}] ({member.source})") from None
        class_weights = None
        if config.combine.weights == "indicators":
            passes = [predict(member, setup.views.in_order(0), whole_batch=True) for member in members]
            labels = passes[0].labels.cpu()
            probs = [torch.softmax(p.logits.cpu(), dim=1) for p in passes]
            class_weights = indicator_weights(probs, labels, config.combine.k or 1)
        return cls(members, config.combine, class_weights)

    def member_weights(self, logits: Tensor, labels: Tensor | None) -> Tensor:
        """M x B (or M x 1) weights of the members for logits M x B x K of samples of true classes ``labels``."""
        weights = self.combine.weights
        if weights == "confidence":
            members = len(logits)
            true = labels.view(1, -1, 1).expand(members, -1, 1)
            # B x M: a softmax over the last dimension treats every sample alike, wherever it sits in the batch
            # (over dimension 0 the CPU kernel rounds the batch's last columns differently)
            cross_entropy = -torch.log_softmax(logits, dim=-1).gather(2, true).squeeze(2).t().contiguous()
            return ((1.0 - torch.softmax(cross_entropy, dim=1)) / (members - 1)).t()
        if weights == "indicators":
            return self.class_weights[:, labels]
        return self.fixed_weights

    def combined(self, logits: Sequence[Tensor] | Tensor, labels: Tensor | None) -> Tensor:
        """The ensemble's B x K logits from its members' (M of B x K, e.g. in half precision under autocast, or
        M x B x K) for samples of true classes ``labels``; in float32 at least."""
        logits = torch.stack([at_least_float32(member_logits) for member_logits in logits])
        weights = self.member_weights(logits, labels)
        if self.combine.average == "logits":
            return (weights.unsqueeze(-1) * logits).sum(dim=0)
        t = self.temperature
        log_probs = torch.log_softmax(logits / t, dim=-1) + weights.log().unsqueeze(-1)
        return t * torch.logsumexp(log_probs, dim=0)

    def forward(self, batch: Batch | Tensor) -> Tensor:
        labels = None
        if self.combine.reads_labels:
            if not isinstance(batch, Batch):
                raise ValueError(f"an ensemble with weights: {self.combine.weights} reads the batch's true labels: "
                                 "call it with a Batch")
            labels = batch.y
        return self.combined([member(batch) for member in self.members], labels)

    def logits_with_input_grad(self, x: Tensor) -> Tensor:
        """The combined logits as a differentiable function of the input ``x`` (members that serve input gradients,
        weights that read no label)."""
        return self.combined([member.logits_with_input_grad(x) for member in self.members], None)

    def verify_lookups(self, sample_ids: Tensor, views: int | None) -> None:
        for member in self.members:
            member.verify_lookups(sample_ids, views)

    def prepare_inference(self, *, compile: bool | dict[str, Any] = False, channels_last: bool = False,
                          dtype: torch.dtype | None = None) -> None:
        for member in self.members:
            member.prepare_inference(compile=compile, channels_last=channels_last, dtype=dtype)

    def report(self) -> dict[str, Any]:
        report: dict[str, Any] = {"combine": self.combine.model_dump(mode="json"),
                                  "members": [member.report() for member in self.members]}
        if self.class_weights is not None:
            report["class_weights"] = self.class_weights.tolist()
        return report
