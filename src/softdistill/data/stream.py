"""A worker-based streaming loader for image folders and shards of any size.

A split is a :class:`StreamSet`: labels, sample ids and a way to open each sample's encoded image,
nothing decoded; :class:`FileSet` is that of an image folder (one file per sample), the shards of
:mod:`softdistill.data.shards` another.  The batches of
an epoch are those of the memory loader (:class:`~softdistill.data.loader.EpochBatches`: the same
global order from (seed, epoch), the same DDP slices, the same views); each batch is decoded by a
``torch.utils.data.DataLoader`` worker process into uint8 images of one size (a :class:`Decoder`)
and cropped and flipped there, pinned and copied without blocking to a CUDA device, where the mix
and the normalisation run exactly as in the memory loader (:func:`~softdistill.data.loader.assemble`).
So a stream loader and a memory loader over the same images yield identical batches, and
workers, ranks and a resumed run agree on every one.

An image that cannot be decoded stops the epoch with a :class:`DatasetFormatError` naming the file
(``on_corrupt="fail"``, the default); with ``on_corrupt="skip"`` its sample is left out of its batch
(and a sample whose mixing partner's image cannot be decoded too), so the batch is smaller and every
other sample, view and batch is unchanged: whether a sample is left out depends on its file (and its
view's partner) alone, the same in every worker, rank, epoch and resume.  The loader counts them
(:attr:`StreamLoader.skipped`) and warns once a pass (:class:`CorruptImageWarning`), naming the first
files.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, get_worker_info

from softdistill.data.loader import BatchLoader, BatchTransform, EpochBatches, Fetched, assemble, fetch, pixel_stats
from softdistill.data.samples import DatasetFormatError, StreamSet, TensorSet, UnreadableImageError
from softdistill.data.views import ViewParams, ViewPlan, ViewTransformError, crop
from softdistill.data.workers import in_workers
from softdistill.enums import ON_CORRUPT
from softdistill.hashing import hash_keys
from softdistill.types import Batch

__all__ = ["Decoder", "StreamLoader", "split_loader", "sample_stats", "decode_all", "CorruptImageWarning"]

#: how many of the unreadable files a warning names
NAMED = 5


class CorruptImageWarning(UserWarning):
    """With ``data.on_corrupt: skip``, samples were left out of a pass over a split: how many, and which files."""


@dataclass(frozen=True)
class Decoder:
    """Decode files to uint8 images of ``size`` x ``size``: a view's random resized crop when ``plan``
    has one (its box a pure function of the view), else resized to ``resize`` on the shorter side and
    centre-cropped when ``resize`` is given, else resized to the square (as the memory loader does)."""

    size: int
    plan: ViewPlan | None = None
    resize: int | None = None

    def __post_init__(self) -> None:
        if self.resize is not None and self.resize < self.size:
            raise ValueError(f"cannot centre-crop {self.size} pixels out of a shorter side of {self.resize}: "
                             "data.eval_resize must be >= data.image_size")

    def image(self, img: Any, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """The RGB ``PIL.Image`` ``img`` as uint8 H x W x 3: the crop ``box`` (top, left, bottom, right)
        resized to the square when given, else as the class docstring says."""
        if box is not None:
            top, left, bottom, right = box
            img = img.resize((self.size, self.size), _bilinear(), box=(left, top, right, bottom))
        elif self.resize is not None:
            img = _centre_crop(_shorter_side(img, self.resize), self.size)
        else:
            img = img.resize((self.size, self.size), _bilinear())
        return np.asarray(img, dtype=np.uint8)

    def batch(self, data: StreamSet, rows: Tensor, views: Tensor) -> Tensor:
        """uint8 B x 3 x size x size images of the views ``views`` of the samples of ``data`` at ``rows``,
        cropped and flipped as the views say."""
        images = [data.open(r) for r in rows.tolist()]
        ids = data.ids[rows]
        return self.placed([self.image(img, box) for img, box in zip(images, self.boxes(images, ids, views))], ids, views)

    def boxes(self, images: list[Any], sample_ids: Tensor, views: Tensor) -> list[Any]:
        """The crop box of each view (``None`` without a resized crop), drawn for the batch at once."""
        if self.plan is None or self.plan.resized_crop is None:
            return [None] * len(images)
        return self.plan.crop_box(sample_ids, views, torch.tensor([img.height for img in images]),
                                  torch.tensor([img.width for img in images])).tolist()

    def placed(self, arrays: list[np.ndarray], sample_ids: Tensor, views: Tensor) -> Tensor:
        """Decoded H x W x 3 arrays of the views ``(sample_ids[b], views[b])`` as one uint8 B x 3 x size x size
        tensor (B may be 0) in the views' places: each flipped as it is copied in (one copy per image, no
        pass of its own), then the plan's padding crop, its column offset mirrored for a flipped view
        (flip(crop(x, col)) == crop(flip(x), 2 * padding - col): the batch of ViewPlan.place, exactly).  A plan
        with a :class:`~softdistill.data.views.ViewTransform` runs it on each image first, then places them."""
        if self.plan is not None and self.plan.pipeline is not None:  # the plan's own pipeline first, then its places
            stacked = (torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous() if arrays
                       else torch.empty((0, 3, self.size, self.size), dtype=torch.uint8))
            return self.plan.place(self.plan.transformed(stacked, sample_ids, views), sample_ids, views)
        params = self.plan.geometry(sample_ids, views) if self.plan is not None else ViewParams()
        flips = params.flip.tolist() if params.flip is not None else [False] * len(arrays)
        out = torch.empty((len(arrays), 3, self.size, self.size), dtype=torch.uint8)
        if params.offsets is None and get_worker_info() is not None:
            # in a DataLoader worker, the batch as it is handed over: in shared memory from the start, as
            # PyTorch's default collate makes it, not copied there as it is sent (~12 ms a batch of 64 at 224)
            out.share_memory_()
        shared = out.numpy()  # the same memory: Pillow's read-only arrays are copied straight in
        for b, (array, flip) in enumerate(zip(arrays, flips)):
            shared[b] = (array[:, ::-1] if flip else array).transpose(2, 0, 1)
        if params.offsets is None:
            return out
        assert self.plan is not None
        offsets = params.offsets.clone()
        if params.flip is not None:
            offsets[params.flip, 1] = 2 * self.plan.crop_padding - offsets[params.flip, 1]
        return crop(out, offsets, self.plan.crop_padding)


def _bilinear() -> Any:
    from PIL import Image

    return Image.BILINEAR


def _shorter_side(img: Any, side: int) -> Any:
    """``img`` resized (bilinear) so that its shorter side is ``side``, the aspect ratio kept."""
    w, h = img.size
    if w <= h:
        return img.resize((side, int(side * h / w)), _bilinear())
    return img.resize((int(side * w / h), side), _bilinear())


def _centre_crop(img: Any, size: int) -> Any:
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


#: the errors a worker returns for the training process to raise as they are: they name a file or a view
PASSED_ON = (DatasetFormatError, ViewTransformError)
PassedOn = DatasetFormatError | ViewTransformError


class _Batches(Dataset):
    """A map-style dataset whose keys are whole batches ``(rows, views)``, or ``(rows, views, second_views)``
    for a step that shows each sample twice (``Fetched.second``): one key, one :class:`Fetched`.

    ``skip``: samples whose image (or whose mixing partner's image) cannot be decoded are left out of
    the batch, their ids in ``Fetched.left_out`` and the errors naming the files in ``Fetched.unreadable``."""

    def __init__(self, data: StreamSet, decoder: Decoder, plan: ViewPlan | None, skip: bool = False) -> None:
        self.data, self.decoder, self.plan, self.skip = data, decoder, plan, skip

    def __getitem__(self, key: tuple[Any, ...]) -> Fetched | PassedOn:
        """The batch of ``key``; in a DataLoader worker, a file's format error (or a view transform's) is returned,
        not raised, so that the training process raises it as it is (PyTorch would wrap it in the worker's
        traceback)."""
        rows, views, *second = (None if k is None else torch.as_tensor(k) for k in key)
        second_views = second[0] if second else None
        try:
            if self.skip:
                return self._skipping(rows, views, second_views)
            first = self._decoded(rows, views)
            if second_views is not None:
                first.second = self._decoded(rows, second_views)
            return first
        except PASSED_ON as exc:
            if get_worker_info() is None:
                raise
            return exc

    def _decoded(self, rows: Tensor, views: Tensor) -> Fetched:
        d = self.data
        return fetch(rows, views, d.labels, d.ids, lambda r, v: self.decoder.batch(d, r, v), self.plan, placed=True)

    def _skipping(self, rows: Tensor, views: Tensor, second_views: Tensor | None) -> Fetched:
        d = self.data
        images: dict[tuple[int, int], np.ndarray] = {}
        unreadable: dict[int, str] = {}  # row -> the error naming its file

        def readable(row: int, view: int) -> bool:
            """Decode view ``view`` of the sample at ``row`` (once); False when its image cannot be decoded."""
            if row in unreadable:
                return False
            if (row, view) not in images:
                try:
                    img = d.open(row)
                except UnreadableImageError as exc:
                    unreadable[row] = str(exc)
                    return False
                box = self.decoder.boxes([img], d.ids[row:row + 1], torch.tensor([view]))[0]
                images[row, view] = self.decoder.image(img, box)
            return True

        pairs = list(zip(rows.tolist(), views.tolist()))
        keep = [readable(r, v) for r, v in pairs]
        shown = [views] if second_views is None else [views, second_views]
        if self.plan is not None and self.plan.mixes and any(keep):
            # the partners of the whole batch: a sample's partner depends on its id and view alone
            for each in shown:
                partners = self.plan.mixing(d.ids[rows], each, rows, len(d.ids), (self.decoder.size,) * 2).partner
                keep = [k and readable(p, v) for k, p, v in zip(keep, partners.tolist(), each.tolist())]
        if second_views is not None:  # the same file: readable as the first view is, decoded with its own box
            keep = [k and readable(r, v) for k, r, v in zip(keep, rows.tolist(), second_views.tolist())]
        kept = torch.tensor(keep, dtype=torch.bool)
        # the errors naming the files: the batch's own first, then its samples' partners'
        why = tuple(dict.fromkeys([unreadable[r] for r, _ in pairs if r in unreadable] + list(unreadable.values())))
        if not kept.any():
            none = rows[:0]
            return Fetched(self.decoder.placed([], d.ids[none], views[:0]), d.labels[none], d.ids[none], views[:0],
                           left_out=d.ids[rows], unreadable=why)

        def decoded_views(views: Tensor) -> Fetched:
            return fetch(rows[kept], views[kept], d.labels, d.ids,
                         lambda r, v: self.decoder.placed([images[a, b] for a, b in zip(r.tolist(), v.tolist())],
                                                          d.ids[r], v),
                         self.plan, placed=True)

        fetched = decoded_views(views)
        if second_views is not None:
            fetched.second = decoded_views(second_views)
        fetched.left_out, fetched.unreadable = d.ids[rows[~kept]], why
        return fetched


def decoded(data: StreamSet, decoder: Decoder, plan: ViewPlan | None, batches: Iterable[tuple[Tensor, ...]],
            workers: int, pin: bool, what: str, skip: bool = False) -> Iterator[Fetched]:
    """The :class:`Fetched` of each ``(rows, views)`` of ``batches`` (or ``(rows, views, second_views)``, see
    :class:`_Batches`), decoded by ``workers`` processes (0: here;
    :func:`softdistill.data.workers.in_workers`); ``skip`` leaves out the samples whose image cannot be
    decoded (see :class:`_Batches`).  A corrupt file ends the pass with its own error; a worker that dies,
    with a :class:`~softdistill.data.workers.DataWorkerError` naming ``what`` was under way."""
    # keys as numpy arrays: pickled whole to a worker, where a tensor would be shared through a file descriptor
    keys = [tuple(None if k is None else k.numpy() for k in key) for key in batches]
    return in_workers(_Batches(data, decoder, plan, skip), keys, workers, pin=pin, what=what)


def check_on_corrupt(on_corrupt: str) -> bool:
    """Whether ``on_corrupt`` (one of ``data.on_corrupt``'s values) skips."""
    if on_corrupt not in ON_CORRUPT:
        raise ValueError(f"on_corrupt must be one of {ON_CORRUPT}, got {on_corrupt!r}")
    return on_corrupt == "skip"


class _LeftOut:
    """The samples a pass over a split left out, and the errors that name their files (the first few kept)."""

    def __init__(self, mixes: bool = False) -> None:
        self.mixes = mixes
        self.count = 0
        self.files: dict[str, None] = {}  # ordered, distinct
        self.more = False

    def add(self, fetched: Fetched) -> None:
        if fetched.left_out is not None:
            self.count += len(fetched.left_out)
        for message in fetched.unreadable:
            if message in self.files:
                continue
            if len(self.files) < NAMED:
                self.files[message] = None
            else:
                self.more = True

    def warn(self, what: str) -> None:
        if self.count:
            partner = " (or whose mixing partner's image)" if self.mixes else ""
            warnings.warn(f"{what}: data.on_corrupt: skip left out {self.count} sample(s) whose image{partner} could "
                          f"not be decoded: {'; '.join(self.files)}" + ("; and more" if self.more else ""),
                          CorruptImageWarning, stacklevel=3)


class StreamLoader(EpochBatches):
    """Iterate over a :class:`StreamSet` in batches of :class:`~softdistill.types.Batch`, decoding in
    ``workers`` DataLoader processes; the batching rules are :class:`EpochBatches`'."""

    def __init__(self, data: StreamSet, batch_size: int, transform: BatchTransform, *, device: torch.device,
                 workers: int = 0, resize: int | None = None, on_corrupt: str = "fail", **rules: Any) -> None:
        super().__init__(data.ids, batch_size, **rules)
        self.data = data
        self.transform = transform
        self.device = torch.device(device)
        self.workers = workers
        self.decoder = Decoder(data.image_size, self.plan, resize)
        self.on_corrupt = on_corrupt
        self.skips = check_on_corrupt(on_corrupt)
        # with skip: the samples left out of the pass under way (or the last one), as it reaches this process
        self.skipped = 0 if self.skips else None
        self.unreadable: tuple[str, ...] = ()  # the first few errors of that pass, naming their files

    def __iter__(self) -> Iterator[Batch]:
        if self.shuffle:  # training
            what = f"epoch {self.epoch}" + (f" from its batch {self.skip + 1}" if self.skip else "")
        else:
            what = f"a pass over {len(self.data)} samples"
        return self._load(((rows, views, self.second_views(views)) for rows, views in self.epoch_batches()), what)

    def in_order(self, view: int) -> Iterator[Batch]:
        """Every sample of the split in row order, each as its view ``view`` (this process alone)."""
        return self._load(self.ordered_batches(view), f"a pass over {len(self.data)} samples in order (view {view})")

    def batch_of(self, rows: Tensor, views: Tensor, second_views: Tensor | None = None) -> Batch:
        """The batch of the views ``views`` of the samples at ``rows`` (CPU int64), with their ``second_views``
        as ``Batch.second`` when given, decoded in this process: every one of them (an image that cannot be
        decoded is an error, whatever ``on_corrupt`` says)."""
        fetched = _Batches(self.data, self.decoder, self.plan)[rows, views, second_views]
        return assemble(fetched.to(self.device), self.transform, self.plan, self.channels_last)

    def _load(self, batches: Iterable[tuple[Tensor, ...]], what: str) -> Iterator[Batch]:
        cuda = self.device.type == "cuda"
        left_out = _LeftOut(self.plan is not None and self.plan.mixes)
        if self.skips:
            self.skipped, self.unreadable = 0, ()
        if self.world_size > 1:
            what = f"{what}, process {self.rank} of {self.world_size}"
        for fetched in decoded(self.data, self.decoder, self.plan, batches, self.workers, pin=cuda, what=what,
                               skip=self.skips):
            if fetched.left_out is not None and len(fetched.left_out):
                left_out.add(fetched)
                self.skipped, self.unreadable = left_out.count, tuple(left_out.files)
                if not len(fetched.ids):
                    raise DatasetFormatError(
                        f"{what}: no sample of a batch could be decoded ({len(fetched.left_out)} left out: "
                        f"{'; '.join(fetched.unreadable[:NAMED])}); data.on_corrupt: skip needs at least one sample "
                        "in every batch (of every process): replace or remove the files")
            yield assemble(fetched.to(self.device, non_blocking=cuda), self.transform, self.plan, self.channels_last)
        left_out.warn(what)


def split_loader(split: TensorSet | StreamSet, batch_size: int, transform: BatchTransform, *, device: torch.device,
                 workers: int = 0, resize: int | None = None, on_corrupt: str = "fail", **rules: Any
                 ) -> BatchLoader | StreamLoader:
    """A loader over ``split``: on ``device`` for a split in memory, decoding in ``workers`` processes (images
    resized as :class:`Decoder` says, ``resize`` its centre crop; ``on_corrupt`` as ``data.on_corrupt``) for a
    streamed one."""
    if isinstance(split, StreamSet):
        return StreamLoader(split, batch_size, transform, device=device, workers=workers, resize=resize,
                            on_corrupt=on_corrupt, **rules)
    return BatchLoader(split.to(device), batch_size, transform, **rules)


def sample_stats(data: StreamSet, samples: int, workers: int = 0, batch_size: int = 64, on_corrupt: str = "fail"
                 ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (in [0, 1] units) of at most ``samples`` images of ``data``, each resized
    to the square: the samples of smallest ``hash(sample_id)``, the same for every run on the split
    (``on_corrupt="skip"``: those among them that can be decoded, the others counted in a warning)."""
    chosen = torch.argsort(hash_keys(data.ids, 0))[:samples].sort().values
    batches = ((rows, torch.zeros_like(rows)) for rows in chosen.split(batch_size))
    left_out = _LeftOut()
    what = f"the normalisation statistics of {len(chosen)} training images"

    def images() -> Iterator[Tensor]:
        for f in decoded(data, Decoder(data.image_size), None, batches, workers, pin=False, what=what,
                         skip=check_on_corrupt(on_corrupt)):
            left_out.add(f)
            yield f.images
        left_out.warn(what)

    return pixel_stats(images())


def decode_all(data: StreamSet, workers: int = 0, batch_size: int = 256) -> TensorSet:
    """Every image of ``data`` decoded by ``workers`` processes and resized to the square of its
    ``image_size`` (at their own size when it is None: then they must all have one size), in one
    :class:`~softdistill.data.samples.TensorSet` with the same ids."""
    if data.image_size is None:
        return TensorSet(_own_size(data), data.labels, data.ids)
    batches = ((rows, torch.zeros_like(rows)) for rows in torch.arange(len(data)).split(batch_size))
    chunks = [f.images for f in decoded(data, Decoder(data.image_size), None, batches, workers, pin=False,
                                        what=f"decoding {len(data)} images")]
    return TensorSet(torch.cat(chunks), data.labels, data.ids)


def _own_size(data: StreamSet) -> Tensor:
    """uint8 N x 3 x H x W: the images of ``data`` at their own size, which must be the same for all."""
    arrays = []
    for row in range(len(data)):
        array = np.asarray(data.open(row), dtype=np.uint8)
        if arrays and array.shape != arrays[0].shape:
            raise DatasetFormatError(f"images differ in size: {data.where(row)} is {array.shape[1]}x{array.shape[0]}, "
                                     f"{data.where(0)} is {arrays[0].shape[1]}x{arrays[0].shape[0]}; set "
                                     "data.image_size to resize all")
        arrays.append(array)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
