"""The batched on-device transforms and the deterministic, DDP-aware loader."""

import pytest
import torch

from softdistill.data.loader import BatchLoader, BatchTransform
from softdistill.data.samples import TensorSet
from softdistill.data.prepare import channel_stats
from softdistill.data.views import ViewPlan, crop, hflip_


def tensor_set(n=10, c=1, h=4, w=5):
    images = torch.arange(n * c * h * w, dtype=torch.int64).remainder(251).to(torch.uint8).view(n, c, h, w)
    return TensorSet(images, torch.arange(n) % 3)


def test_transform_without_augmentation_standardises():
    data = tensor_set()
    transform = BatchTransform(mean=[0.5], std=[0.25])
    x = transform(data.images)
    torch.testing.assert_close(x, (data.images.float() / 255 - 0.5) / 0.25)


def test_crop_moves_image_by_offset_with_zero_padding():
    images = torch.arange(1, 21, dtype=torch.uint8).view(1, 1, 4, 5)
    x = images.float() / 255
    # offsets (2, 2) = centre: identity
    torch.testing.assert_close(crop(x, torch.tensor([[2, 2]]), 2), x)
    # offsets (0, 0): the image moves down-right by 2 pixels, zeros come in
    shifted = crop(x, torch.tensor([[0, 0]]), 2)
    torch.testing.assert_close(shifted[0, 0, 2:, 2:], x[0, 0, :2, :3])
    assert shifted[0, 0, :2].abs().sum() == 0 and shifted[0, 0, :, :2].abs().sum() == 0
    # offsets (3, 4): up by 1 and left by 2
    moved = crop(x, torch.tensor([[3, 4]]), 2)
    torch.testing.assert_close(moved[0, 0, :3, :3], x[0, 0, 1:, 2:])


def test_flip_mirrors_selected_samples_only():
    data = tensor_set(n=2)
    x = data.images.float() / 255
    out = hflip_(x.clone(), torch.tensor([True, False]))
    torch.testing.assert_close(out[0], x[0].flip(-1))
    torch.testing.assert_close(out[1], x[1])


def test_loader_covers_every_sample_once_and_is_deterministic_per_epoch():
    data = tensor_set(n=23)
    loader = BatchLoader(data, 5, BatchTransform([0.0], [1.0]), shuffle=True, drop_last=False, seed=3)
    loader.set_epoch(1)
    first = torch.cat([b.sample_id for b in loader])
    assert sorted(first.tolist()) == list(range(23)) and len(loader) == 5
    again = torch.cat([b.sample_id for b in loader])
    assert torch.equal(first, again)
    loader.set_epoch(2)
    assert not torch.equal(first, torch.cat([b.sample_id for b in loader]))
    loader.drop_last = True
    assert len(loader) == 4 and sum(len(b) for b in loader) == 20


def test_batch_carries_labels_and_ids_of_its_samples():
    data = tensor_set(n=12)
    data = TensorSet(data.images, data.labels, torch.arange(12) * 7 + 100)  # ids are not row positions
    loader = BatchLoader(data, 4, BatchTransform([0.0], [1.0]), shuffle=True, seed=0)
    for batch in loader:
        rows = (batch.sample_id - 100) // 7
        assert torch.equal(batch.y, data.labels[rows]) and torch.equal(batch.view, torch.zeros(4, dtype=torch.long))
        torch.testing.assert_close(batch.x, data.images[rows].float() / 255)


def test_ranks_together_see_exactly_the_single_process_batches():
    data = tensor_set(n=30, c=2)
    transform = BatchTransform([0.1, 0.2], [0.5, 0.5])
    for plan in (ViewPlan(seed=3, crop_padding=1, hflip=True), ViewPlan(seed=3, crop_padding=1, mix="cutmix")):
        single = BatchLoader(data, 8, transform, shuffle=True, plan=plan, seed=7, drop_last=True)
        ranks = [BatchLoader(data, 8, transform, shuffle=True, plan=plan, seed=7, drop_last=True, rank=r, world_size=2)
                 for r in range(2)]
        for loader in (single, *ranks):
            loader.set_epoch(4)
        for whole, part0, part1 in zip(single, *ranks):
            torch.testing.assert_close(torch.cat([part0.x, part1.x]), whole.x)
            assert torch.equal(torch.cat([part0.sample_id, part1.sample_id]), whole.sample_id)
            if plan.mixes:
                assert torch.equal(torch.cat([part0.lam, part1.lam]), whole.lam)
        assert len(single) == len(ranks[0]) == 3


def test_evaluation_keeps_a_tail_smaller_than_the_world():
    data = tensor_set(n=9)
    loaders = [BatchLoader(data, 4, BatchTransform([0.0], [1.0]), rank=r, world_size=2) for r in range(2)]
    seen = sorted(i for loader in loaders for b in loader for i in b.sample_id.tolist())
    assert seen == list(range(9))


def test_bad_inputs():
    with pytest.raises(ValueError, match="uint8 N x C x H x W"):
        TensorSet(torch.zeros(2, 1, 3, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="3 samples but labels of shape"):
        TensorSet(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="smaller than the number of processes"):
        BatchLoader(tensor_set(), 1, BatchTransform([0.0], [1.0]), world_size=2)


def test_channel_stats():
    images = torch.tensor([0, 255, 0, 255], dtype=torch.uint8).view(4, 1, 1, 1)
    mean, std = channel_stats(images)
    assert mean == pytest.approx((0.5,)) and std[0] == pytest.approx(torch.tensor([0.0, 1, 0, 1]).std().item())
