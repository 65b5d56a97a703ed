"""HARD: learned hard augmentations for robust distillation (Nix, Burg & Sinz, 2023).

A game between a learned augmentor ``g`` and the student ``f_S``, the teacher ``f_T`` frozen:

(a) augmentor steps (student and teacher frozen), on a random share of the batch::

        max_g  T^2 KL(p_T^T(g(x)) || p_S^T(g(x)))  -  lambda CE(f_T(g(x)), y)  -  mu |u|^2

    the divergence seeks inputs where teacher and student disagree; the teacher-CE term keeps
    them meaningful (the teacher must still see the true class); ``|u|^2`` (the augmentor's
    unit-range outputs, 0 = identity) pulls towards small transforms; the bounds of the
    augmentor are hard limits.
(b) one student step (the trainer's) on KD over the clean batch and the augmented samples,
    ``x~ = g(x)`` regenerated after the update and detached::

        (1 - alpha) CE(z_S(x), y) + alpha T^2 mean_{x and x~} KL(p_T^T || p_S^T)

The authors released no code; every choice here is a named option, documented with its
reasoning in docs/methods.md ("HARD").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from softdistill.augment.learned import AffineAugmentor, Augmentor, VAEAugmentor, VAEOutput
from softdistill.augment.vae import load_vae
from softdistill.augment.visualize import save_image_grid
from softdistill.compatibility import INPUT_GRAD, ONLINE
from softdistill.engine.wrap import unwrap
from softdistill.losses import cross_entropy, kd_loss, teacher_student_divergence
from softdistill.methods.base import Method, MethodConfig, register_method
from softdistill.soft_labels.base import Dependency
from softdistill.metrics.bias_variance import regularization_stats
from softdistill.schema import StrictConfig
from softdistill.types import Batch, MethodContext, RecipeFacts, StepOutput

GRID_FILE = "hard-augmentations.png"


class AffineSettings(StrictConfig):
    """Bounds of the spatial-transformer augmentor (0 switches a component off)."""

    translate: float = Field(4.0, ge=0, description="max shift in pixels, per axis")
    rotate: float = Field(15.0, ge=0, description="max rotation in degrees")
    scale: float = Field(0.1, ge=0, description="scale within [1/(1+s), 1+s]")
    shear: float = Field(0.1, ge=0, description="max shear factor")
    noise_dim: int = Field(8, ge=0, description="size of the noise input (diversity)")
    width: int = Field(16, ge=1, description="channels of the augmentor's first conv layer")


class VAESettings(StrictConfig):
    """The VAE augmentor: a frozen VAE whose latent code a small network moves."""

    path: str | None = Field(None, description="a VAE checkpoint (vae.pt) or a VAE recipe (.yaml, trained once "
                                               "if its run is missing); relative to this recipe's folder")
    bound: float = Field(1.0, ge=0, description="max latent shift per dimension, in prior standard deviations")
    output: VAEOutput = Field(
        "residual", description="residual: x + dec(z~) - dec(mu) (identity at zero); decoded: dec(z~)")
    noise_dim: int = Field(8, ge=0)
    width: int = Field(128, ge=1, description="hidden width of the latent perturbation network")


@register_method
class HardKD(Method):
    """See the module docstring for the game; the trainer sees only the student's step."""

    uses_soft_labels = True
    source_needs = frozenset({ONLINE, INPUT_GRAD})
    supports_grad_accum = False  # the augmentor steps inside every forward

    class Config(MethodConfig):
        name: Literal["hard"] = "hard"
        alpha: float = Field(0.9, ge=0, le=1, description="weight of the soft term")
        temperature: float = Field(4.0, gt=0, description="of the student's KD and of the augmentor's divergence")
        augmentor: Literal["affine", "vae"] = "affine"
        affine: AffineSettings = Field(default_factory=AffineSettings)
        vae: VAESettings = Field(default_factory=VAESettings)
        augmentor_steps: int = Field(1, ge=1, description="augmentor steps per student step")
        augmentor_lr: float = Field(1e-2, gt=0, description="Adam learning rate of the augmentor")
        teacher_ce_weight: float = Field(1.0, ge=0, description="lambda: CE of the teacher on x~ with the true label")
        magnitude_weight: float = Field(0.0, ge=0, description="mu: weight of the mean squared unit-range output")
        augmented_share: float = Field(0.5, gt=0, le=1, description="share of each batch that is augmented "
                                                                   "(added to the clean batch)")
        strength: Literal["full", "random"] = Field(
            "full", description="full: the augmentor's transform as it is; random: scaled per sample by r ~ U(0, 1), "
                                "so the student sees every strength along the adversarial direction")
        warmup_epochs: int = Field(0, ge=0, description="epochs of clean KD before the augmentor starts")
        student_mode: Literal["eval", "train"] = Field(
            "eval", description="the student's mode in augmentor steps (eval: BatchNorm statistics untouched)")
        visualize_points: int = Field(4, ge=0, description="epochs at which the grid of augmented samples grows")
        visualize_samples: int = Field(8, ge=1, le=64)

        def dependencies(self) -> list[Dependency]:
            if self.augmentor != "vae" or self.vae.path is None:
                return []
            return [Dependency("method.vae.path", self.vae.path, "vae")]

        def problems(self, facts: RecipeFacts) -> list[str]:
            if facts.epochs is not None and self.warmup_epochs >= facts.epochs:
                return [f"method.warmup_epochs = {self.warmup_epochs} leaves no epoch for the augmentor (the run has "
                        f"{facts.epochs}); lower it"]
            return []

        @model_validator(mode="after")
        def _vae_needs_path(self) -> "HardKD.Config":
            if self.augmentor == "vae" and self.vae.path is None:
                raise ValueError("augmentor: vae needs vae.path (a VAE checkpoint or a VAE recipe such as "
                                 "recipes/hard/vae.yaml)")
            return self

    def __init__(self, config: Config, student: nn.Module, num_classes: int, soft_labels: nn.Module | None = None,
                 context: MethodContext | None = None) -> None:
        super().__init__(config, student, num_classes, soft_labels, context)
        if context is None:
            raise ValueError("method 'hard' needs the input shape and normalisation (a MethodContext)")
        self.augmentor = build_augmentor(config, context)
        self.augmentor_optimizer = torch.optim.Adam(
            [p for p in self.augmentor.parameters() if p.requires_grad], lr=config.augmentor_lr)
        self.scaler: torch.amp.GradScaler | None = None
        self.scaler_state: dict[str, Any] = {}  # restored on resume, applied when the scaler is made
        self.active = False
        self.class_names = context.class_names or tuple(str(k) for k in range(num_classes))
        self.visual_epochs: set[int] = set()
        self.visual_clean: Tensor | None = None
        self.visual_noise: Tensor | None = None
        self.visual_labels: Tensor | None = None
        self.snapshots: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ trainer hooks
    def wrap(self, wrapper) -> None:
        """The student and the augmentor are both trained: both are wrapped (DDP syncs the augmentor's
        gradients like the student's)."""
        super().wrap(wrapper)
        self.augmentor = wrapper(self.augmentor)

    @property
    def plain_augmentor(self) -> Augmentor:
        return unwrap(self.augmentor)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The student's parameters only: the augmentor has its own optimiser."""
        return [p for name, p in self.named_parameters() if p.requires_grad and not name.startswith("augmentor.")]

    def start_epoch(self, epoch: int, epochs: int) -> None:
        c = self.config
        self.active = epoch > c.warmup_epochs
        first = c.warmup_epochs + 1
        count = min(c.visualize_points, epochs - first + 1)
        self.visual_epochs = {round(first + i * (epochs - first) / max(count - 1, 1)) for i in range(count)}

    def end_epoch(self, epoch: int, report_dir: Path | None) -> None:
        if epoch not in self.visual_epochs or self.visual_clean is None:
            return
        student = unwrap(self.student)
        was_training = student.training
        student.eval()
        try:
            with torch.no_grad():
                augmented = self.plain_augmentor(self.visual_clean, self.visual_noise)
                teacher, predicted = self.soft_labels(augmented).argmax(1), student(augmented).argmax(1)
        finally:
            student.train(was_training)
        self.snapshots.append({"epoch": epoch, "images": augmented.float().cpu(), "teacher": teacher.cpu(),
                               "student": predicted.cpu()})
        if report_dir is not None:
            self.save_grid(report_dir / GRID_FILE)

    def save_grid(self, path: Path) -> Path:
        """Clean samples (top row, with their class) and their augmentations at each recorded epoch (with
        the teacher's and the student's predictions, marked where they miss the class)."""
        assert self.visual_clean is not None
        to_pixels = self.plain_augmentor.to_unit_range
        rows = [("clean", to_pixels(self.visual_clean).cpu())]
        rows += [(f"epoch {s['epoch']}", to_pixels(s["images"].to(self.visual_clean.device)).cpu())
                 for s in self.snapshots]
        labels = [] if self.visual_labels is None else self.visual_labels.tolist()
        captions = [[self.class_names[y] for y in labels]]
        captions += [[f"T: {self._named(t, y)}\nS: {self._named(p, y)}" for t, p, y in
                      zip(s["teacher"].tolist(), s["student"].tolist(), labels)] if "teacher" in s else []
                     for s in self.snapshots]
        return save_image_grid(rows, path, captions=captions,
                               title=f"HARD ({self.config.augmentor} augmentor): the same samples and noise, as the "
                                     "augmentor changes them over training.\nTop row: the true class; below: the "
                                     "teacher's (T) and the student's (S) predictions, ✗ where not the true class")

    def _named(self, predicted: int, label: int) -> str:
        """A prediction as the grid shows it: the class name, marked when it is not the true class."""
        return self.class_names[predicted] + ("" if predicted == label else " ✗")

    def training_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"augmentor": self.plain_augmentor.learned_state(),
                                 "augmentor_optimizer": self.augmentor_optimizer.state_dict(),
                                 "snapshots": self.snapshots, "visual_clean": self.visual_clean,
                                 "visual_noise": self.visual_noise, "visual_labels": self.visual_labels}
        if self.scaler is not None and self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.plain_augmentor.load_learned_state(state["augmentor"])
        self.augmentor_optimizer.load_state_dict(state["augmentor_optimizer"])
        self.snapshots = list(state["snapshots"])
        self.visual_clean, self.visual_noise = state["visual_clean"], state["visual_noise"]
        self.visual_labels = state.get("visual_labels")  # absent in checkpoints of earlier versions
        self.scaler_state = state.get("scaler", {})

    # ------------------------------------------------------------------ the game
    def forward(self, batch: Batch) -> StepOutput:
        c = self.config
        x, y = batch.x, batch.y
        if self.visual_clean is None:
            self.visual_clean = x[:c.visualize_samples].detach().clone()
            self.visual_labels = y[:c.visualize_samples].detach().clone()
            self.visual_noise = self.plain_augmentor.draw_noise(len(self.visual_clean), x.device,
                                                          torch.Generator().manual_seed(0))
        metrics: dict[str, Tensor] = {}
        inputs, augmented_teacher = x, None
        if self.active:
            chosen = torch.randperm(len(batch))[:max(1, round(c.augmented_share * len(batch)))]
            chosen = chosen.to(x.device, non_blocking=True)
            metrics.update(self._augmentor_steps(x[chosen], y[chosen]))
            with torch.no_grad():
                augmented = self.augmentor(x[chosen], strength=self._draw_strength(len(chosen), x.device))
            metrics.update(self.plain_augmentor.statistics())
            augmented_teacher = self.soft_labels(augmented)
            inputs = torch.cat([x, augmented])
        all_logits = self.student(inputs)
        n, total = len(batch), inputs.shape[0]
        logits = all_logits[:n]
        teacher_logits = self.soft_labels(batch)
        losses = {"ce": (1 - c.alpha) * cross_entropy(logits, y),
                  "kd": c.alpha * n / total * kd_loss(logits, teacher_logits, c.temperature)}
        if augmented_teacher is not None:
            augmented_logits = all_logits[n:]
            losses["kd_aug"] = c.alpha * (total - n) / total * kd_loss(augmented_logits, augmented_teacher,
                                                                        c.temperature)
            labels = y[chosen]
            metrics["aug_teacher_acc"] = (augmented_teacher.argmax(1) == labels).float().mean()
            metrics["aug_student_acc"] = (augmented_logits.detach().argmax(1) == labels).float().mean()
        metrics.update(regularization_stats(logits.detach(), teacher_logits, y))
        return StepOutput(logits, losses, metrics)

    def _augmentor_steps(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Update the augmentor ``augmentor_steps`` times; the student and teacher get no gradient."""
        c = self.config
        student = unwrap(self.student)  # never through DDP: the student gets no gradient here
        was_training = student.training
        student.train(c.student_mode == "train")
        params = [p for p in self.augmentor.parameters() if p.requires_grad]
        scaler = self._scaler(x.device.type)
        first: dict[str, Tensor] = {}
        try:
            for _ in range(c.augmentor_steps):
                augmented = self.augmentor(x, strength=self._draw_strength(len(x), x.device))
                teacher_logits = self.soft_labels.logits_with_input_grad(augmented)
                divergence = teacher_student_divergence(student(augmented), teacher_logits, c.temperature)
                teacher_ce = cross_entropy(teacher_logits, y)
                objective = (-divergence + c.teacher_ce_weight * teacher_ce
                             + c.magnitude_weight * self.plain_augmentor.magnitude())
                scaler.scale(objective).backward(inputs=params)  # the augmentor only; DDP averages over ranks
                scaler.step(self.augmentor_optimizer)
                scaler.update()
                self.augmentor_optimizer.zero_grad(set_to_none=True)
                if not first:
                    first = {"adv_divergence": divergence.detach(), "adv_teacher_ce": teacher_ce.detach(),
                             "adv_magnitude": self.plain_augmentor.magnitude().detach()}
        finally:
            student.train(was_training)
        return first

    def _draw_strength(self, n: int, device: torch.device) -> Tensor | None:
        return torch.rand(n).to(device, non_blocking=True) if self.config.strength == "random" else None

    def _scaler(self, device_type: str) -> torch.amp.GradScaler:
        """A loss scaler for the augmentor's own steps, active only under float16 autocast."""
        fp16 = torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.float16
        if self.scaler is None or self.scaler.is_enabled() != fp16:
            self.scaler = torch.amp.GradScaler(device_type, enabled=fp16)
            if fp16 and self.scaler_state:
                self.scaler.load_state_dict(self.scaler_state)
        return self.scaler


def build_augmentor(config: HardKD.Config, context: MethodContext) -> Augmentor:
    """The augmentor a HARD config names, for the run's input shape and normalisation."""
    spec = context.inputs
    if config.augmentor == "affine":
        a = config.affine
        return AffineAugmentor(spec.in_channels, spec.mean, spec.std, translate=a.translate,
                               rotate=a.rotate, scale=a.scale, shear=a.shear, noise_dim=a.noise_dim, width=a.width)
    v = config.vae
    assert v.path is not None
    path = context.resolve_artifact(config.dependencies()[0])
    vae, meta = load_vae(path)
    shape = (meta.data.in_channels, meta.data.image_size)
    if shape != (spec.in_channels, spec.image_size):
        raise ValueError(f"the VAE {path} was trained on {shape[0]}-channel {shape[1]}x{shape[1]} images, the data has "
                         f"{spec.in_channels}-channel {spec.image_size}x{spec.image_size}; train a VAE on this data")
    return VAEAugmentor(vae, spec.mean, spec.std, bound=v.bound, output=v.output,
                        noise_dim=v.noise_dim, width=v.width)
