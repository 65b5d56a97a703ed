"""softdistill: knowledge distillation built around the soft label.

Everything a loop of your own needs is importable from here: the functional losses and their
``nn.Module`` forms, the isotonic correction, the store (labelled from Python in one call, looked up by
sample id and view), view plans with your own augmentation pipeline, the batch sampler and loss
weighting for exact DDP, methods and models by name, and the data set-up (see docs/api.md).

The names are loaded on first use (PEP 562), so ``import softdistill`` and the command line's
``--help`` do not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: every exported name -> the module that defines it
_EXPORTS: dict[str, str] = {
    **{name: "softdistill.losses" for name in (
        "kd_loss", "KDLoss", "teacher_student_divergence", "TeacherStudentDivergence", "cross_entropy", "CrossEntropy",
        "mixed_cross_entropy", "MixedCrossEntropy", "soft_cross_entropy", "SoftCrossEntropy",
        "label_smoothing_targets", "virtual_teacher_probs", "tfkd_reg_loss", "TfKDRegLoss", "wsl_weights",
        "weighted_soft_cross_entropy", "WeightedSoftCrossEntropy", "wsl_loss", "WSLLoss", "dkd_loss", "DKDLoss",
        "dkd_warmup_factor", "dist_loss", "DISTLoss", "nkd_loss", "NKDLoss", "uskd_loss", "USKDLoss",
        "logit_standardize", "LogitStandardize", "kd_ls_loss", "KDLSLoss", "ttm_loss", "TTMLoss", "wttm_loss",
        "WTTMLoss", "ctkd_kd_loss", "CTKDLoss", "ctkd_temperature", "ctkd_grl_lambda", "gradient_reversal",
        "GradientReversal", "mlkd_loss", "MLKDLoss", "dkd_terms", "dist_terms", "nkd_terms", "uskd_terms")},
    **{name: "softdistill.isotonic" for name in ("isotonic_logits", "IsotonicLogits", "order_penalty", "OrderPenalty")},
    "Store": "softdistill.store.reader",
    "StoreError": "softdistill.store.format",
    "write_store": "softdistill.store.writer",
    "label_store": "softdistill.labelling",
    "ViewPlan": "softdistill.data.views",
    "ViewTransform": "softdistill.data.views",
    "ViewTransformError": "softdistill.data.views",
    "GlobalBatchSampler": "softdistill.data.sampler",
    "ViewDataset": "softdistill.data.sampler",
    "BatchLoader": "softdistill.data.loader",
    "BatchTransform": "softdistill.data.loader",
    "TensorSet": "softdistill.data.samples",
    "global_batch_weight": "softdistill.runtime.distributed",
    "Batch": "softdistill.types",
    "StepOutput": "softdistill.types",
    "build_method": "softdistill.methods",
    "Method": "softdistill.methods.base",
    "MethodConfig": "softdistill.methods.base",
    "register_method": "softdistill.methods.base",
    "build_model": "softdistill.models.registry",
    "register_model": "softdistill.models.registry",
    "prepare_data": "softdistill.data.prepare",
    "DataConfig": "softdistill.data.config",
    "register_dataset": "softdistill.data.readers",
    "SoftLabelSource": "softdistill.soft_labels.base",
    "register_source": "softdistill.soft_labels.base",
    "FrozenTeacher": "softdistill.soft_labels.teacher",
    "StoredSoftLabels": "softdistill.soft_labels.store",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """An exported name, imported from its module on first use (and kept)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'softdistill' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # what type checkers and IDEs see; at run time the names are loaded on first use
    from softdistill.data.config import DataConfig
    from softdistill.data.loader import BatchLoader, BatchTransform
    from softdistill.data.prepare import prepare_data
    from softdistill.data.readers import register_dataset
    from softdistill.data.samples import TensorSet
    from softdistill.data.sampler import GlobalBatchSampler, ViewDataset
    from softdistill.data.views import ViewPlan, ViewTransform, ViewTransformError
    from softdistill.isotonic import IsotonicLogits, OrderPenalty, isotonic_logits, order_penalty
    from softdistill.labelling import label_store
    from softdistill.losses import (CTKDLoss, DISTLoss, DKDLoss, GradientReversal, KDLoss, KDLSLoss, LogitStandardize,
                                    MLKDLoss, NKDLoss, TTMLoss, USKDLoss, WTTMLoss, CrossEntropy, MixedCrossEntropy,
                                    SoftCrossEntropy, TeacherStudentDivergence, TfKDRegLoss, WeightedSoftCrossEntropy,
                                    WSLLoss, cross_entropy, ctkd_grl_lambda, ctkd_kd_loss, ctkd_temperature,
                                    dist_loss, dist_terms, dkd_loss, dkd_terms, dkd_warmup_factor, gradient_reversal,
                                    kd_loss, kd_ls_loss, label_smoothing_targets, logit_standardize,
                                    mixed_cross_entropy, mlkd_loss, nkd_loss, nkd_terms, soft_cross_entropy,
                                    teacher_student_divergence, tfkd_reg_loss, ttm_loss, uskd_loss, uskd_terms,
                                    virtual_teacher_probs, weighted_soft_cross_entropy, wsl_loss, wsl_weights,
                                    wttm_loss)
    from softdistill.methods import build_method
    from softdistill.methods.base import Method, MethodConfig, register_method
    from softdistill.models.registry import build_model, register_model
    from softdistill.runtime.distributed import global_batch_weight
    from softdistill.soft_labels.base import SoftLabelSource, register_source
    from softdistill.soft_labels.store import StoredSoftLabels
    from softdistill.soft_labels.teacher import FrozenTeacher
    from softdistill.store.format import StoreError
    from softdistill.store.reader import Store
    from softdistill.store.writer import write_store
    from softdistill.types import Batch, StepOutput
