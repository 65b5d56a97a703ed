"""Augmentations that methods apply to a batch (the trainer never sees them): HARD's learned augmentors
and the VAE image generator one of them uses.  Crops, flips and mixing are views of the data
(:class:`softdistill.data.ViewPlan`), addressable by (sample id, view)."""

from softdistill.augment.learned import AffineAugmentor, Augmentor, VAEAugmentor, affine_matrices
from softdistill.augment.vae import ConvVAE, load_vae, vae_loss

__all__ = ["Augmentor", "AffineAugmentor", "VAEAugmentor", "affine_matrices", "ConvVAE",
           "vae_loss", "load_vae"]
