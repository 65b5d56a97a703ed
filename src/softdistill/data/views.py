"""Addressable views: the augmentation of (sample, view) as a pure function of (seed, sample_id, view).

A :class:`ViewPlan` says how training images are augmented and how many distinct views each sample
has.  The parameters of a view -- crop offsets, horizontal flip and, for plans that mix, the
partner sample, lambda and the cutmix box -- come from :mod:`softdistill.hashing` keyed by
``(seed, sample_id, view, component)``: any process, data worker or DDP rank recomputes the exact
view of any sample in any order, which is what exact resume, a cache or a store of soft labels
and a worker-based loader stand on.

A plan with ``resized_crop`` (the ImageNet-style random resized crop) gives every view a crop box
(:meth:`ViewPlan.crop_box`) that the stream loader's workers cut out of the decoded file and resize
to the training size; the pad-and-crop (``crop_padding``), flip and mix then run on the device as
for images held in memory.

``views: V`` gives each sample V distinct views; epoch e shows view ``(e - 1) mod V``
(``replay: cycle``), or with ``replay: random`` a view drawn per (sample, epoch), uniformly among
the V, as ``hash(seed, sample_id, epoch) mod V``.
``views: 0`` draws a fresh view every epoch (view ``e - 1``), so the first V epochs of a
``views: 0`` run show exactly the views of a ``views: V`` plan.  A plan that does not augment has
one view per sample, the clean image (view 0).  Epochs are counted from 1 here, as softdistill's
trainer counts them; a loop that counts from 0 says so to
:class:`~softdistill.data.sampler.GlobalBatchSampler` (``first_epoch=0``).

Your own augmentation pipeline (torchvision, timm, albumentations, or any function) becomes part of
the views through a :class:`ViewTransform`: it runs on every view's uint8 image with its random
numbers seeded by (seed, sample id, view), before the plan's crop, flip and mix.

``views_per_step: 2`` shows each sample twice in every step: as its view of the epoch v (``batch``)
and as its next view, ``(v + 1) mod V`` (``v + 1`` for ``views: 0``), in ``batch.second`` -- another
draw of the same plan, a pure function of (seed, sample_id, view) like the first, so both loaders,
a resumed run and a store of the plan's V views replay it exactly (:meth:`ViewPlan.second_views`).
It needs two distinct views per sample: an augmenting plan with ``views`` 0 or at least 2.

Mixing (mixup, Zhang et al. 2018; cutmix, Yun et al. 2019) pairs view v of sample i with view v
of a partner drawn among the other samples of the split, both cropped and flipped as their own
views; ``lam`` ~ Beta(alpha, alpha) per sample (by inverse CDF of a hashed uniform) is the share of
sample i: ``x = lam x_i + (1 - lam) x_partner`` (mixup) or a box of the partner pasted into x_i
with ``lam`` the exact share of x_i's pixels left (cutmix).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field, model_validator
from scipy.special import betaincinv
from torch import Tensor

from softdistill.enums import MIX_KINDS, REPLAYS, Mix, Replay
from softdistill.hashing import hash_below, hash_keys, hash_uniform, to_uniform
from softdistill.schema import StrictConfig

__all__ = ["AugmentConfig", "ViewPlan", "ViewParams", "ViewTransform", "ViewTransformError", "crop", "hflip_", "Mix",
           "Replay", "MIX_KINDS", "REPLAYS", "RESIZED_CROP_ATTEMPTS"]


# component numbers of the hashed draws (never reuse one for another meaning); the random resized
# crop's attempt a draws its scale, ratio, top and left at _RESIZED_CROP + 4 a + (0, 1, 2, 3)
_CROP_ROW, _CROP_COL, _FLIP, _PARTNER, _LAM, _BOX_ROW, _BOX_COL, _REPLAY, _RESIZED_CROP = range(1, 10)
RESIZED_CROP_ATTEMPTS = 10
_TRANSFORM = _RESIZED_CROP + 4 * RESIZED_CROP_ATTEMPTS  # the seed of a ViewTransform's draws


def crop(x: Tensor, offsets: Tensor, padding: int) -> Tensor:
    """Random-crop ``x`` (B x C x H x W) after zero-padding by ``padding``: sample b's window starts at
    ``offsets[b] = (row, col)`` of the padded image, so ``(padding, padding)`` is the identity."""
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    offsets = offsets.to(x.device, non_blocking=True)
    rows = (offsets[:, 0:1] + torch.arange(h, device=x.device)).view(n, 1, h, 1).expand(n, c, h, w + 2 * padding)
    rows_taken = padded.gather(2, rows)
    cols = (offsets[:, 1:2] + torch.arange(w, device=x.device)).view(n, 1, 1, w).expand(n, c, h, w)
    return rows_taken.gather(3, cols)


def hflip_(x: Tensor, flip: Tensor) -> Tensor:
    """Mirror, in place, the samples of ``x`` where ``flip`` (B, bool, on the host: no device sync) is
    true; returns ``x``.  Only the flipped samples are read and written."""
    rows = flip.cpu().nonzero().view(-1)
    if len(rows):
        rows = rows.to(x.device, non_blocking=True)
        x.index_copy_(0, rows, x.index_select(0, rows).flip(3))
    return x


@dataclass(frozen=True)
class ViewParams:
    """The parameters of a batch of views (CPU tensors, one row per sample).

    ``offsets`` (B x 2) and ``flip`` (B) when the plan crops or flips; for mixing plans the
    partner's row in the split (``partner``), ``lam`` (B, float32, share of the sample itself), and
    for cutmix the pasted ``box`` (B x 4: top, bottom, left, right; half-open).
    """

    offsets: Tensor | None = None
    flip: Tensor | None = None
    partner: Tensor | None = None
    lam: Tensor | None = None
    box: Tensor | None = None


class ViewTransformError(ValueError):
    """A :class:`ViewTransform` that gives another image for the same view, or an image of the wrong kind."""


@contextmanager
def _seeded_global_rngs(seed: int) -> Iterator[None]:
    """Torch's CPU, numpy's and Python's global random generators seeded with ``seed`` while the block runs,
    and restored afterwards."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


