"""Functions a test submits as a job (submitit pickles them by name): kept apart from the test
modules, so a job's processes import torch and vsbench's launcher only, not a whole test module."""

import torch
import torch.distributed as dist


def ranks_and_sum() -> tuple[int, int, float]:
    """Join the job's process group from submitit's job environment; sum rank + 1 over it."""
    from core.distributed import init_distributed
    from harness.launch import distributed_environment

    distributed_environment()
    info = init_distributed("cpu")
    total = torch.tensor([float(info.rank + 1)])
    dist.all_reduce(total)
    dist.destroy_process_group()
    return info.rank, info.world_size, float(total)
