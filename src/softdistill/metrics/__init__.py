"""Metrics and diagnostics of soft labels and of distillation runs."""

from softdistill.metrics.bias_variance import regularization_stats
from softdistill.metrics.ordering import order_concordance, top2_hit_rate
from softdistill.metrics.soft_labels import (ambiguity_degree, ambiguity_matrix, calibration_bins, class_indicators,
                                             expected_calibration_error, soft_label_indicators, top_k_indices,
                                             unreliability_degree)

__all__ = ["regularization_stats", "order_concordance", "top2_hit_rate", "unreliability_degree", "ambiguity_degree",
           "ambiguity_matrix", "class_indicators", "expected_calibration_error", "calibration_bins", "soft_label_indicators",
           "top_k_indices"]
