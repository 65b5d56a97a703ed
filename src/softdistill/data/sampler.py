"""softdistill's batches in a ``torch.utils.data.DataLoader``: for PyTorch Lightning, a Hugging Face loop
or a loop of your own.

:class:`GlobalBatchSampler` is a ``batch_sampler`` that gives each process its slice of every global
batch, in the order and with the views softdistill's own loaders show (the rules of
:class:`~softdistill.data.loader.EpochBatches`), and :class:`ViewDataset` turns a slice's addresses
``(row, view)`` into a :class:`~softdistill.types.Batch` (the views made as the loaders make them, in
the DataLoader's workers when it has some).  With
:func:`~softdistill.runtime.distributed.global_batch_weight` on each process's loss, N processes
compute the gradients of one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from softdistill.data.loader import BatchTransform, EpochBatches
from softdistill.data.samples import StreamSet, TensorSet
from softdistill.data.stream import split_loader
from softdistill.data.views import ViewPlan
from softdistill.runtime.distributed import process_group_context
from softdistill.types import Batch

__all__ = ["GlobalBatchSampler", "ViewDataset", "Address"]

#: an index of a :class:`ViewDataset`: a row of its split, or (row, view)
Address = int | tuple[int, int]


class GlobalBatchSampler:
    """A ``batch_sampler`` that gives this process its slice of every global batch of an epoch.

    The global batches are those of softdistill's loaders: the split's rows in an order drawn from
    (``seed``, epoch), cut into batches of ``batch_size``; process r of N takes the r-th of N near-equal
    slices of each (31 and 30 of 61), so the processes together see what one process sees.  With a
    ``plan``, each row comes with the view it shows in the epoch, as ``(row, view)``.

    Epochs: :meth:`set_epoch` takes your loop's count, and ``first_epoch`` says what that count starts
    at: 0 for Lightning (which calls ``set_epoch`` itself, through ``batch_sampler.sampler``) and for a
    loop over ``range(epochs)``, 1 for softdistill's trainer.  Until ``set_epoch`` is called the sampler
    gives the first epoch.  Under Lightning, build the DataLoader in ``train_dataloader`` and set
    ``Trainer(use_distributed_sampler=False)``: the slices are this sampler's.

    Args:
        sample_ids: the split's sample ids (row order), e.g. ``data.train.ids``.
        batch_size: the global batch (over all processes).
        first_epoch: the number your loop gives its first epoch (0 or 1; see above).
        shuffle: draw each epoch's order (else row order).
        drop_last: leave out the last, short global batch (a tail smaller than the process count is left out
            in any case, so that every process steps).
        plan: the views; the sampler then yields ``(row, view)`` pairs, else rows.
        seed: the seed of the order.
        rank, world_size: this process and the process count (default: torch.distributed's, else 0 and 1).

    Example:
        >>> sampler = GlobalBatchSampler(torch.arange(7), 3, first_epoch=0, shuffle=False, rank=1, world_size=2)
        >>> list(sampler)  # process 1's slices of the global batches [0 1 2] and [3 4 5] ([6] is too small for 2)
        [[2], [5]]
        >>> plan = ViewPlan(hflip=True, views=2)
        >>> sampler = GlobalBatchSampler(torch.arange(4), 4, first_epoch=0, shuffle=False, plan=plan, world_size=1)
        >>> sampler.set_epoch(1)  # the second epoch shows view 1
        >>> list(sampler)
        [[(0, 1), (1, 1), (2, 1), (3, 1)]]
    """

    def __init__(self, sample_ids: Tensor | Sequence[int], batch_size: int, *, first_epoch: int, shuffle: bool = True,
                 drop_last: bool = False, plan: ViewPlan | None = None, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None) -> None:
        group = process_group_context()
        self.batches = EpochBatches(torch.as_tensor(sample_ids).long(), batch_size, shuffle=shuffle,
                                    drop_last=drop_last, plan=plan, seed=seed,
                                    rank=group.rank if rank is None else rank,
                                    world_size=group.world_size if world_size is None else world_size,
                                    every_process_steps=True)
        self.with_views = plan is not None
        self.first_epoch = first_epoch
        self.sampler = self  # Lightning sets the epoch of ``dataloader.batch_sampler.sampler``
        self.set_epoch(first_epoch)

    def set_epoch(self, epoch: int) -> None:
        """Give the batches of epoch ``epoch`` (counted from ``first_epoch``) next.

        Args:
            epoch: your loop's epoch number.

        Returns:
            None.

        Example:
            >>> sampler = GlobalBatchSampler(torch.arange(4), 2, first_epoch=1, world_size=1)
            >>> sampler.set_epoch(1)  # the first epoch, counted from 1
        """
        if epoch < self.first_epoch:
            raise ValueError(f"epoch {epoch} comes before the first epoch, {self.first_epoch}")
        self.batches.set_epoch(epoch - self.first_epoch + 1)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[Address]]:
        for rows, views in self.batches.epoch_batches():
            yield list(zip(rows.tolist(), views.tolist())) if self.with_views else rows.tolist()


def _the_batch(batch: Batch) -> Batch:
    """The DataLoader's ``collate_fn`` for a :class:`ViewDataset`, whose batches are made whole."""
    return batch


class ViewDataset(Dataset):
    """A split's views for a ``torch.utils.data.DataLoader``: the index of a sample is its address
    ``(row, view)`` (or a row: view 0), and a batch of addresses is made at once into a
    :class:`~softdistill.types.Batch` on the CPU (``__getitems__``: the crop, flip, mix, your own
    :class:`~softdistill.data.views.ViewTransform` and the normalisation, as softdistill's loaders make
    them, in the DataLoader's workers when it has some).

    Args:
        data: the split (:class:`~softdistill.data.samples.TensorSet`, or a ``StreamSet`` decoded per batch).
        plan: the views (None: the clean images).
        transform: the normalisation (:class:`~softdistill.data.loader.BatchTransform`).
        resize: a ``StreamSet``'s images resized to this shorter side and centre-cropped (see ``data.eval_resize``).

    Example:
        >>> data = TensorSet(torch.randint(0, 256, (6, 1, 4, 4), dtype=torch.uint8), torch.arange(6) % 2)
        >>> views = ViewDataset(data, ViewPlan(crop_padding=1, views=2), BatchTransform([0.5], [0.25]))
        >>> loader = views.loader(4, first_epoch=0, seed=0, world_size=1)
        >>> [len(batch) for batch in loader]
        [4, 2]
        >>> views.__getitems__([(5, 1), (0, 1)]).sample_id
        tensor([5, 0])
    """

    def __init__(self, data: TensorSet | StreamSet, plan: ViewPlan | None, transform: BatchTransform, *,
                 resize: int | None = None) -> None:
        self.data, self.plan = data, plan
        self.views = split_loader(data, 1, transform, device=torch.device("cpu"), resize=resize, plan=plan)

    def __len__(self) -> int:
        return len(self.data)

    def __getitems__(self, addresses: Sequence[Address]) -> Batch:
        pairs = [(a, 0) if isinstance(a, int) else tuple(a) for a in addresses]
        rows, views = (torch.tensor(column, dtype=torch.long) for column in zip(*pairs)) if pairs else (
            torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
        return self.views.batch_of(rows, views, self.views.second_views(views))  # batch.second under views_per_step 2

    def __getitem__(self, address: Address) -> Batch:  # type: ignore[override]
        return self.__getitems__([address])

    def loader(self, batch_size: int, *, first_epoch: int, shuffle: bool = True, drop_last: bool = False,
               seed: int = 0, workers: int = 0, rank: int | None = None, world_size: int | None = None,
               **dataloader: Any) -> DataLoader:
        """A DataLoader of this process's slices of the global batches (a :class:`GlobalBatchSampler` over
        this dataset's ids and plan).

        Args:
            batch_size, first_epoch, shuffle, drop_last, seed, rank, world_size: as :class:`GlobalBatchSampler`.
            workers: the DataLoader's worker processes.
            dataloader: further DataLoader arguments (e.g. ``pin_memory``, ``persistent_workers``).

        Returns:
            The ``DataLoader``; its ``batch_sampler`` has ``set_epoch``.
        """
        sampler = GlobalBatchSampler(self.data.ids, batch_size, first_epoch=first_epoch, shuffle=shuffle,
                                     drop_last=drop_last, plan=self.plan, seed=seed, rank=rank, world_size=world_size)
        return DataLoader(self, batch_sampler=sampler, num_workers=workers, collate_fn=_the_batch, **dataloader)
