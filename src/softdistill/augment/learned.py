"""Learned augmentors for HARD (Nix, Burg & Sinz, 2023): differentiable maps x -> x~.

An :class:`Augmentor` takes a batch of *normalised* images (as the loaders yield them) and an
optional noise input, and returns transformed images in the same units, differentiably in its
own parameters.  Every augmentor squashes its raw outputs through ``tanh`` into user-set bounds,
so a transform can never leave them, and is the identity when its last layer outputs zero (its
initial state: the last layer starts at zero).  ``magnitude()`` is the mean squared unit-range
output ``u`` of the last call (``u = tanh(raw)``, 0 = identity, 1 = at a bound): the regulariser
that keeps ``x~`` close to ``x``.

- :class:`AffineAugmentor`: a spatial transformer; a small CNN sees ``x`` and a noise vector
  and predicts per-sample translation (pixels), rotation (degrees), scale and shear, applied
  with ``affine_grid`` + ``grid_sample``; pixels from outside the image are black (the
  normalised value of a zero pixel).
- :class:`VAEAugmentor`: a frozen VAE encodes ``x``; a small MLP moves the latent mean by at most
  ``bound`` (in prior standard deviations) per dimension; the decoder turns it back into an
  image (``output: decoded``), or the decoded *change* is added to ``x`` (``output: residual``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from softdistill.augment.vae import ConvVAE

__all__ = ["Augmentor", "AffineAugmentor", "VAEAugmentor", "affine_matrices", "VAEOutput"]

#: what the VAE augmentor returns: x + dec(z~) - dec(mu) (``residual``, the identity at zero) or dec(z~)
VAEOutput = Literal["residual", "decoded"]


def _channel_view(values: Sequence[float]) -> Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float32).view(1, -1, 1, 1)


class Augmentor(nn.Module):
    """Base class: ``forward(x, noise=None) -> x~`` on normalised images, differentiable.

    Subclasses implement :meth:`encode` (what the outputs are computed from, once per call),
    :meth:`unit_outputs` (code and noise -> the per-sample outputs ``u`` in [-1, 1]) and
    :meth:`apply` (``u`` -> images); the last call's ``u`` is kept for the regulariser and the log.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], noise_dim: int) -> None:
        super().__init__()
        self.noise_dim = noise_dim
        self.register_buffer("mean", _channel_view(mean), persistent=False)
        self.register_buffer("std", _channel_view(std), persistent=False)
        self.last_units: Tensor | None = None

    def to_unit_range(self, x: Tensor) -> Tensor:
        """Normalised images -> pixel values in [0, 1]."""
        return x * self.std + self.mean

    def from_unit_range(self, pixels: Tensor) -> Tensor:
        return (pixels - self.mean) / self.std

    def draw_noise(self, n: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        """Standard normal noise (n, noise_dim) from ``generator`` (default: PyTorch's global one)."""
        return torch.randn(n, self.noise_dim, generator=generator).to(device, non_blocking=True)

    def encode(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def unit_outputs(self, code: Tensor, noise: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def apply(self, x: Tensor, code: Tensor, units: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor, noise: Tensor | None = None, strength: Tensor | None = None) -> Tensor:
        """``strength`` (N,) in [0, 1], optional, scales each sample's unit-range outputs."""
        if noise is None:
            noise = self.draw_noise(x.shape[0], x.device)
        code = self.encode(x)
        units = self.unit_outputs(code, noise)
        if strength is not None:
            units = units * strength.to(units.dtype).view(-1, 1)
        self.last_units = units
        return self.apply(x, code, units)

    def magnitude(self) -> Tensor:
        """Mean squared unit-range output of the last call (0 = identity), differentiable."""
        if self.last_units is None:
            raise RuntimeError("magnitude() needs a forward call first")
        return self.last_units.float().pow(2).mean()

    def statistics(self) -> dict[str, Tensor]:
        """Named scalars describing the last call (no gradient), for the training log."""
        return {}

    def learned_state(self) -> dict[str, Tensor]:
        """The weights this augmentor learns (what a checkpoint must keep)."""
        return self.state_dict()

    def load_learned_state(self, state: dict[str, Tensor]) -> None:
        self.load_state_dict(state)


def _zero_last_layer(layer: nn.Linear) -> nn.Linear:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def affine_matrices(translate: Tensor, rotate: Tensor, scale: Tensor, shear: Tensor, height: int, width: int) -> Tensor:
    """The ``theta`` (N x 2 x 3) that ``F.affine_grid(theta, ..., align_corners=False)`` needs to move
    image content by ``translate`` (N x 2: pixels right, down), rotate it by ``rotate`` degrees
    (counter-clockwise on screen), scale it by ``scale`` and shear it by ``shear`` (x += shear * y),
    all about the image centre.

    The content map is ``p_out = R Sh S p_in + t`` in pixel units; ``affine_grid`` wants the
    inverse (where each output pixel samples), expressed in normalised coordinates
    ``p_norm = D^-1 p_pix`` with ``D = diag(W/2, H/2)``: ``theta = [D^-1 M^-1 D | -D^-1 M^-1 t]``.
    """
    radians = rotate * (math.pi / 180)
    cos, sin = radians.cos(), radians.sin()
    one, zero = torch.ones_like(cos), torch.zeros_like(cos)
    rotation = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)  # y points down
    shearing = torch.stack([torch.stack([one, shear], -1), torch.stack([zero, one], -1)], -2)
    forward = rotation @ shearing * scale.view(-1, 1, 1)
    inverse = torch.linalg.inv_ex(forward).inverse  # det = scale^2 > 0; inv_ex skips the check that waits for the device
    half = torch.tensor([width / 2, height / 2], dtype=inverse.dtype).to(inverse.device, non_blocking=True)
    linear = inverse * half.view(1, 1, 2) / half.view(1, 2, 1)  # D^-1 M^-1 D
    offset = -(inverse @ translate.unsqueeze(-1)).squeeze(-1) / half
    return torch.cat([linear, offset.unsqueeze(-1)], dim=-1)


class AffineAugmentor(Augmentor):
    """Spatial transformer (Jaderberg et al., 2015) with bounded per-sample affine parameters.

    ``u = tanh(head([features(x), noise]))`` in [-1, 1]^5; translation ``translate * u`` pixels
    (x, y), rotation ``rotate * u`` degrees, scale ``(1 + scale) ** u`` (so within
    [1/(1+scale), 1+scale]), shear ``shear * u``.  A bound of 0 switches that component off.
    """

    def __init__(self, in_channels: int, mean: Sequence[float], std: Sequence[float], *,
                 translate: float = 4.0, rotate: float = 15.0, scale: float = 0.1, shear: float = 0.1,
                 noise_dim: int = 8, width: int = 16) -> None:
        super().__init__(mean, std, noise_dim)
        if min(translate, rotate, scale, shear) < 0:
            raise ValueError("affine bounds must be >= 0")
        self.bounds = {"translate": translate, "rotate": rotate, "scale": scale, "shear": shear}
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(2 * width + noise_dim, 64), nn.ReLU(),
                                  _zero_last_layer(nn.Linear(64, 5)))  # translate x, y, rotate, scale, shear

    def encode(self, x: Tensor) -> Tensor:
        return self.features(x)

    def unit_outputs(self, code: Tensor, noise: Tensor) -> Tensor:
        return torch.tanh(self.head(torch.cat([code, noise.to(code.dtype)], dim=1)))

    def transform_parameters(self, units: Tensor) -> dict[str, Tensor]:
        """Unit-range outputs (N x 5) -> the bounded transform parameters, in float32."""
        u = units.float()
        b = self.bounds
        return {"translate": b["translate"] * u[:, 0:2], "rotate": b["rotate"] * u[:, 2],
                "scale": (1 + b["scale"]) ** u[:, 3], "shear": b["shear"] * u[:, 4]}

    @property
    def last_parameters(self) -> dict[str, Tensor]:
        """The transform parameters of the last call (no gradient); empty before the first."""
        return {} if self.last_units is None else self.transform_parameters(self.last_units.detach())

    def apply(self, x: Tensor, code: Tensor, units: Tensor) -> Tensor:
        p = self.transform_parameters(units)
        theta = affine_matrices(p["translate"], p["rotate"], p["scale"], p["shear"], x.shape[-2], x.shape[-1])
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        black = self.from_unit_range(torch.zeros_like(self.mean))  # outside the image: a zero pixel
        moved = F.grid_sample(x.float() - black, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return (moved + black).to(x.dtype)

    def statistics(self) -> dict[str, Tensor]:
        p = self.last_parameters
        if not p:
            return {}
        return {"aug_shift_px": p["translate"].norm(dim=1).mean(), "aug_rotate_deg": p["rotate"].abs().mean(),
                "aug_log_scale": p["scale"].log().abs().mean(), "aug_shear": p["shear"].abs().mean()}


class VAEAugmentor(Augmentor):
    """Latent-space edits through a frozen VAE.

    ``mu = encoder(x)``, ``u = tanh(MLP([mu, noise]))``, ``z~ = mu + bound * u``; then
    ``x~ = decode(z~)`` (``output: decoded``) or ``x~ = clip(x + decode(z~) - decode(mu), 0, 1)``
    (``output: residual``, the identity at ``u = 0`` and free of the VAE's reconstruction blur).
    The VAE works on [0, 1] pixels; the conversion from and to normalised units is done here.
    The VAE never trains (``requires_grad=False``, always in eval mode).
    """

    def __init__(self, vae: ConvVAE, mean: Sequence[float], std: Sequence[float], *,
                 bound: float = 1.0, output: VAEOutput = "residual", noise_dim: int = 8,
                 width: int = 128) -> None:
        super().__init__(mean, std, noise_dim)
        if bound < 0:
            raise ValueError("the latent bound must be >= 0")
        if output not in get_args(VAEOutput):
            raise ValueError(f"output must be one of {get_args(VAEOutput)}, got {output!r}")
        self.vae = vae.requires_grad_(False).eval()
        self.bound = bound
        self.output = output
        latent_dim = vae.config["latent_dim"]
        self.perturbation = nn.Sequential(nn.Linear(latent_dim + noise_dim, width), nn.ReLU(),
                                          _zero_last_layer(nn.Linear(width, latent_dim)))

    def train(self, mode: bool = True) -> "VAEAugmentor":
        super().train(mode)
        self.vae.eval()
        return self

    def encode(self, x: Tensor) -> Tensor:
        """The VAE's latent mean of ``x`` (no gradient: the VAE is fixed and x is data)."""
        with torch.no_grad():
            mu, _ = self.vae.encode(self.to_unit_range(x.float()))
        return mu

    def unit_outputs(self, code: Tensor, noise: Tensor) -> Tensor:
        return torch.tanh(self.perturbation(torch.cat([code, noise.to(code.dtype)], dim=1)))

    def apply(self, x: Tensor, mu: Tensor, units: Tensor) -> Tensor:
        edited = self.vae.decode(mu + self.bound * units.float())
        if self.output == "decoded":
            pixels = edited
        else:
            with torch.no_grad():
                reconstruction = self.vae.decode(mu)
            pixels = (self.to_unit_range(x.float()) + edited - reconstruction).clamp(0, 1)
        return self.from_unit_range(pixels).to(x.dtype)

    def learned_state(self) -> dict[str, Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("vae.")}

    def load_learned_state(self, state: dict[str, Tensor]) -> None:
        self.perturbation.load_state_dict({k.removeprefix("perturbation."): v for k, v in state.items()})

    def statistics(self) -> dict[str, Tensor]:
        if self.last_units is None:
            return {}
        return {"aug_latent_shift": (self.bound * self.last_units.detach().float()).norm(dim=1).mean()}
