"""The one check of the training data before the first step.

A data set whose every file is unusable (all-silent clips, every image unreadable) used to fail inside step 1 as a
data-pipeline failure, after the run folder, ``config.yaml`` and a step-0 checkpoint had been written. Reading one
example first finds it while nothing is written: the data sets of both packages skip an unusable file and try the
next, so the first example fails only when none is usable. Its RNG use does not matter: the engine seeds the
training stream afterwards (or restores it from the checkpoint).
"""

from __future__ import annotations

from typing import Any

import torch

from diffcore.errors import ConfigError

__all__ = ["check_first_example"]


def _tensors(item: Any):
    if isinstance(item, torch.Tensor):
        yield "", item
    elif isinstance(item, dict):
        for k, v in item.items():
            for name, t in _tensors(v):
                yield f"{k}{'.' + name if name else ''}", t
    elif isinstance(item, (list, tuple)):
        for i, v in enumerate(item):
            for name, t in _tensors(v):
                yield f"{i}{'.' + name if name else ''}", t


def check_first_example(dataset: Any) -> None:
    """Raise :class:`ConfigError` (nothing written yet) when ``dataset`` is empty, its first example cannot be
    read (every file unusable), or that example holds non-finite values."""
    try:
        n = len(dataset)
    except TypeError:
        return  # not a sized data set: nothing to check without iterating it
    if n == 0:
        raise ConfigError("the training data set is empty; nothing was written (check data.path and the recipe's "
                          "data section)")
    try:
        item = dataset[0]
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:
        raise ConfigError(f"the training data cannot be used: {' '.join(str(e).split()) or type(e).__name__} "
                          "(checked before the first step; nothing was written)") from None
    for name, t in _tensors(item):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ConfigError(f"the training data's first example has non-finite values in {name or 'its tensor'} "
                              "(checked before the first step; nothing was written)")