DrawsFrom = Literal["generator", "global"]


@dataclass(frozen=True)
class ViewTransform:
    """Your own augmentation pipeline as part of the views: view v of sample i is ``fn`` applied to the
    sample's image with its random numbers seeded by (plan seed, i, v), so that any process, data worker
    or store recomputes it.  Give it to :class:`ViewPlan` (``transform=``); it runs before the plan's
    crop, flip and mix, in the memory loader and in the stream loader's workers alike.

    Every batch, the first ``checks`` views are made twice, the second time with torch's, numpy's and
    Python's global random generators in another state: a pipeline that draws from anything but what
    it is given makes two different images of one view, and is stopped with a
    :class:`ViewTransformError` rather than labelled into a store that could never be replayed.

    Args:
        fn: the pipeline.  With ``draws_from="generator"`` it is called as ``fn(image, generator)`` and
            draws every random number from ``generator`` (a CPU ``torch.Generator`` seeded by the view);
            with ``"global"`` as ``fn(image)``, with the global random generators of torch (CPU), numpy
            and Python seeded by the view and restored afterwards: the form for torchvision v2, timm and
            albumentations pipelines.  ``image`` is a uint8 C x H x W tensor (on the memory loader's
            device; on the CPU in a stream worker); ``fn`` returns a uint8 C' x H' x W' tensor, one shape
            for every view.
        name: the pipeline's name, recorded in a store's manifest: a store labelled under one name
            serves plans that give the same name.  Change it whenever the pipeline changes.
        draws_from: ``"generator"`` or ``"global"``, as above.
        checks: how many views of each batch are made twice and compared (0: none).

    Example:
        >>> def flip_half(image, generator):
        ...     return image.flip(-1) if torch.rand(1, generator=generator) < 0.5 else image
        >>> plan = ViewPlan(seed=0, views=4, transform=ViewTransform(flip_half, "flip-half"))
        >>> images = torch.arange(6, dtype=torch.uint8).view(2, 1, 1, 3)
        >>> first = plan.transformed(images, torch.tensor([7, 8]), torch.tensor([0, 0]))
        >>> torch.equal(first, plan.transformed(images, torch.tensor([7, 8]), torch.tensor([0, 0])))
        True
    """

    fn: Callable[..., Tensor]
    name: str
    draws_from: DrawsFrom = "generator"
    checks: int = 1

    def __post_init__(self) -> None:
        if self.draws_from not in ("generator", "global"):
            raise ValueError(f"draws_from must be 'generator' or 'global', got {self.draws_from!r}")
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a view transform needs a non-empty name (recorded in stores), got {self.name!r}")

    def view(self, image: Tensor, seed: int) -> Tensor:
        """``fn`` applied to one image with the random numbers of ``seed``.

        Args:
            image: uint8 C x H x W.
            seed: the view's seed (:meth:`ViewPlan.transformed` derives it from the address).

        Returns:
            What ``fn`` returns.

        Example:
            >>> same = ViewTransform(lambda image, generator: image, "identity")
            >>> same.view(torch.zeros(1, 2, 2, dtype=torch.uint8), seed=3).shape
            torch.Size([1, 2, 2])
        """
        if self.draws_from == "generator":
            return self.fn(image, torch.Generator().manual_seed(seed))
        with _seeded_global_rngs(seed):
            return self.fn(image)

    def images(self, images: Tensor, seeds: list[int], sample_ids: Tensor, views: Tensor) -> Tensor:
        """The views of ``images`` (B x C x H x W uint8), view b made with ``seeds[b]``; the first
        :attr:`checks` made twice (``sample_ids`` and ``views`` name them in errors).

        Args:
            images: uint8 B x C x H x W.
            seeds: one seed per image.
            sample_ids, views: the address of each image, for messages.

        Returns:
            uint8 B x C' x H' x W'.

        Example:
            >>> same = ViewTransform(lambda image, generator: image, "identity")
            >>> same.images(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), [1, 2], torch.tensor([0, 1]),
            ...             torch.tensor([0, 0])).shape
            torch.Size([2, 1, 2, 2])
        """
        if not len(images):
            return images
        made = [self._checked(self.view(image, seed), int(i), int(v))
                for image, seed, i, v in zip(images, seeds, sample_ids.tolist(), views.tolist())]
        for b in range(min(self.checks, len(made))):
            with _seeded_global_rngs(seeds[b] ^ 0x5BD1E995):  # the global generators in another state
                again = self.view(images[b], seeds[b])
            if not torch.equal(again, made[b]):
                address = f"sample id {int(sample_ids[b])}, view {int(views[b])}"
                raise ViewTransformError(
                    f"view transform {self.name!r} made two different images of one view ({address}): it draws random "
                    "numbers from something other than " + ("the generator it is given (torch's global RNG, numpy "
                    "or Python's random?)" if self.draws_from == "generator" else "the global random generators, "
                    "which are seeded by the view (a generator of its own?)") + ", so its views could not be "
                    "stored or replayed. Draw every random number from the generator, e.g. torch.rand(1, "
                    "generator=generator); a pipeline that draws from torch's global RNG (torchvision, timm) or "
                    "numpy's (albumentations) works as ViewTransform(fn, name, draws_from='global')")
        shapes = {tuple(image.shape) for image in made}
        if len(shapes) > 1:
            raise ViewTransformError(f"view transform {self.name!r} made images of several shapes {sorted(shapes)}: "
                                     "a batch needs one shape (end the pipeline with a resize or crop to a fixed size)")
        return torch.stack(made)

    def _checked(self, image: Any, sample_id: int, view: int) -> Tensor:
        if not isinstance(image, Tensor) or image.dtype != torch.uint8 or image.dim() != 3:
            kind = f"{image.dtype} of shape {tuple(image.shape)}" if isinstance(image, Tensor) else type(image).__name__
            raise ViewTransformError(f"view transform {self.name!r} returned {kind} for sample id {sample_id}, view "
                                     f"{view}: it must return a uint8 C x H x W tensor (the loader converts to float and "
                                     "standardises after the views are made)")
        return image


