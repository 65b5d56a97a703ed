"""A small convolutional VAE: the frozen image generator of HARD learned augmentation (Nix, Burg & Sinz, 2023).

The VAE works in [0, 1] pixel units.  ``vae.pt`` (written by ``softdistill train-vae``, see
:mod:`softdistill.vae_training`) keeps the data set's normalisation, so that a user converts a
normalised batch to ``x01 = x * std + mean`` before encoding and back after decoding.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from softdistill.checkpoint import CheckpointError, CheckpointMeta, load_checkpoint

__all__ = ["ConvVAE", "vae_loss", "load_vae"]


class ConvVAE(nn.Module):
    """q(z|x) = N(mu(x), diag exp(logvar(x))), p(z) = N(0, I), p(x|z) = prod_pixels Bernoulli(sigmoid(logits(z))).

    Encoder: two 4x4 stride-2 convolutions (``width`` and ``2 * width`` channels, SiLU), then one
    linear map to (mu, logvar); the decoder mirrors it (linear, two 4x4 stride-2 transposed
    convolutions) and returns logits.  Images are N x C x H x W in [0, 1], H = W divisible by 4.
    """

    def __init__(self, in_channels: int, image_size: int, latent_dim: int = 16, width: int = 32) -> None:
        super().__init__()
        if image_size <= 0 or image_size % 4:
            raise ValueError(f"ConvVAE needs an image size divisible by 4 (two stride-2 stages), got {image_size}")
        self.config = {"in_channels": in_channels, "image_size": image_size, "latent_dim": latent_dim, "width": width}
        hidden = (2 * width, image_size // 4, image_size // 4)
        flat = hidden[0] * hidden[1] * hidden[2]
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, width, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.SiLU(),
            nn.Flatten(), nn.Linear(flat, 2 * latent_dim))
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, flat), nn.SiLU(), nn.Unflatten(1, hidden),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), nn.SiLU(),
            nn.ConvTranspose2d(width, in_channels, 4, stride=2, padding=1))

    def encode(self, x01: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, logvar) of q(z|x), each N x latent_dim."""
        c, s = self.config["in_channels"], self.config["image_size"]
        if x01.dim() != 4 or tuple(x01.shape[1:]) != (c, s, s):
            raise ValueError(f"this VAE encodes N x {c} x {s} x {s} images, got shape {tuple(x01.shape)}")
        mu, logvar = self.encoder(x01).chunk(2, dim=1)
        return mu, logvar

    @staticmethod
    def reparameterize(mu: Tensor, logvar: Tensor) -> Tensor:
        """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I) from the global RNG."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def decode_logits(self, z: Tensor) -> Tensor:
        """Logits of the per-pixel Bernoulli means, N x C x H x W."""
        return self.decoder(z)

    def decode(self, z: Tensor) -> Tensor:
        """Per-pixel Bernoulli means sigmoid(logits) in [0, 1]."""
        return torch.sigmoid(self.decode_logits(z))

    def forward(self, x01: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(reconstruction logits from one sample z ~ q(z|x), mu, logvar)."""
        mu, logvar = self.encode(x01)
        return self.decode_logits(self.reparameterize(mu, logvar)), mu, logvar


def vae_loss(recon_logits: Tensor, x01: Tensor, mu: Tensor, logvar: Tensor,
             beta: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """(total, recon, kl): the negative ELBO of Kingma & Welling (2014), KL weighted by beta (Higgins et al., 2017).

    Per image, with s = sigmoid(recon_logits) and sigma^2 = exp(logvar)::

        recon = -sum_pixels [x log s + (1 - x) log(1 - s)]          (Bernoulli cross-entropy, x in [0, 1])
        kl    = 1/2 sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2)  = KL(N(mu, sigma^2) || N(0, I))
        total = recon + beta * kl

    each averaged over the batch (nats per image); beta = 1 is the negative ELBO.  For grey levels
    strictly inside (0, 1) the cross-entropy is minimised at s = x but is not a normalised density.
    """
    recon = F.binary_cross_entropy_with_logits(recon_logits, x01, reduction="none").flatten(1).sum(1).mean()
    kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(1).mean()
    return recon + beta * kl, recon, kl


# --------------------------------------------------------------------------------------------
# using a trained VAE

def load_vae(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[ConvVAE, CheckpointMeta]:
    """The frozen VAE of a ``vae.pt`` (eval mode, no gradients) and its checkpoint's metadata."""
    payload = load_checkpoint(path, map_location=map_location)
    meta = CheckpointMeta.of(payload, path)
    if meta.kind != "vae" or meta.vae is None:
        what = (f"a classifier checkpoint (model {meta.model.name!r})" if meta.model is not None
                else f"a softdistill checkpoint of kind {meta.kind!r}")
        raise CheckpointError(f"{path} is {what}, not a VAE; expected the vae.pt that "
                              "`softdistill train-vae RECIPE` writes (kind: vae)")
    try:
        model = ConvVAE(**meta.vae)
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: the VAE weights do not fit the architecture it describes: {exc}") from None
    model.eval().requires_grad_(False)
    return model, meta
