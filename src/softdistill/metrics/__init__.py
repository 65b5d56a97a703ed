"""Metrics and diagnostics of soft labels and of distillation runs."""

from softdistill.metrics.bias_variance import regularization_stats
from softdistill.metrics.ordering import order_concordance, top2_hit_rate

__all__ = ["regularization_stats", "order_concordance", "top2_hit_rate"]
