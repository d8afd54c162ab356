"""Resumable, rank-aware shuffling of a map-style dataset.

Epoch ``e`` uses the permutation ``π_e = randperm(N)`` drawn from a generator seeded by ``(seed, e)`` alone, cut to
whole global batches (``K = N // B`` batches of ``B`` examples; the remainder is dropped so every step sees a full
global batch). Rank ``r`` of ``W`` takes ``π_e[r::W]``. With micro-batches of ``B / (W · A)`` examples and ``A``
accumulation steps, optimizer step ``k`` of the epoch therefore sees exactly ``π_e[kB:(k+1)B]`` whatever ``W`` and
``A`` are, which is what makes one process and ``W`` processes with the same global batch train identically.

The position in the data is ``(epoch, samples)``: global examples consumed in the epoch (a multiple of ``B`` at
step boundaries). Restarting the sampler at that position resumes the exact same stream, even with a different
number of processes.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["ResumableSampler", "epoch_seed", "move_to_device"]


def epoch_seed(*keys: int) -> int:
    """A 63-bit seed mixed from integers (numpy's SeedSequence), so nearby seeds give unrelated streams."""
    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(2, np.uint64)[0] >> 1)


class ResumableSampler(Sampler[int]):
    """Indices of this rank for one epoch, starting at a given global sample offset (see the module docstring)."""

    def __init__(self, num_examples: int, global_batch: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True) -> None:
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by the world size {world_size}")
        self.num_examples = num_examples
        self.global_batch = global_batch
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.batches_per_epoch = num_examples // global_batch
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start_samples: int = 0) -> None:
        """Next iteration yields epoch ``epoch`` from global sample offset ``start_samples`` on."""
        if start_samples % self.world_size:
            raise ValueError(f"sample offset {start_samples} is not divisible by the world size {self.world_size}")
        self.epoch = epoch
        self.start = start_samples

    def _mine(self) -> torch.Tensor:
        n = self.batches_per_epoch * self.global_batch
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(epoch_seed(self.seed, self.epoch))
            order = torch.randperm(self.num_examples, generator=g)[:n]
        else:
            order = torch.arange(n)
        return order[self.rank :: self.world_size][self.start // self.world_size :]

    def __iter__(self) -> Iterator[int]:
        return iter(self._mine().tolist())

    def __len__(self) -> int:
        return max(0, (self.batches_per_epoch * self.global_batch - self.start) // self.world_size)


def move_to_device(batch: Any, device: torch.device, non_blocking: bool = True) -> Any:
    """Move every tensor of a (nested dict/list/tuple) batch to ``device``; other values are left as they are."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to_device(v, device, non_blocking) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device, non_blocking) for v in batch)
    return batch
