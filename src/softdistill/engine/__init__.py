"""Training engine: the loop, optimisers and schedules.  Knows no method."""

from softdistill.engine.optim import LRSchedule, build_optimizer
from softdistill.engine.trainer import NonFiniteLossError, NonFiniteStateError, RunStateError, Trainer, evaluate

__all__ = ["Trainer", "evaluate", "LRSchedule", "build_optimizer", "NonFiniteLossError", "NonFiniteStateError",
           "RunStateError"]
