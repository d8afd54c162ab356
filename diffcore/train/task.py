"""``TrainTask``: what a model family hands the engine.

The engine owns the loop (devices, DDP, precision, accumulation, EMA, checkpoints, logs); a task owns the model,
the data and the loss. A family subclasses :class:`TrainTask`::

    class DiffWaveTask(TrainTask):
        def __init__(self, recipe):            # recipe: the family's dataclass with a `train: TrainConfig` field
            self.recipe = recipe
            self.config = recipe.to_dict()     # the full resolved recipe, stored in config.yaml and checkpoints
        def build_model(self): return DiffWave(self.recipe.model)
        def train_dataset(self): return AudioClips(self.recipe.data)
        def loss(self, model, batch):          # batch already on the device, model possibly DDP/compiled
            den = denoiser_from_config(self.recipe.model.diffusion, model)
            return diffusion_loss(den, batch["audio"], batch["mel"])

and is trained with ``Trainer(task, recipe.train, run_dir).fit()``: the ``train`` section reaches the engine as that
argument only (the engine reads neither ``recipe`` nor ``config["train"]``; it stores ``config`` with its ``train``
section set to the argument).

Rules the engine relies on:

- ``build_model()`` is called once per process after the seed is set, so every rank builds the same weights.
- ``loss(model, batch)`` returns the per-example loss ``[B]`` (float); the engine averages it, scales it for
  accumulation and mixed precision and calls ``backward``. It runs inside the autocast context. Call ``model``
  (not a module you kept) so DDP sees the forward pass; draw randomness from the global torch RNG (its state is
  checkpointed, so resume is exact) or from generators you seed from the batch.
- ``config`` is plain data (dict/list/str/int/float/bool/None) — checkpoints are loaded with ``weights_only``.
- ``upgrade_config(stored)`` reads a checkpoint's stored config in today's names before resume compares it with
  ``config``; by default it re-parses it with the class of ``self.recipe`` (old key names mapped by
  ``ConfigBase.RENAMED``, fields added since filled with the defaults that reproduce the old behaviour).
- ``validate`` and ``sample`` are called on every rank, under ``torch.no_grad()``, with the EMA model (eval mode, on
  the training device). Only rank 0's logger writes; other ranks get a logger that drops everything. Keep
  collective operations symmetric across ranks if a hook uses any.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch.utils.data import Dataset

from diffcore.config import ConfigBase
from diffcore.errors import ConfigError

__all__ = ["TrainTask"]


class TrainTask(ABC):
    """Model, data and loss of one model family (see the module docstring)."""

    #: The full resolved recipe (plain data); written to ``RUN/config.yaml`` and stored in every checkpoint.
    config: dict[str, Any]

    #: The family's recipe dataclass, if it has one: :meth:`upgrade_config` re-parses stored configs with its class.
    #: The engine reads nothing else of it (its ``train`` section reaches the engine as ``Trainer``'s argument).
    recipe: ConfigBase | None = None

    #: Optional ``collate_fn`` for the ``DataLoader`` (``None``: PyTorch's default collation).
    collate_fn: Callable[[list[Any]], Any] | None = None

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A fresh model (float32 parameters, on the CPU; the engine moves it)."""

    @abstractmethod
    def train_dataset(self) -> Dataset:
        """A map-style dataset (``__len__`` and ``__getitem__``) of training examples."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """Per-example training loss ``[B]`` for a batch already moved to the device."""

    def upgrade_config(self, stored: Mapping[str, Any]) -> Mapping[str, Any]:
        """A checkpoint's stored config in today's key names, for comparison with ``config`` on resume.

        Default: ``type(self.recipe).from_dict(stored).to_dict()`` when the task sets :attr:`recipe` (old names
        mapped silently: the resume itself reports what changed), else ``stored`` unchanged; a stored config that no
        longer parses is returned unchanged, so the comparison names its differences.
        """
        recipe = self.recipe
        if not isinstance(recipe, ConfigBase):
            return stored
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                return type(recipe).from_dict(stored).to_dict()
            except (ConfigError, TypeError, ValueError):
                return stored

    def validate(self, ema_model: nn.Module, step: int, logger: Any) -> dict[str, float]:
        """Validation metrics at ``step`` (logged by the engine as ``val/<name>``); none by default."""
        return {}

    def sample(self, ema_model: nn.Module, step: int, logger: Any) -> None:
        """Write media (``logger.audio``/``image``/``figure``) generated with the EMA model; nothing by default."""
        return None
