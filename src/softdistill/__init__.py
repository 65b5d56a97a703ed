"""softdistill: knowledge distillation built around the soft label."""

__version__ = "0.1.0"