class AugmentConfig(StrictConfig):
    """How training images are augmented (``data.augment`` of a recipe; never applied to evaluation):
    with the plan's seed, these settings define every view (:meth:`ViewPlan.definition`)."""

    crop_padding: int = Field(0, ge=0, description="random crop after zero-padding by this many pixels; 0 = off")
    hflip: bool = Field(False, description="random horizontal flip with probability 0.5")
    mix: Mix = Field("none", description="mix every view with a partner's view (for methods that learn from mixed "
                                         "views)")
    mix_alpha: float = Field(1.0, gt=0, description="lambda ~ Beta(mix_alpha, mix_alpha), drawn per sample")
    resized_crop: tuple[float, float] | None = Field(
        None, description="ImageNet-style random resized crop to data.image_size: the range of the crop's share of "
                          "the image area, e.g. [0.08, 1] (stream loader only); None = off")
    crop_ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="range of the resized crop's width / height")

    @model_validator(mode="after")
    def _valid_ranges(self) -> "AugmentConfig":
        scale, ratio = self.resized_crop, self.crop_ratio
        if scale is not None and not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"resized_crop must be [low, high] with 0 < low <= high <= 1, got {list(scale)}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"crop_ratio must be [low, high] with 0 < low <= high, got {list(ratio)}")
        return self

    @property
    def is_random(self) -> bool:
        """Whether views differ from the clean image at all."""
        return self.crop_padding > 0 or self.hflip or self.mix != "none" or self.resized_crop is not None


