"""Augmentations that methods apply to a batch (the trainer never sees them): mixing, and HARD's
learned augmentors with the VAE image generator one of them uses."""

from softdistill.augment.learned import AffineAugmentor, Augmentor, VAEAugmentor, affine_matrices
from softdistill.augment.mixing import MIXES, cutmix, mixup
from softdistill.augment.vae import ConvVAE, load_vae, vae_loss

__all__ = ["mixup", "cutmix", "MIXES", "Augmentor", "AffineAugmentor", "VAEAugmentor", "affine_matrices", "ConvVAE",
           "vae_loss", "load_vae"]
