"""Data-parallel training under ``torchrun``: one process per device, gradients averaged by DDP.

``torchrun`` (or ``zoo train --nproc N``) sets RANK / WORLD_SIZE / MASTER_ADDR in the environment;
without them training runs in a single process and nothing here changes its behaviour. Every rank
draws the same shuffled global batches and takes its own interleaved shard of each, so with a loss
that is a mean over examples the run follows the single-process one (same global batch size) up to
floating-point summation order. Only rank 0 logs, checkpoints and writes the final model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from zoo.device import DeviceUnavailableError

__all__ = ["DistributedContext", "launch_rank", "launched_by_torchrun"]


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launch_rank() -> int:
    """This process's rank as torchrun set it (0 when run alone), known before the process group
    is joined."""
    return int(os.environ.get("RANK", "0"))


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the job: ``rank`` of ``world_size`` processes."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls, device: torch.device) -> DistributedContext:
        """Join the process group torchrun prepared (gloo on CPU, nccl on CUDA), or run alone."""
        if not launched_by_torchrun():
            return cls()
        if device.type == "cuda":
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            if local_rank >= torch.cuda.device_count():
                raise DeviceUnavailableError(
                    f"process {local_rank} needs GPU {local_rank} but only "
                    f"{torch.cuda.device_count()} exist: use --nproc <= the number of GPUs"
                )
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size())

    def shard(self, global_batch: torch.Tensor) -> torch.Tensor:
        """This rank's share of a global batch of indices (every world_size-th, from rank)."""
        return global_batch[self.rank :: self.world_size]

    def loss_weight(self, shard_size: int, global_size: int) -> float:
        """Factor making DDP's gradient average equal the gradient of the global-batch mean:
        each rank's mean loss counts in proportion to its shard (last batches are uneven)."""
        return shard_size * self.world_size / global_size

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group once every rank got here."""
        if self.enabled and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
