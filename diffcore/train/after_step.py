"""The work after each optimizer update: the logging window, the task's validation and sample hooks, the periodic
checkpoint.

In this order, after update ``step`` (on every rank; only rank 0's logger writes):

1. scalars (mean loss and gradient norm of the window, lr, steps/s, samples/s, plus what the engine adds) every
   ``log_every`` steps and at the target step; the progress bar on rank 0;
2. ``task.validate`` every ``val_every`` steps (logged as ``val/<name>``) and ``task.sample`` every
   ``sample_every`` steps, both with the EMA model under ``torch.no_grad()``;
3. a checkpoint every ``ckpt_every`` steps, except at the target step and when a stop was asked for (the engine
   writes those itself, and a failure there is an error rather than a warning).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from diffcore.ema import EMA
from diffcore.train.config import TrainConfig
from diffcore.train.task import TrainTask

__all__ = ["AfterStep"]


class AfterStep:
    """Logging window, hooks and periodic checkpoints of one training run (module docstring).

    ``save(reason)`` writes a checkpoint (the engine's :meth:`~diffcore.train.Trainer.save`). ``progress``: show a
    progress bar (rank 0 with ``train.progress``). ``last_loss`` is the mean loss of the last logged window.
    """

    def __init__(self, cfg: TrainConfig, task: TrainTask, logger: Any, ema: EMA,
                 save: Callable[[str], Path | None], *, progress: bool = False) -> None:
        self.cfg = cfg
        self.task = task
        self.logger = logger
        self.ema = ema
        self.save = save
        self.progress = progress
        self.pbar: Any = None
        self.last_loss = float("nan")
        self._losses: list[float] = []
        self._norms: list[float] = []
        self._steps = 0
        self._time = 0.0

    def start(self, step: int, target: int) -> None:
        """Open the progress bar for a run from ``step`` to ``target`` (when there is something left to do)."""
        if self.progress and step < target:
            from tqdm.auto import tqdm

            # a terminal gets a live bar; a log file (batch jobs) a line every 30 s
            self.pbar = tqdm(total=target, initial=step, dynamic_ncols=True, desc="train", file=sys.stderr,
                             mininterval=0.5 if sys.stderr.isatty() else 30.0)

    def __call__(self, step: int, target: int, *, loss: float, grad_norm: float, lr: float, seconds: float,
                 stop: bool, extra: Callable[[], Mapping[str, Any]] = dict) -> None:
        """After update ``step`` (of ``target``) whose loss, gradient norm, lr and duration are given; ``extra()``
        gives more scalars for a logged step (called only then)."""
        cfg = self.cfg
        self._losses.append(loss)
        self._norms.append(grad_norm)
        self._steps += 1
        self._time += seconds
        if self.pbar is not None:
            self.pbar.update(1)
        if step % cfg.log_every == 0 or step == target:
            self.last_loss = sum(self._losses) / len(self._losses)
            rate = self._steps / max(self._time, 1e-9)
            values = {
                "loss": self.last_loss,
                "grad_norm": sum(self._norms) / len(self._norms),
                "lr": lr,
                "steps_per_s": rate,
                "samples_per_s": rate * cfg.batch_size,
                **extra(),
            }
            self.logger.scalars(values, step)
            if self.pbar is not None:
                self.pbar.set_postfix(loss=f"{self.last_loss:.4g}", samples_s=f"{rate * cfg.batch_size:.1f}")
            self._losses, self._norms, self._steps, self._time = [], [], 0, 0.0
        self.hooks(step)
        if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < target and not stop:
            self.save("periodic")

    def hooks(self, step: int) -> None:
        """The task's validation and sample hooks, when due at ``step``, with the EMA model."""
        cfg = self.cfg
        run_val = cfg.val_every and step % cfg.val_every == 0
        run_sample = cfg.sample_every and step % cfg.sample_every == 0
        if not (run_val or run_sample):
            return
        with torch.no_grad():
            if run_val:
                metrics = self.task.validate(self.ema.module, step, self.logger) or {}
                self.logger.scalars({f"val/{k}": v for k, v in metrics.items()}, step)
            if run_sample:
                self.task.sample(self.ema.module, step, self.logger)

    def close(self) -> None:
        if self.pbar is not None:
            self.pbar.close()
            self.pbar = None
