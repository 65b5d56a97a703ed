"""Small value types shared by every layer: what a batch carries and what a training step returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from softdistill.data.views import ViewPlan

__all__ = ["Batch", "StepOutput", "InputSpec", "MethodContext", "RecipeFacts"]


@dataclass
class Batch:
    """A training or evaluation batch: inputs, hard labels, and the address of every sample's view.

    ``sample_id`` is each sample's stable id in its data set (not a row position after the
    validation split or the per-class subset) and ``view`` which of its augmented views the
    input shows (:mod:`softdistill.data.views`); cached or stored soft labels and per-sample
    draws key on the pair (a batch of your own may leave them out when nothing looks soft labels
    up by address).  A mixed view carries ``y`` (the label of the sample itself), ``y_b``
    (its partner's label) and ``lam`` (B,), the share of the sample:
    ``x = lam * x_a + (1 - lam) * x_b``.

    ``sample_id`` and ``view`` live on the batch's device.  The loaders, which know the address
    on the host, also give it there (``host_sample_id``, ``host_view``: CPU int64), so that a
    source reading host memory (a store) looks soft labels up without waiting for the device.

    Args:
        x: the inputs, B x ...
        y: B hard labels (int64).
        sample_id, view: B sample ids and views (int64), or None.
        y_b, lam: the partners' labels and the samples' shares of a mixed view, or None.
        host_sample_id, host_view: CPU copies of the address (the loaders give them).
        second: under a plan with ``views_per_step: 2``, the same samples as their second view of the
            step (a batch of its own, with its own address; :mod:`softdistill.data.views`), else None.

    Example:
        >>> batch = Batch(x=torch.zeros(4, 3), y=torch.tensor([0, 1, 2, 0]), sample_id=torch.arange(4),
        ...               view=torch.zeros(4, dtype=torch.long))
        >>> len(batch), [len(part) for part in batch.chunks(3)]
        (4, [2, 1, 1])
    """

    x: Tensor
    y: Tensor
    sample_id: Tensor | None = None
    view: Tensor | None = None
    y_b: Tensor | None = None
    lam: Tensor | None = None
    host_sample_id: Tensor | None = None
    host_view: Tensor | None = None
    second: "Batch | None" = None

    @property
    def is_mixed(self) -> bool:
        return self.lam is not None

    def __len__(self) -> int:
        return self.y.shape[0]

    def with_(self, **changes) -> "Batch":
        return replace(self, **changes)

    def host_address(self) -> tuple[Tensor, Tensor]:
        """(sample ids, views) on the host: the loader's copies; for a batch made without them,
        copies of ``sample_id`` and ``view`` (which wait for the device)."""
        if self.host_sample_id is not None and self.host_view is not None:
            return self.host_sample_id, self.host_view
        if self.sample_id is None or self.view is None:
            raise ValueError("soft labels looked up by address need the batch's sample_id and view")
        return self.sample_id.cpu(), self.view.cpu()

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """The batch on ``device``; the host copies of its address stay on the host.

        Args:
            device: the target device.
            non_blocking: copy without waiting (from pinned memory).

        Returns:
            A new :class:`Batch`.

        Example:
            >>> Batch(x=torch.zeros(2, 3), y=torch.tensor([0, 1])).to("cpu").x.device
            device(type='cpu')
        """
        return self._mapped(lambda tensor: tensor.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        """The batch in page-locked memory, for copies to a GPU without waiting (a DataLoader with
        ``pin_memory=True`` calls it); the host copies of the address stay as they are."""
        return self._mapped(Tensor.pin_memory)

    def _mapped(self, fn: Callable[[Tensor], Tensor]) -> "Batch":
        """A new batch of ``fn`` of every tensor, but for the host copies of the address."""
        host = {"host_sample_id", "host_view"}
        return Batch(**{f.name: value if value is None or f.name in host else fn(value)
                        for f in dataclass_fields(self) for value in [getattr(self, f.name)]})

    def chunks(self, count: int) -> list["Batch"]:
        """The batch cut into ``count`` near-equal consecutive parts (gradient accumulation)."""
        fields = {f.name: getattr(self, f.name) for f in dataclass_fields(self)}
        parts = {name: ([None] * count if value is None else value.chunks(count) if isinstance(value, Batch)
                        else value.tensor_split(count))
                 for name, value in fields.items()}
        return [Batch(**{name: parts[name][i] for name in fields}) for i in range(count)]


@dataclass
class StepOutput:
    """What a method returns for one batch.

    ``losses``: named loss terms, each a scalar tensor; the trainer sums them, back-propagates the
    sum and logs each term.  ``metrics``: named diagnostics (scalars, no gradient) that the trainer
    averages over the epoch and logs, e.g. the WSL regularization-sample share.

    Args:
        logits: the student's B x K logits.
        losses: name -> scalar loss term.
        metrics: name -> scalar diagnostic.

    Example:
        >>> out = StepOutput(torch.zeros(2, 3), {"ce": torch.tensor(1.0), "kd": torch.tensor(0.5)})
        >>> sum(out.losses.values())
        tensor(1.5000)
    """

    logits: Tensor
    losses: dict[str, Tensor]
    metrics: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class InputSpec:
    """Shape and normalisation of the images a method receives: ``x = (pixels - mean) / std``."""

    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class MethodContext:
    """What a method may need from its run beyond its hyper-parameters.

    ``resolve_artifact(dependency)`` turns a :class:`~softdistill.soft_labels.base.Dependency` the
    method's settings name (a path relative to the recipe's folder) into the file it means: a
    checkpoint is returned as it is; a recipe of something the method uses (e.g. a VAE recipe) is
    trained once, under the run's machine settings, and the path of its product returned.
    """

    inputs: InputSpec
    resolve_artifact: Callable[[Any], Path] = Path
    quiet: bool = False
    class_names: tuple[str, ...] = ()  # of the data, for figures; empty when not known


@dataclass(frozen=True)
class RecipeFacts:
    """What a recipe fixes that a method's or source's settings may be checked against: the run's
    ``epochs``, the data's class count and the training views' ``plan``; None where it is not known
    (a recipe that does not train has no epochs; a data set of files knows its classes once read)."""

    epochs: int | None = None
    num_classes: int | None = None
    plan: "ViewPlan | None" = None
