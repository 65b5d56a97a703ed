"""In-memory datasets, the on-device normalisation, and a deterministic, DDP-aware batch loader.

Images are held as one uint8 tensor on the training device; a batch is a gather plus a few
vectorised operations, which on small images is far faster than a per-sample DataLoader.
The order of an epoch comes from a generator seeded by (seed, epoch); the augmentation of every
sample is its view under a :class:`~softdistill.data.views.ViewPlan`, a pure function of
(plan seed, sample id, view).  So an epoch is reproducible on its own (exact resume) and
identical across DDP ranks (each rank takes its slice of the global batch).
"""

from __future__ import annotations

import math

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor

from softdistill.data.samples import IdIndex, TensorSet
from softdistill.data.views import ViewParams, ViewPlan
from softdistill.types import Batch

__all__ = ["BatchTransform", "BatchLoader", "EpochBatches", "Fetched", "fetch", "assemble", "epoch_generator",
           "pixel_stats"]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator whose stream depends only on (seed, epoch)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def pixel_stats(chunks: Iterable[Tensor]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation (unbiased) of uint8 image chunks (B x C x H x W), in [0, 1]
    units: exact integer sums, one chunk in memory at a time, one rounding at the end."""
    count, total, squares = 0, None, None
    for chunk in chunks:
        x = chunk.transpose(0, 1).reshape(chunk.shape[1], -1).long()
        sums, sq = x.sum(1).tolist(), (x * x).sum(1).tolist()
        total = sums if total is None else [a + b for a, b in zip(total, sums)]
        squares = sq if squares is None else [a + b for a, b in zip(squares, sq)]
        count += x.shape[1]
    if total is None or squares is None or count < 2:
        raise ValueError("normalisation statistics need at least two pixels")
    mean = tuple(s / (255 * count) for s in total)
    std = tuple(max(math.sqrt((count * q - s * s) / (count * (count - 1) * 255**2)), 1e-6)
                for s, q in zip(total, squares))
    return mean, std


class BatchTransform:
    """uint8 images -> float in [0, 1] -> standardised per channel: ``x = (u8 / 255 - mean) / std``.

    Args:
        mean, std: one value per channel, in [0, 1] units.

    Example:
        >>> BatchTransform([0.5], [0.25])(torch.tensor([[[[0, 255]]]], dtype=torch.uint8))
        tensor([[[[-2.,  2.]]]])
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    @staticmethod
    def to_unit(images: Tensor) -> Tensor:
        return images.float().div_(255)

    def normalize_(self, x: Tensor) -> Tensor:
        """Standardise float images ``x`` in place; returns ``x``."""
        return x.sub_(self.mean.to(x.device, non_blocking=True)).div_(self.std.to(x.device, non_blocking=True))

    def __call__(self, images: Tensor) -> Tensor:
        return self.normalize_(self.to_unit(images))


@dataclass
class Fetched:
    """The raw material of one batch, before the device-side steps: uint8 images of the samples (and,
    for a mixing plan, of their partners with the mixing parameters), labels, sample ids, views.

    The memory loader gathers it on the device; the stream loader decodes it in a worker and moves
    it (pinned, non-blocking on CUDA).  :func:`assemble` turns it into the same Batch either way.
    The address (``ids``, ``views``, ``partner_ids``) stays on the host, where the views'
    parameters are computed and where a store looks soft labels up.
    """

    images: Tensor
    labels: Tensor
    ids: Tensor
    views: Tensor
    partner_images: Tensor | None = None
    partner_labels: Tensor | None = None
    partner_ids: Tensor | None = None
    mixing: ViewParams | None = None
    placed: bool = False  # the views' crop and flip are in the images already (a stream worker did them)
    left_out: Tensor | None = None  # ids of the samples of the batch left out (data.on_corrupt: skip)
    unreadable: tuple[str, ...] = ()  # why: the errors that name their files
    second: "Fetched | None" = None  # the same samples as their second view of the step (views_per_step: 2)

    HOST: ClassVar[tuple[str, ...]] = ("mixing", "placed", "left_out", "unreadable")  # never moved or pinned

    def _map(self, fn: Callable[[Tensor], Tensor], keep: tuple[str, ...] = ()) -> "Fetched":
        def mapped(name: str, value: Any) -> Any:
            if value is None or name in self.HOST + keep:
                return value
            return value._map(fn, keep) if isinstance(value, Fetched) else fn(value)

        return Fetched(**{f.name: mapped(f.name, getattr(self, f.name)) for f in fields(self)})

    def pin_memory(self) -> "Fetched":
        """Page-locked copies (called by DataLoader's pinning thread)."""
        return self._map(Tensor.pin_memory)

    def to(self, device: torch.device, non_blocking: bool = False) -> "Fetched":
        """The images and labels on ``device``; the address and the mixing parameters stay on the host."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking), keep=("ids", "views", "partner_ids"))


def fetch(rows: Tensor, views: Tensor, labels: Tensor, ids: Tensor, images_of: Callable[[Tensor, Tensor], Tensor],
          plan: ViewPlan | None, placed: bool = False) -> Fetched:
    """What the batch of views ``views`` of the samples at ``rows`` needs: ``images_of(rows, views)``
    gives uint8 images; a mixing plan adds the partners' images, labels, ids and mixing parameters.
    ``placed``: ``images_of`` gives the views' crop and flip already (a stream decoder), not left to
    :func:`assemble`."""
    batch_ids = ids[rows]
    images = images_of(rows, views)
    fetched = Fetched(images, labels[rows.to(labels.device, non_blocking=True)], batch_ids, views,
                      placed=placed and plan is not None)
    if plan is None or not plan.mixes:
        return fetched
    mixing = plan.mixing(batch_ids, views, rows, len(ids), tuple(images.shape[-2:]))
    partner = mixing.partner
    fetched.partner_images = images_of(partner, views)
    fetched.partner_labels = labels[partner.to(labels.device, non_blocking=True)]
    fetched.partner_ids = ids[partner]
    fetched.mixing = mixing
    return fetched


def assemble(fetched: Fetched, transform: BatchTransform, plan: ViewPlan | None, channels_last: bool = False) -> Batch:
    """The batch of ``fetched`` (on its device): to [0, 1], the views' crop, flip and mix, standardisation
    (in the channels_last memory format when asked), with its second views as ``Batch.second`` when it has
    them.  Host tensors are copied without waiting for the device; the batch keeps the host's copy of its
    address too (``Batch.host_sample_id``, ``host_view``)."""
    f = fetched
    y_b = lam = None
    # the crop (zero padding) and flip commute exactly with the division by 255: done on the uint8
    # images (here, or already by a stream worker), they move a quarter of the bytes
    def placed(images: Tensor, ids: Tensor) -> Tensor:
        return plan.place(images, ids, f.views) if plan is not None and not f.placed else images

    x = transform.to_unit(placed(f.images, f.ids))
    if plan is not None:
        if f.mixing is not None:
            assert f.partner_images is not None and f.partner_ids is not None
            x = plan.combine(x, transform.to_unit(placed(f.partner_images, f.partner_ids)), f.mixing)
            y_b = f.partner_labels
            lam = f.mixing.lam.to(x.device, non_blocking=True)
    x = transform.normalize_(x)  # x is this batch's own tensor
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    second = assemble(f.second, transform, plan, channels_last) if f.second is not None else None
    return Batch(x=x, y=f.labels, sample_id=f.ids.to(x.device, non_blocking=True),
                 view=f.views.to(x.device, non_blocking=True), y_b=y_b, lam=lam, host_sample_id=f.ids,
                 host_view=f.views, second=second)


class EpochBatches:
    """Which samples each batch of an epoch holds, for this process: the rules every loader shares.

    ``batch_size`` is the global batch.  Under DDP (``world_size > 1``) rank r receives the r-th
    of ``world_size`` near-equal slices of every global batch, so the ranks together see exactly
    the batches a single process would.  ``plan`` (training only) augments every sample as its
    view of the epoch; without one every batch shows the clean images (view 0).  ``seed`` seeds the
    shuffled order.  ``ids`` are the split's sample ids (a plan may choose views per sample).  Call
    :meth:`set_epoch` before each epoch (epochs are counted from 1).  ``channels_last`` gives the
    images in that memory layout.  ``every_process_steps`` (default: ``shuffle``, i.e. training) leaves
    out a last global batch smaller than the number of processes, which would leave a process without
    a slice while the others step.
    """

    def __init__(self, ids: Tensor, batch_size: int, *, shuffle: bool = False, drop_last: bool = False,
                 plan: ViewPlan | None = None, seed: int = 0, rank: int = 0, world_size: int = 1,
                 channels_last: bool = False, every_process_steps: bool | None = None) -> None:
        if batch_size < world_size:
            raise ValueError(f"batch size {batch_size} is smaller than the number of processes {world_size}")
        self.ids = ids
        self.size = len(ids)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.plan = plan if plan is not None and plan.is_random else None
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.channels_last = channels_last
        self.every_process_steps = shuffle if every_process_steps is None else every_process_steps
        self._index: IdIndex | None = None  # of the split's ids, for batch(), made on first use
        self.epoch = 1  # the first epoch, until set_epoch
        self.skip = 0
        # samples left out of the batches of the current (or last) pass because their image could not be
        # decoded; None: a loader that never leaves a sample out (the stream loader's data.on_corrupt: skip does)
        self.skipped: int | None = None

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Show epoch ``epoch`` next, from its batch ``skip`` on (a resume in the middle of the epoch)."""
        if not 0 <= skip <= len(self):
            raise ValueError(f"cannot skip {skip} of the {len(self)} batches of an epoch")
        self.epoch = epoch
        self.skip = skip

    def __len__(self) -> int:
        full, rest = divmod(self.size, self.batch_size)
        # A training tail smaller than the number of ranks would leave a rank without samples
        # (DDP needs every rank to step): drop it.  Evaluation keeps it; empty slices are skipped.
        keep_rest = rest > 0 and not self.drop_last and (rest >= self.world_size or not self.every_process_steps)
        return full + int(keep_rest)

    def epoch_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """(rows, views) of this process's batches of the epoch, from batch ``skip`` on (CPU int64)."""
        n = self.size
        order = torch.randperm(n, generator=epoch_generator(self.seed, self.epoch)) if self.shuffle else torch.arange(n)
        for b in range(self.skip, len(self)):
            global_rows = order[b * self.batch_size:(b + 1) * self.batch_size]
            rows = torch.tensor_split(global_rows, self.world_size)[self.rank]
            if len(rows):
                yield rows, (self.plan.views_in_epoch(self.ids[rows], self.epoch) if self.plan is not None
                             else torch.zeros(len(rows), dtype=torch.long))

    def batch_of(self, rows: Tensor, views: Tensor, second_views: Tensor | None = None) -> Batch:
        """The batch of the views ``views`` of the samples at ``rows``, with their ``second_views`` as
        ``Batch.second`` when given (made by the loaders, not by the rules)."""
        raise NotImplementedError(f"{type(self).__name__} chooses batches; a loader makes them")

    def batch(self, sample_ids: Tensor | Sequence[int], views: Tensor | Sequence[int] | int) -> Batch:
        """The batch of the views ``views`` of the samples ``sample_ids``: any of the split's, in any order.

        Args:
            sample_ids: B sample ids of the split.
            views: B views, or one view for all.

        Returns:
            The :class:`~softdistill.types.Batch` (a ValueError names an id the split does not hold).
        """
        ids = torch.as_tensor(sample_ids).long().cpu().reshape(-1)
        if self._index is None:
            self._index = IdIndex(self.ids)
        rows, found = self._index.find(ids)
        if not bool(found.all()):
            raise ValueError(f"sample id {int(ids[~found][0])} is not in the split ({self.size} samples)")
        return self.batch_of(rows, torch.broadcast_to(torch.as_tensor(views).long().cpu(), ids.shape).clone())

    def second_views(self, views: Tensor) -> Tensor | None:
        """The second views a training step shows of samples shown as ``views``: None unless the plan shows
        two views per step (:meth:`~softdistill.data.views.ViewPlan.second_views`)."""
        return self.plan.second_views(views) if self.plan is not None and self.plan.views_per_step == 2 else None

    def ordered_batches(self, view: int) -> Iterator[tuple[Tensor, Tensor]]:
        """(rows, views): every sample of the split in row order, each as its view ``view`` (this process alone)."""
        for start in range(0, self.size, self.batch_size):
            rows = torch.arange(start, min(start + self.batch_size, self.size))
            yield rows, torch.full((len(rows),), view, dtype=torch.long)


class BatchLoader(EpochBatches):
    """Iterate over a :class:`TensorSet` held on its device in batches of :class:`~softdistill.types.Batch`
    (the rules of :class:`EpochBatches`): the fast path for data that fits on the device, usable as the
    loader of any loop (call :meth:`set_epoch` each epoch, counted from 1).

    Args:
        data: the split (moved to the device by the caller: ``data.to(device)``).
        batch_size: the global batch.
        transform: the normalisation.
        rules: :class:`EpochBatches`' keywords (``shuffle``, ``drop_last``, ``plan``, ``seed``, ``rank``,
            ``world_size``, ``channels_last``).

    Example:
        >>> data = TensorSet(torch.randint(0, 256, (5, 1, 2, 2), dtype=torch.uint8), torch.tensor([0, 1, 0, 1, 0]))
        >>> loader = BatchLoader(data, 2, BatchTransform([0.5], [0.5]), shuffle=True, plan=ViewPlan(hflip=True))
        >>> loader.set_epoch(1)
        >>> [len(batch) for batch in loader]
        [2, 2, 1]
        >>> loader.batch([4, 0], views=3).sample_id  # any views of any samples, by sample id
        tensor([4, 0])
    """

    def __init__(self, data: TensorSet, batch_size: int, transform: BatchTransform, **rules: Any) -> None:
        super().__init__(data.ids, batch_size, **rules)
        self.data = data
        self.transform = transform

    def __iter__(self) -> Iterator[Batch]:
        for rows, views in self.epoch_batches():
            yield self.batch_of(rows, views, self.second_views(views))

    def in_order(self, view: int) -> Iterator[Batch]:
        """Every sample of the split in row order, each as its view ``view`` (this process alone)."""
        for rows, views in self.ordered_batches(view):
            yield self.batch_of(rows, views)

    def batch_of(self, rows: Tensor, views: Tensor, second_views: Tensor | None = None) -> Batch:
        """The batch of the views ``views`` of the samples at ``rows`` (CPU int64), with their ``second_views``
        as ``Batch.second`` when given."""
        images, ids = self.data.images, self.data.ids

        def images_of(rows: Tensor, views: Tensor) -> Tensor:
            gathered = images[rows.to(images.device, non_blocking=True)]
            return self.plan.transformed(gathered, ids[rows], views) if self.plan is not None else gathered

        first = fetch(rows, views, self.data.labels, ids, images_of, self.plan)
        if second_views is not None:
            first.second = fetch(rows, second_views, self.data.labels, ids, images_of, self.plan)
        return assemble(first, self.transform, self.plan, self.channels_last)
