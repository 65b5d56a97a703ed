"""Metrics and diagnostics of soft labels and of distillation runs."""

from softdistill.metrics.bias_variance import regularization_stats

__all__ = ["regularization_stats"]
