"""The VAE of HARD's VAE augmentor as a training task: ``softdistill train-vae RECIPE``.

The VAE trains through the same :class:`~softdistill.engine.Trainer` as every classifier
(:func:`softdistill.runner.run_recipe` builds it from a :class:`~softdistill.config.VAERecipe`),
so its run folder follows the same rules and resumes exactly::

    OUTPUT_DIR/NAME/seedSEED/  config.yaml  metrics.jsonl  last.pt  best.pt  vae.pt  reconstructions.png  summary.json

Its evaluation is recon / kl / negative ELBO (beta = 1) per image, one sample z per image; "best"
is the lowest validation negative ELBO; ``vae.pt`` holds the weights after the last epoch.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from softdistill.augment.vae import ConvVAE, vae_loss
from softdistill.augment.visualize import save_image_grid
from softdistill.checkpoint import CheckpointMeta, save_checkpoint
from softdistill.engine.task import Task
from softdistill.engine.wrap import unwrap
from softdistill.types import Batch, StepOutput

__all__ = ["VAETask"]


class VAETask(Task):
    """``loss = recon + beta * kl`` (:func:`softdistill.augment.vae.vae_loss`) on images in [0, 1].

    ``student`` is the VAE (what the trainer checkpoints); ``meta`` goes into ``vae.pt``;
    ``samples`` (uint8, a few test images) are drawn in ``reconstructions.png`` when the run ends.
    """

    selection_metric = ("nelbo", "min")

    def __init__(self, model: ConvVAE, beta: float, meta: CheckpointMeta, samples: Tensor, seed: int) -> None:
        super().__init__()
        self.student = model
        self.beta = beta
        self.meta = meta
        self.samples = samples
        self.seed = seed

    def forward(self, batch: Batch) -> StepOutput:
        logits, mu, logvar = self.student(batch.x)
        _, recon, kl = vae_loss(logits, batch.x, mu, logvar)
        return StepOutput(None, {"recon": recon, "kl": self.beta * kl})

    def evaluation_sums(self, model: nn.Module, batch: Batch) -> dict[str, Tensor]:
        logits, mu, logvar = model(batch.x)
        _, recon, kl = vae_loss(logits, batch.x, mu, logvar)
        n = len(batch)
        return {"recon": recon * n, "kl": kl * n, "nelbo": (recon + kl) * n}

    def finish(self, run_dir: Path) -> None:
        """Write ``vae.pt`` (the weights after the last epoch) and ``reconstructions.png``."""
        model = unwrap(self.student)
        save_checkpoint({**self.meta.to_payload(), "state_dict": model.state_dict()}, run_dir / "vae.pt")
        self._save_reconstructions(model, run_dir / "reconstructions.png")

    @torch.no_grad()
    def _save_reconstructions(self, model: ConvVAE, path: Path) -> None:
        """Rows: the first 8 test images, their reconstructions decode(mu), and 8 samples decode(z), z ~ N(0, I)."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        x = self.samples.to(device).float().div(255)
        z = torch.randn(len(x), model.config["latent_dim"], generator=torch.Generator().manual_seed(self.seed)).to(device)
        save_image_grid([("test", x), ("reconstruction", model.decode(model.encode(x)[0])),
                         ("prior sample", model.decode(z))], path)
        model.train(was_training)
