"""Training engine: the loop, optimisers and schedules.  Knows no method."""

from softdistill.engine.optim import LRSchedule, build_optimizer
from softdistill.engine.recorder import Recorder
from softdistill.engine.task import Task
from softdistill.engine.trainer import NonFiniteLossError, NonFiniteStateError, Trainer, evaluate

__all__ = ["Trainer", "Recorder", "Task", "evaluate", "LRSchedule", "build_optimizer", "NonFiniteLossError",
           "NonFiniteStateError"]
