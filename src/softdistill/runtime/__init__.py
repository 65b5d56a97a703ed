"""What every layer that runs work shares, below data, store and engine: the process group of a
distributed run with its collectives (:mod:`~softdistill.runtime.distributed`), and progress bars
that suit where the output goes (:mod:`~softdistill.runtime.progress`)."""

from softdistill.runtime.distributed import (DistContext, DistributedError, all_reduce_min, all_reduce_sum, barrier,
                                             global_batch_weight, init_distributed, process_group_context,
                                             resolve_device, shutdown_distributed)
from softdistill.runtime.progress import progress_bar, tracked

__all__ = ["DistContext", "DistributedError", "init_distributed", "process_group_context", "shutdown_distributed",
           "resolve_device", "all_reduce_sum", "all_reduce_min", "barrier", "global_batch_weight", "progress_bar",
           "tracked"]
