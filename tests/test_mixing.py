"""Mixup and cutmix: what they mix, the lam they report, reproducibility."""

import pytest
import torch

from softdistill.augment import cutmix, mixup


def batch(n=6, c=2, h=5, w=7):
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, c, h, w).contiguous()
    return x, torch.arange(n)


@pytest.mark.parametrize("per_sample", [False, True])
def test_mixup_is_the_convex_combination_it_reports(per_sample):
    torch.manual_seed(0)
    x, y = batch()
    mixed, ya, yb, lam = mixup(x, y, alpha=0.4, per_sample=per_sample)
    assert torch.equal(ya, y) and lam.shape == (6,) and ((lam >= 0) & (lam <= 1)).all()
    # images are constant = their index: the mixed value is lam * a + (1 - lam) * b
    torch.testing.assert_close(mixed[:, 0, 0, 0], lam * ya.float() + (1 - lam) * yb.float())
    assert (lam.unique().numel() == 1) != per_sample
    assert sorted(yb.tolist()) == list(range(6))  # a permutation of the batch


@pytest.mark.parametrize("shape", [(5, 7), (8, 8), (3, 12)])
@pytest.mark.parametrize("per_sample", [False, True])
def test_cutmix_lam_is_the_exact_kept_area_on_any_shape(shape, per_sample):
    torch.manual_seed(1)
    x, y = batch(n=16, h=shape[0], w=shape[1])
    mixed, ya, yb, lam = cutmix(x, y, alpha=1.0, per_sample=per_sample)
    kept = (mixed[:, 0] == ya.float().view(-1, 1, 1)).float().mean(dim=(1, 2))
    pasted = (mixed[:, 0] == yb.float().view(-1, 1, 1)).float().mean(dim=(1, 2))
    same = ya == yb  # a sample paired with itself keeps everything either way
    torch.testing.assert_close(kept[~same], lam[~same])
    torch.testing.assert_close(pasted[~same], 1 - lam[~same])
    assert torch.equal(mixed[:, 0], mixed[:, 1])  # the same box in every channel


def test_mixing_is_reproducible_under_the_global_seed():
    x, y = batch()
    torch.manual_seed(5)
    first = cutmix(x, y)
    torch.manual_seed(5)
    second = cutmix(x, y)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_bad_inputs():
    with pytest.raises(ValueError, match="alpha must be > 0"):
        mixup(*batch(), alpha=0)
    with pytest.raises(ValueError, match="expected images B x C x H x W"):
        cutmix(torch.zeros(4, 3), torch.zeros(4))
