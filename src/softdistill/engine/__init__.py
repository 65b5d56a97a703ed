"""Training engine: the loop, optimisers and schedules, distributed set-up.  Knows no method."""

from softdistill.engine.distributed import DistContext, init_distributed, shutdown_distributed
from softdistill.engine.optim import LRSchedule, build_optimizer
from softdistill.engine.trainer import NonFiniteLossError, NonFiniteStateError, RunStateError, Trainer, evaluate

__all__ = ["Trainer", "evaluate", "LRSchedule", "build_optimizer", "DistContext", "init_distributed",
           "shutdown_distributed", "NonFiniteLossError", "NonFiniteStateError", "RunStateError"]