class ViewPlan(AugmentConfig):
    """How the views of a training split are made: the augmentation (the fields of
    :class:`AugmentConfig`, and your own pipeline as a :class:`ViewTransform`), the ``seed`` of its
    draws, how many distinct ``views`` each sample has and the order they are replayed in; see the
    module docstring.  Equal plans make equal views everywhere.

    Args:
        crop_padding, hflip, mix, mix_alpha, resized_crop, crop_ratio: as :class:`AugmentConfig`.
        seed: the seed of every draw of every view.
        views: distinct views per sample (epoch e shows view (e - 1) mod V); 0: a fresh view every epoch.
        replay: ``"cycle"`` (view (e - 1) mod V in epoch e) or ``"random"`` (a hashed choice among the V
            per sample and epoch).
        transform: your own pipeline (a :class:`ViewTransform`), run on every view before the crop,
            flip and mix; not serialised: the plan records its ``name`` as ``pipeline``.
        pipeline: the name of the plan's pipeline (set from ``transform``); a plan read from a store's
            manifest has the name without the function.

    Example:
        >>> plan = ViewPlan(seed=0, crop_padding=2, hflip=True, views=4)
        >>> plan.views_in_epoch(torch.tensor([10, 11]), epoch=6)  # epoch 6 (counted from 1) shows view 1
        tensor([1, 1])
        >>> plan.definition()
        {'crop_padding': 2, 'hflip': True, 'mix': 'none', 'seed': 0}
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    seed: int = 0
    views: int = Field(0, ge=0)
    replay: Replay = "cycle"
    views_per_step: int = Field(1, ge=1, le=2)
    pipeline: str | None = Field(None, description="the name of the plan's own augmentation pipeline (a ViewTransform)")
    transform: ViewTransform | None = Field(None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _pipeline_named_by_its_transform(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and isinstance(raw.get("transform"), ViewTransform):
            name, given = raw["transform"].name, raw.get("pipeline")
            if given is not None and given != name:
                raise ValueError(f"pipeline {given!r} names another transform than the one given ({name!r})")
            raw = {**raw, "pipeline": name}
        return raw

    @model_validator(mode="after")
    def _replay_needs_views(self) -> "ViewPlan":
        if self.replay == "random" and self.is_random and self.views == 0:
            raise ValueError("replay: random chooses among a fixed number of views per sample: set data.views")
        if self.views_per_step == 2 and self.distinct_views == 1:
            raise ValueError("views_per_step: 2 shows two distinct views of each sample per step, but this plan has one "
                             "(the clean image, or views: 1): augment the images (data.augment) and set data.views to "
                             "0 or at least 2")
        return self

    @classmethod
    def of(cls, augment: AugmentConfig, *, seed: int, views: int = 0, replay: Replay = "cycle",
           views_per_step: int = 1) -> "ViewPlan":
        """The plan of ``augment`` with its seed, number of views, replay and views per step.

        Args:
            augment: the augmentation settings (a recipe's ``data.augment``).
            seed, views, replay, views_per_step: as the class's.

        Returns:
            The :class:`ViewPlan`.

        Example:
            >>> ViewPlan.of(AugmentConfig(hflip=True), seed=3, views=2).distinct_views
            2
        """
        return cls(**augment.model_dump(), seed=seed, views=views, replay=replay, views_per_step=views_per_step)

    @property
    def is_random(self) -> bool:
        """Whether views differ from the clean image at all (the settings of :class:`AugmentConfig`, or a pipeline)."""
        return super().is_random or self.pipeline is not None

    def _unused(self) -> set[str]:
        """The settings that change nothing: the resized crop's ratio without a resized crop, no pipeline."""
        unused = {"resized_crop", "crop_ratio"} if self.resized_crop is None else set()
        return unused | ({"pipeline"} if self.pipeline is None else set())

    def definition(self) -> dict[str, Any]:
        """What defines the views themselves (not how many there are, nor their order), as JSON holds it:
        two plans show the same view v of a sample exactly when their definitions are equal.  A plan that
        does not augment shows the clean image (empty definition); settings that change nothing (the
        resized crop's ratio without a resized crop, ``mix_alpha`` without mixing) are left out."""
        if not self.is_random:
            return {}
        left_out = {"views", "replay", "views_per_step"} | self._unused() | ({"mix_alpha"} if self.mix == "none" else set())
        return self.model_dump(mode="json", exclude=left_out)

    def fingerprint(self) -> str:
        """A short hash of the plan's settings and number of views, recorded in manifests: the replay order is
        not part of it, nor how many views a step shows, nor the settings that change nothing.  Whether two
        plans show the same views is :meth:`definition`'s to say, not this hash's."""
        settings = self.model_dump(mode="json", exclude={"replay", "views_per_step"} | self._unused())
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]

    def recorded(self) -> dict[str, Any]:
        """The plan as a store's manifest records it (``views``): its settings, without the replay order and
        the views per step, and its :meth:`fingerprint`."""
        unused = {"pipeline"} if self.pipeline is None else set()
        return {**self.model_dump(mode="json", exclude={"replay", "views_per_step"} | unused),
                "fingerprint": self.fingerprint()}

    def differences(self, other: "ViewPlan") -> list[str]:
        """The settings whose values make ``other``'s views differ from this plan's (empty: the same views)."""
        mine, theirs = self.definition(), other.definition()
        return [key for key in sorted(set(mine) | set(theirs)) if mine.get(key) != theirs.get(key)]

    @property
    def mixes(self) -> bool:
        return self.mix != "none"

    @property
    def distinct_views(self) -> int | None:
        """How many distinct views a sample has: 1 for a plan that does not augment, V, or None (unbounded)."""
        if not self.is_random:
            return 1
        return self.views or None

    def view_in_epoch(self, epoch: int) -> int:
        """The view every sample shows in epoch ``epoch`` under ``replay: cycle``.

        Args:
            epoch: counted from 1 (the first epoch is 1).

        Returns:
            ``(epoch - 1) mod views`` (``epoch - 1`` for ``views: 0``; 0 for a plan that does not augment).

        Example:
            >>> [ViewPlan(hflip=True, views=3).view_in_epoch(e) for e in (1, 2, 3, 4)]
            [0, 1, 2, 0]
        """
        if not self.is_random:
            return 0
        return epoch - 1 if self.views == 0 else (epoch - 1) % self.views

    def views_in_epoch(self, sample_ids: Tensor, epoch: int) -> Tensor:
        """The view each sample shows in epoch ``epoch``: :meth:`view_in_epoch` for ``replay: cycle``, a
        hashed uniform choice among the V views per (sample, epoch) for ``random``.

        Args:
            sample_ids: int64 sample ids.
            epoch: counted from 1 (the first epoch is 1).

        Returns:
            CPU int64 views, one per sample id.

        Example:
            >>> ViewPlan(hflip=True, views=4, replay="random").views_in_epoch(torch.arange(5), epoch=1)
            tensor([0, 3, 2, 2, 2])
        """
        ids = sample_ids.cpu().long()
        if self.replay == "random" and self.is_random:
            return hash_below(self.views, self.seed, ids, epoch, _REPLAY)
        return torch.full_like(ids, self.view_in_epoch(epoch))

    def transformed(self, images: Tensor, sample_ids: Tensor, views: Tensor) -> Tensor:
        """``images`` through the plan's :class:`ViewTransform` as the views ``(sample_ids[b], views[b])``
        (unchanged without one).

        Args:
            images: uint8 B x C x H x W, the samples' images.
            sample_ids, views: the address of each image (int64).

        Returns:
            uint8 B x C' x H' x W'.

        Example:
            >>> ViewPlan(hflip=True).transformed(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.arange(2),
            ...                                  torch.zeros(2, dtype=torch.long)).shape
            torch.Size([2, 1, 4, 4])
        """
        if self.pipeline is None:
            return images
        if self.transform is None:
            raise ViewTransformError(f"the plan names the pipeline {self.pipeline!r} but holds no function to run: give "
                                     f"it as ViewPlan(..., transform=ViewTransform(fn, {self.pipeline!r}))")
        ids, views = sample_ids.cpu().long(), views.cpu().long()
        seeds = hash_keys(self.seed, ids, views, _TRANSFORM).tolist()
        return self.transform.images(images, seeds, ids, views)

    def second_views(self, views: Tensor) -> Tensor:
        """The second view a step shows of samples shown as ``views`` (``views_per_step: 2``): the next view of
        the plan, ``(v + 1) mod V``, or ``v + 1`` when every epoch draws a fresh view (``views: 0``)."""
        return (views + 1) % self.views if self.views else views + 1

    # ------------------------------------------------------------------ parameters
    def geometry(self, sample_ids: Tensor, views: Tensor) -> ViewParams:
        """Crop offsets and flips of the views ``(sample_ids[b], views[b])``."""
        ids, views = sample_ids.cpu().long(), views.cpu().long()
        offsets = flip = None
        if self.crop_padding or self.hflip:
            # the three streams in one hash (the same numbers as three calls, a third of the small ops)
            row, col, flip_key = hash_keys(self.seed, ids, views, torch.tensor([[_CROP_ROW], [_CROP_COL], [_FLIP]]))
            if self.crop_padding:
                offsets = torch.stack([row, col], dim=1) % (2 * self.crop_padding + 1)  # as hash_below
            if self.hflip:
                flip = to_uniform(flip_key) < 0.5
        return ViewParams(offsets=offsets, flip=flip)

    def crop_box(self, sample_ids: Tensor, views: Tensor, heights: Tensor, widths: Tensor) -> Tensor:
        """The random resized crop boxes (B x 4: top, left, bottom, right; half-open) of the views
        ``(sample_ids[b], views[b])`` of images of ``heights[b]`` x ``widths[b]`` pixels.

        As Szegedy et al. (2015) and torchvision's RandomResizedCrop: up to ten attempts, each a
        share of the area uniform in ``resized_crop`` and a log-uniform width / height ratio in
        ``crop_ratio``, the box placed uniformly; the first that fits is taken, else the centred
        box of the whole image clamped to the ratio range.
        """
        assert self.resized_crop is not None
        ids, views = sample_ids.cpu().long(), views.cpu().long()
        h_img, w_img = heights.cpu().long(), widths.cpu().long()
        streams = _RESIZED_CROP + 4 * torch.arange(RESIZED_CROP_ATTEMPTS).view(1, -1, 1) + torch.arange(4).view(4, 1, 1)
        u_area, u_ratio, u_top, u_left = hash_uniform(self.seed, ids, views, streams)  # each attempts x B

        (s_lo, s_hi), (r_lo, r_hi) = self.resized_crop, self.crop_ratio
        area = (h_img * w_img).double() * (s_lo + (s_hi - s_lo) * u_area)
        ratio = torch.exp(math.log(r_lo) + (math.log(r_hi) - math.log(r_lo)) * u_ratio)
        w = torch.sqrt(area * ratio).round().long()
        h = torch.sqrt(area / ratio).round().long()
        fits = (w > 0) & (w <= w_img) & (h > 0) & (h <= h_img)
        top = (u_top * (h_img - h + 1).clamp_min(1)).floor().long()
        left = (u_left * (w_img - w + 1).clamp_min(1)).floor().long()
        found = fits.any(0)
        first_fit = fits.double().argmax(0).view(1, -1)
        # the fall-back: the whole image, its ratio clamped into the range, centred
        in_ratio = w_img.double() / h_img.double()
        whole_w = torch.where(in_ratio > r_hi, (h_img * r_hi).round().long(), w_img)
        whole_h = torch.where(in_ratio < r_lo, (w_img / r_lo).round().long(), h_img)

        def take(drawn: Tensor, fallback: Tensor) -> Tensor:
            return torch.where(found, drawn.gather(0, first_fit)[0], fallback)

        box_h, box_w = take(h, whole_h), take(w, whole_w)
        box_top, box_left = take(top, (h_img - whole_h) // 2), take(left, (w_img - whole_w) // 2)
        return torch.stack([box_top, box_left, box_top + box_h, box_left + box_w], dim=1)

    def mixing(self, sample_ids: Tensor, views: Tensor, rows: Tensor, population: int,
               image_size: tuple[int, int]) -> ViewParams:
        """Partner rows, lambda and (cutmix) boxes of the mixed views ``(sample_ids[b], views[b])``.

        ``rows`` are the samples' own rows in a split of ``population`` samples; the partner is one
        of the other ``population - 1`` rows (a split of one sample mixes it with itself).
        """
        ids, views, rows = sample_ids.cpu().long(), views.cpu().long(), rows.cpu().long()
        if population > 1:
            draw = hash_below(population - 1, self.seed, ids, views, _PARTNER)
            partner = draw + (draw >= rows).long()
        else:
            partner = rows.clone()
        u = hash_uniform(self.seed, ids, views, _LAM).numpy()
        beta = torch.from_numpy(np.asarray(betaincinv(self.mix_alpha, self.mix_alpha, u), dtype=np.float64))
        if self.mix == "mixup":
            return ViewParams(partner=partner, lam=beta.float())
        h, w = image_size
        cut = (1 - beta).sqrt()
        cut_h, cut_w = (cut * h).round(), (cut * w).round()
        cy = (hash_uniform(self.seed, ids, views, _BOX_ROW) * h).floor()
        cx = (hash_uniform(self.seed, ids, views, _BOX_COL) * w).floor()
        box = torch.stack([(cy - cut_h / 2).round().clamp(0, h), (cy + cut_h / 2).round().clamp(0, h),
                           (cx - cut_w / 2).round().clamp(0, w), (cx + cut_w / 2).round().clamp(0, w)], dim=1).long()
        area = (box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2])
        return ViewParams(partner=partner, lam=(1 - area.double() / (h * w)).float(), box=box)

    # ------------------------------------------------------------------ images
    def place(self, images: Tensor, sample_ids: Tensor, views: Tensor) -> Tensor:
        """``images`` cropped and flipped as the views ``(sample_ids[b], views[b])`` say."""
        return self.apply_geometry(images, self.geometry(sample_ids, views))

    def apply_geometry(self, x: Tensor, params: ViewParams) -> Tensor:
        """Crop and flip images ``x`` (uint8 or float) as ``params`` say (``x`` itself may be flipped in place)."""
        if params.offsets is not None:
            x = crop(x, params.offsets, self.crop_padding)
        if params.flip is not None:
            x = hflip_(x, params.flip)
        return x

    def combine(self, x: Tensor, partner_x: Tensor, params: ViewParams) -> Tensor:
        """The mixed images of ``x`` and their partners' views."""
        assert params.lam is not None
        if self.mix == "mixup":
            w = params.lam.to(device=x.device, dtype=x.dtype, non_blocking=True).view(-1, 1, 1, 1)
            return w * x + (1 - w) * partner_x
        assert params.box is not None
        h, w = x.shape[-2:]
        box = params.box.to(x.device, non_blocking=True)
        r = torch.arange(h, device=x.device).view(1, h, 1)
        c = torch.arange(w, device=x.device).view(1, 1, w)
        inside = ((r >= box[:, 0].view(-1, 1, 1)) & (r < box[:, 1].view(-1, 1, 1))
                  & (c >= box[:, 2].view(-1, 1, 1)) & (c < box[:, 3].view(-1, 1, 1)))
        return torch.where(inside.unsqueeze(1), partner_x, x)
