"""Training the VAE of HARD's VAE augmentor: ``softdistill train-vae RECIPE``.

``train_vae`` writes a run folder like the trainer does (every file atomically)::

    OUTPUT_DIR/NAME/seedSEED/  config.yaml  metrics.jsonl  last.pt  vae.pt  reconstructions.png  summary.json

and resumes from ``last.pt`` exactly: an epoch's randomness depends only on (seed, epoch).
``vae_checkpoint`` turns a VAE recipe named by another recipe into its ``vae.pt``, training it
once when its run is missing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import yaml
from pydantic import Field, model_validator
from tqdm.auto import tqdm

from softdistill.augment.vae import ConvVAE, vae_loss
from softdistill.augment.visualize import save_image_grid
from softdistill.checkpoint import CheckpointError, save_checkpoint
from softdistill.config import RunRecipe, read_recipe_file
from softdistill.data.loader import BatchLoader, BatchTransform, TensorSet
from softdistill.engine.distributed import resolve_device
from softdistill.engine.trainer import NonFiniteLossError, resume_checkpoint, write_text_atomic
from softdistill.runner import check_same_recipe, load_data, recipe_differences, run_dir_state

__all__ = ["VAERecipe", "load_vae_recipe", "train_vae", "vae_checkpoint"]


# --------------------------------------------------------------------------------------------
# recipe

class VAERecipe(RunRecipe):
    """What ``softdistill train-vae`` trains: data, architecture, Adam, epochs."""

    kind: ClassVar[str] = "VAE recipe"

    latent_dim: int = Field(16, ge=1, description="dimension of z")
    width: int = Field(32, ge=1, description="channels of the first convolution (the second has twice as many)")
    beta: float = Field(1.0, ge=0, description="weight of the KL term (1 = the ELBO)")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate (constant)")
    weight_decay: float = Field(0.0, ge=0, description="Adam's L2 penalty")

    @model_validator(mode="after")
    def _used_train_keys(self) -> "VAERecipe":
        if self.train.amp != "off" or self.train.keep_epochs:
            raise ValueError("train.amp and train.keep_epochs are not used by train-vae "
                             "(it trains in float32 and keeps last.pt and vae.pt)")
        return self


def load_vae_recipe(path: str | os.PathLike, overrides: Sequence[str] = ()) -> VAERecipe:
    """Read a YAML VAE recipe, apply dotted ``key=value`` overrides, validate (:class:`ConfigError` otherwise)."""
    return VAERecipe.from_dict(read_recipe_file(path, overrides), str(path))


# --------------------------------------------------------------------------------------------
# training

@torch.inference_mode()
def _evaluate(model: ConvVAE, loader: BatchLoader) -> dict[str, float]:
    """Mean recon, kl and negative ELBO (beta = 1) per image, with one sample z per image."""
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64)
    for batch in loader:
        logits, mu, logvar = model(batch.x)
        _, recon, kl = vae_loss(logits, batch.x, mu, logvar)
        sums += torch.stack([recon, kl]).double().cpu() * len(batch)
    model.train()
    recon, kl = (sums / len(loader.data)).tolist()
    return {"recon": recon, "kl": kl, "nelbo": recon + kl}


def _train_epoch(model: ConvVAE, optimizer: torch.optim.Optimizer, loader: BatchLoader, recipe: VAERecipe,
                 epoch: int, quiet: bool) -> dict[str, Any]:
    torch.manual_seed(recipe.seed * 1_000_003 + epoch + 500_000)  # the z noise of this epoch, as in the trainer
    loader.set_epoch(epoch)
    model.train()
    sums = torch.zeros(3, dtype=torch.float64, device=loader.data.images.device)  # loss, recon, kl, summed over images
    seen = 0
    bar = tqdm(total=len(loader), desc=f"epoch {epoch}/{recipe.epochs}", leave=False, disable=quiet, dynamic_ncols=True)
    for step, batch in enumerate(loader):
        logits, mu, logvar = model(batch.x)
        terms = vae_loss(logits, batch.x, mu, logvar, recipe.beta)
        if not torch.isfinite(terms[0]):
            raise NonFiniteLossError(f"non-finite VAE loss at epoch {epoch}, step {step + 1} (recon "
                                     f"{terms[1].item():.4g}, kl {terms[2].item():.4g}); lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        terms[0].backward()
        optimizer.step()
        sums += torch.stack(terms).detach().double() * len(batch)
        seen += len(batch)
        if not quiet and (step % 10 == 0 or step == len(loader) - 1):
            bar.set_postfix(loss=f"{sums[0].item() / seen:.2f}", refresh=False)
        bar.update(1)
    bar.close()
    loss, recon, kl = (sums / max(seen, 1)).tolist()
    return {"epoch": epoch, "train/loss": loss, "train/recon": recon, "train/kl": kl}


def train_vae(recipe: VAERecipe, *, resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Train the recipe's VAE with Adam into ``recipe.run_dir``; return the summary (also in summary.json).

    One process on ``train.device``.  Each epoch logs the training loss terms and, every
    ``train.eval_every`` epochs and after the last, recon / kl / negative ELBO on the val and test sets.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("train-vae runs in a single process; start it without torchrun")
    device = resolve_device(recipe.train.device)
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    d = recipe.data
    data = load_data(recipe)
    channels = data.in_channels
    to01 = BatchTransform((0.0,) * channels, (1.0,) * channels, d.augment.crop_padding, d.augment.hflip)
    train_loader = BatchLoader(data.train.to(device), d.batch_size, to01, shuffle=True, drop_last=d.drop_last,
                               augment=True, seed=recipe.seed)
    eval_loaders = {name: BatchLoader(split.to(device), d.eval_batch_size, to01)
                    for name, split in (("val", data.val), ("test", data.test)) if split is not None}

    torch.manual_seed(recipe.seed)
    model = ConvVAE(channels, data.image_size, recipe.latent_dim, recipe.width).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    meta = {"kind": "vae", "vae": model.config, "normalization": {"mean": list(data.mean), "std": list(data.std)},
            "data": {"name": data.name, "in_channels": channels, "image_size": data.image_size},
            "config": recipe.model_dump(mode="json"), "seed": recipe.seed, "epochs": recipe.epochs}

    run_dir = recipe.run_dir
    state = resume_checkpoint(run_dir, resume, recipe.epochs, lambda saved: recipe_differences(saved, recipe), device)
    history: list[dict[str, Any]] = []
    if state is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(meta["config"], sort_keys=False))
    else:
        try:
            model.load_state_dict(state["state_dict"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{run_dir / 'last.pt'} does not fit this run's VAE or optimiser: {exc}") from None
        history = list(state["history"])
    if not quiet:
        print(f"[softdistill] VAE {recipe.name} seed {recipe.seed}: latent {recipe.latent_dim}, width {recipe.width}, "
              f"beta {recipe.beta} -> {run_dir} ({len(data.train)} train images, {device})")

    for epoch in range(len(history) + 1, recipe.epochs + 1):
        start = time.perf_counter()
        record = _train_epoch(model, optimizer, train_loader, recipe, epoch, quiet)
        if epoch % recipe.train.eval_every == 0 or epoch == recipe.epochs:
            for name, loader in eval_loaders.items():
                record.update({f"{name}/{k}": v for k, v in _evaluate(model, loader).items()})
        record["seconds"] = time.perf_counter() - start
        history.append(record)
        save_checkpoint({**meta, "epoch": epoch, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "history": history}, run_dir / "last.pt")
        write_text_atomic(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
        if not quiet:
            evals = "  ".join(f"{name} recon {record[f'{name}/recon']:.2f} nelbo {record[f'{name}/nelbo']:.2f}"
                              for name in eval_loaders if f"{name}/recon" in record)
            tqdm.write(f"epoch {epoch:>3}/{recipe.epochs}  loss {record['train/loss']:.2f} (recon "
                       f"{record['train/recon']:.2f}, kl {record['train/kl']:.2f})  {evals}  {record['seconds']:.1f}s")

    save_checkpoint({**meta, "epoch": recipe.epochs, "state_dict": model.state_dict()}, run_dir / "vae.pt")
    _save_reconstructions(model, data.test.to(device), run_dir / "reconstructions.png", recipe.seed)
    seconds = sum(r["seconds"] for r in history)
    summary = {"name": recipe.name, "seed": recipe.seed, "epochs": recipe.epochs,
               **{k.replace("/", "_"): v for k, v in history[-1].items() if "/" in k},
               "seconds": seconds, "seconds_per_epoch": seconds / len(history),
               "parameters": sum(p.numel() for p in model.parameters()), "finished": True}
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


@torch.no_grad()
def _save_reconstructions(model: ConvVAE, test: TensorSet, path: Path, seed: int) -> None:
    """Rows: the first 8 test images, their reconstructions decode(mu), and 8 samples decode(z), z ~ N(0, I)."""
    model.eval()
    x = test.images[:8].float().div(255)
    z = torch.randn(len(x), model.config["latent_dim"], generator=torch.Generator().manual_seed(seed)).to(x.device)
    save_image_grid([("test", x), ("reconstruction", model.decode(model.encode(x)[0])), ("prior sample", model.decode(z))],
                    path)


def vae_checkpoint(path_or_recipe: str | os.PathLike, *, overrides: Sequence[str] = (), quiet: bool = False) -> Path:
    """The ``vae.pt`` a path names: a VAE recipe (.yaml/.yml, trained or finished first if needed) or a .pt file.

    ``overrides`` (dotted ``key=value``) apply to the recipe, e.g. ``data.root`` or ``output_dir``
    passed on from the recipe that asks for the VAE.
    """
    path = Path(path_or_recipe).expanduser()
    if path.suffix not in (".yaml", ".yml"):
        if not path.is_file():
            raise CheckpointError(f"VAE checkpoint not found: {path} (give the vae.pt written by train-vae, "
                                  "or a VAE recipe .yaml)")
        return path
    recipe = load_vae_recipe(path, overrides)
    check_same_recipe(recipe)
    state = run_dir_state(recipe.run_dir)
    if state != "finished":
        if not quiet:
            print(f"[softdistill] training VAE recipe {recipe.name!r} into {recipe.run_dir}")
        train_vae(recipe, resume=(state == "partial"), quiet=quiet)
    return recipe.run_dir / "vae.pt"
