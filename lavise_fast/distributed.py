"""Sweeps over the ranks of an initialised ``torch.distributed`` process group.

Rank r of W takes the images r, r + W, r + 2W, ... of the dataset (``DistributedSampler``
semantics without its padding, so no image counts twice), keeps image indices global, and
the ranks exchange their states with ``all_gather_object`` so that every rank ends with the
state of one stream over all images. NCCL (GPUs) or gloo (CPUs) is the caller's choice in
``init_process_group``; its ``timeout`` bounds how long a rank waits for a dead one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from lavise_fast.errors import DistributedError, InputTypeError
from lavise_fast.loaders import is_sequential, subset_loader

__all__ = ["Shard", "current_shard", "shard_loader", "shard_indices", "all_gather"]


@dataclass(frozen=True)
class Shard:
    """This process's place in the group: ``rank`` of ``world`` processes."""

    rank: int
    world: int


def current_shard() -> Shard:
    """The rank and world size of the initialised default process group; a clear error without one."""
    if not (dist.is_available() and dist.is_initialized()):
        raise DistributedError("distributed=True needs an initialised torch.distributed process group: start the "
                               "script with torchrun and call torch.distributed.init_process_group('nccl' on GPUs, "
                               "'gloo' on CPUs) first")
    return Shard(dist.get_rank(), dist.get_world_size())


def shard_indices(length: int, shard: Shard) -> torch.Tensor:
    """The global indices [n] int64 of this rank's share of ``length`` items: rank, rank + world, ...

    Args:
        length: the number of items in the dataset.
        shard: this process's rank and world size.
    """
    return torch.arange(shard.rank, length, shard.world)


def shard_loader(loader, shard: Shard) -> tuple[DataLoader, torch.Tensor]:
    """This rank's loader over its share of ``loader``'s dataset (same batch size, collate,
    workers) and the global indices [n] of the images it yields, in order.

    Args:
        loader: a DataLoader over a sized map-style dataset, read in order (:func:`is_sequential`).
        shard: this process's rank and world size.

    Raises:
        InputTypeError: ``loader`` is not such a DataLoader.
    """
    if not is_sequential(loader):
        raise InputTypeError("a distributed sweep needs a torch DataLoader over a map-style dataset (one with "
                             "__len__), read in order (shuffle=False, no sampler or batch_sampler): explain gives "
                             f"rank r the images r, r + world, ... itself; got {type(loader).__name__}")
    index = shard_indices(len(loader.dataset), shard)
    return subset_loader(loader, index.tolist()), index


def all_gather(obj, what: str) -> list:
    """Every rank's ``obj`` (picklable), in rank order. A failed collective (most often a rank that
    died, or the process group's timeout passing) becomes a DistributedError (a RuntimeError) saying so.

    The barrier after the gather is there for the process's exit: gloo's worker thread releases the
    gather's tensors (Python objects) after ``all_gather_object`` has returned, and doing so while the
    interpreter shuts down aborts the process ("terminate called without an active exception"); the
    barrier holds no Python tensor, and by the time it returns the gather has been released.

    Args:
        obj: this rank's picklable object; every rank must call with one.
        what: what is exchanged, in words, for the error message (e.g. "the trained head").
    """
    gathered = [None] * dist.get_world_size()
    try:
        dist.all_gather_object(gathered, obj)
        dist.barrier()
    except Exception as error:  # DistBackendError, DistNetworkError, RuntimeError from gloo or NCCL
        raise DistributedError(
            f"distributed sweep, rank {dist.get_rank()} of {dist.get_world_size()}: exchanging {what} with the other "
            f"ranks failed, most likely because another rank died or stalled past the process group's timeout (see "
            f"that rank's output): {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        ) from error
    return gathered
